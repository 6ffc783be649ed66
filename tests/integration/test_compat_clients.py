"""The clients people already have (openai, LangChain, LlamaIndex, cohere, TEI's HTTP API) against a running Retune.

A tiny embedder (with a query instruction) and a tiny reranker are fine-tuned once per backend through the
API; what the clients get back must equal sentence-transformers' own use of the saved model folders.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import httpx
import numpy as np
import pytest

from tests.conftest import scifact_slice_zip
from tests.integration.conftest import Service, run_job
from tests.integration.test_end_to_end import TINY_EMBEDDER, TINY_RERANKER

pytestmark = [pytest.mark.integration, pytest.mark.slow]

INSTRUCTION = "Represent this question for retrieving evidence: "
QUERY = "Vitamin D deficiency increases the risk of infection"
DOCS = [
    "Vitamin D supplementation reduced acute respiratory infections in a meta-analysis of trials.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris.",
    "Low serum 25-hydroxyvitamin D was associated with more upper respiratory tract infections.",
    "Photosynthesis converts light energy into chemical energy in plants.",
]


@dataclass
class Tuned:
    dataset_id: str
    embedder_id: str
    embedder_name: str
    reranker_id: str
    read_key: str
    base_url: str
    service: Service

    def folder(self, model_id: str) -> str:
        return str(self.service.store.folder(f"models/{model_id}"))


@pytest.fixture(scope="module")
def tuned(service: Service) -> Tuned:
    zipped = scifact_slice_zip(n_train=16, n_test=8, n_distractors=30)
    upload = service.client.post("/datasets", files={"file": ("compat.zip", zipped)}, data={"name": "compat"})
    assert upload.status_code == 201, upload.text
    dataset_id = upload.json()["id"]
    evaluation = {"split": "test"}
    embedder = run_job(
        service,
        {"kind": "embedder", "dataset_id": dataset_id, "eval": evaluation,
         "params": {**TINY_EMBEDDER, "query_instruction": INSTRUCTION}},
    )  # fmt: skip
    reranker = run_job(
        service,
        {"kind": "reranker", "dataset_id": dataset_id, "eval": evaluation,
         "params": {**TINY_RERANKER, "candidate_model": "all-MiniLM-L6-v2"}},
    )  # fmt: skip
    key = service.client.post("/keys", json={"name": "compat-reader", "scope": "read"})
    assert key.status_code == 201, key.text
    name = service.client.get(f"/models/{embedder['model_id']}").json()["name"]
    return Tuned(dataset_id, embedder["model_id"], name, reranker["model_id"], key.json()["key"], service.url, service)


def _sentence_transformer(folder: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(folder, device="cpu")


def _cross_encoder_logits(folder: str, query: str, docs: list[str]) -> np.ndarray:
    import torch
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(folder, num_labels=1, device="cpu", activation_fn=torch.nn.Identity())
    return np.asarray(model.predict([(query, d) for d in docs], convert_to_numpy=True), dtype=np.float64)


def _assert_close(got, expected: np.ndarray) -> None:
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-5


def test_openai_sdk_embeddings_equal_sentence_transformers(tuned: Tuned) -> None:
    from openai import OpenAI

    client = OpenAI(api_key=tuned.read_key, base_url=f"{tuned.base_url}/v1")
    st = _sentence_transformer(tuned.folder(tuned.embedder_id))
    expected_docs = st.encode_document(DOCS, normalize_embeddings=True)
    expected_queries = st.encode_query([QUERY], normalize_embeddings=True)

    as_float = client.embeddings.create(model=tuned.embedder_id, input=DOCS, encoding_format="float")
    as_base64 = client.embeddings.create(model=tuned.embedder_id, input=DOCS)  # the SDK asks for base64
    _assert_close([d.embedding for d in as_float.data], expected_docs)
    _assert_close([d.embedding for d in as_base64.data], expected_docs)
    assert [d.index for d in as_float.data] == list(range(len(DOCS)))
    assert as_float.usage.prompt_tokens == as_float.usage.total_tokens > len(DOCS)

    query = client.embeddings.create(model=tuned.embedder_id, input=QUERY, extra_body={"input_type": "query"})
    _assert_close([query.data[0].embedding], expected_queries)
    # The instruction was applied: the same text embedded as a document differs.
    plain = client.embeddings.create(model=tuned.embedder_id, input=QUERY).data[0].embedding
    assert np.abs(np.array(plain) - expected_queries[0]).max() > 1e-3

    # The model's name, and an alias pointing at it, name the same model.
    alias = tuned.service.client.put("/aliases/compat-embedder", json={"model_id": tuned.embedder_id})
    assert alias.status_code == 200, alias.text
    for ref in (tuned.embedder_name, "compat-embedder"):
        got = client.embeddings.create(model=ref, input=DOCS, encoding_format="float")
        _assert_close([d.embedding for d in got.data], expected_docs)
    refused = tuned.service.client.post("/search", json={"index_id": "compat-embedder", "query": QUERY})
    assert refused.status_code == 422 and "not an index" in refused.json()["detail"]


def test_embeddings_are_the_ones_search_uses(tuned: Tuned) -> None:
    """/search's recall score is the dot product of the query and passage vectors /v1/embeddings returns."""
    client = tuned.service.client
    created = client.post("/indexes", json={"dataset_id": tuned.dataset_id, "model_id": tuned.embedder_id})
    assert created.status_code == 202, created.text
    index = tuned.service.wait_for(f"/indexes/{created.json()['id']}", lambda i: i["status"] != "building")
    assert index["status"] == "ready", index
    hits = client.post("/search", json={"index_id": index["id"], "query": QUERY, "top_k": 5}).json()["results"]
    body = {"model": tuned.embedder_id, "encoding_format": "float"}
    headers = _auth(tuned.read_key)
    url = f"{tuned.base_url}/v1/embeddings"
    query = httpx.post(url, json=body | {"input": QUERY, "input_type": "query"}, headers=headers).json()
    passages = httpx.post(url, json=body | {"input": [h["text"] for h in hits]}, headers=headers).json()
    vectors = np.array([d["embedding"] for d in passages["data"]])
    scores = vectors @ np.array(query["data"][0]["embedding"])
    assert scores.tolist() == pytest.approx([h["recall_score"] for h in hits], abs=1e-5)


def test_raw_base64_is_little_endian_float32(tuned: Tuned) -> None:
    body = {"model": tuned.embedder_id, "input": DOCS[:1], "encoding_format": "base64"}
    raw = httpx.post(f"{tuned.base_url}/v1/embeddings", json=body, headers=_auth(tuned.read_key)).json()
    vector = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    expected = _sentence_transformer(tuned.folder(tuned.embedder_id)).encode_document(DOCS[:1])
    _assert_close([vector], expected)


def test_openai_models_list_names_embedders_and_rerankers(tuned: Tuned) -> None:
    from openai import OpenAI

    client = OpenAI(api_key=tuned.read_key, base_url=f"{tuned.base_url}/v1")
    ids = {m.id for m in client.models.list()}
    assert {"all-MiniLM-L6-v2", tuned.embedder_id, tuned.reranker_id} <= ids


def test_langchain_and_llamaindex_openai_embeddings(tuned: Tuned) -> None:
    from langchain_openai import OpenAIEmbeddings
    from llama_index.embeddings.openai import OpenAIEmbedding

    expected = _sentence_transformer(tuned.folder(tuned.embedder_id)).encode_document(DOCS)
    langchain = OpenAIEmbeddings(
        model=tuned.embedder_id,
        base_url=f"{tuned.base_url}/v1",
        api_key=tuned.read_key,
        check_embedding_ctx_length=False,
    )
    _assert_close(langchain.embed_documents(DOCS), expected)
    llama = OpenAIEmbedding(model_name=tuned.embedder_id, api_base=f"{tuned.base_url}/v1", api_key=tuned.read_key)
    _assert_close(llama.get_text_embedding_batch(DOCS), expected)


def test_cohere_clients_rerank_in_cross_encoder_order(tuned: Tuned) -> None:
    import cohere

    logits = _cross_encoder_logits(tuned.folder(tuned.reranker_id), QUERY, DOCS)
    order = [int(i) for i in np.argsort(-logits, kind="stable")]
    v2 = cohere.ClientV2(api_key=tuned.read_key, base_url=tuned.base_url)
    answer = v2.rerank(model=tuned.reranker_id, query=QUERY, documents=DOCS, top_n=3)
    assert [r.index for r in answer.results] == order[:3]
    calibrated = httpx.get(f"{tuned.base_url}/models/{tuned.reranker_id}", headers=_auth(tuned.read_key)).json()
    calibrated = calibrated["calibration"] is not None  # the tiny job may have too few judgements to fit one
    if not calibrated:
        expected_scores = 1 / (1 + np.exp(-logits[order[:3]]))
        assert [r.relevance_score for r in answer.results] == pytest.approx(expected_scores.tolist(), abs=1e-5)

    v1 = cohere.Client(api_key=tuned.read_key, base_url=tuned.base_url)
    answer = v1.rerank(model=tuned.reranker_id, query=QUERY, documents=DOCS, return_documents=True)
    assert [r.index for r in answer.results] == order
    assert [r.document.text for r in answer.results] == [DOCS[i] for i in order]

    raw = httpx.post(
        f"{tuned.base_url}/v2/rerank",
        json={"model": tuned.reranker_id, "query": QUERY, "documents": DOCS},
        headers=_auth(tuned.read_key),
    ).json()
    assert raw["meta"]["score_type"] == ("calibrated" if calibrated else "sigmoid")  # says which score it is


def test_langchain_and_llamaindex_cohere_rerank(tuned: Tuned) -> None:
    import cohere
    from langchain_cohere import CohereRerank as LangChainRerank
    from langchain_core.documents import Document
    from llama_index.core.schema import NodeWithScore, TextNode
    from llama_index.postprocessor.cohere_rerank import CohereRerank as LlamaRerank

    logits = _cross_encoder_logits(tuned.folder(tuned.reranker_id), QUERY, DOCS)
    order = [int(i) for i in np.argsort(-logits, kind="stable")]
    client = cohere.ClientV2(api_key=tuned.read_key, base_url=tuned.base_url)
    langchain = LangChainRerank(client=client, model=tuned.reranker_id, top_n=3)
    assert [r["index"] for r in langchain.rerank(DOCS, QUERY)] == order[:3]
    kept = langchain.compress_documents([Document(page_content=d) for d in DOCS], QUERY)
    assert [d.page_content for d in kept] == [DOCS[i] for i in order[:3]]

    llama = LlamaRerank(api_key=tuned.read_key, model=tuned.reranker_id, top_n=2, base_url=tuned.base_url)
    nodes = [NodeWithScore(node=TextNode(text=d)) for d in DOCS]
    ranked = llama.postprocess_nodes(nodes, query_str=QUERY)
    assert [n.node.get_content() for n in ranked] == [DOCS[i] for i in order[:2]]


def test_tei_routes_embed_and_rerank_like_sentence_transformers(tuned: Tuned) -> None:
    headers = _auth(tuned.read_key)
    st = _sentence_transformer(tuned.folder(tuned.embedder_id))
    embed = f"{tuned.base_url}/tei/{tuned.embedder_id}/embed"
    _assert_close(httpx.post(embed, json={"inputs": DOCS}, headers=headers).json(), st.encode_document(DOCS))
    query = httpx.post(embed, json={"inputs": QUERY, "prompt_name": "query"}, headers=headers).json()
    _assert_close(query, st.encode_query([QUERY]))

    logits = _cross_encoder_logits(tuned.folder(tuned.reranker_id), QUERY, DOCS)
    rerank = f"{tuned.base_url}/tei/{tuned.reranker_id}/rerank"
    ranked = httpx.post(rerank, json={"query": QUERY, "texts": DOCS, "raw_scores": True, "return_text": True},
                        headers=headers).json()  # fmt: skip
    assert [r["index"] for r in ranked] == [int(i) for i in np.argsort(-logits, kind="stable")]
    assert [r["score"] for r in ranked] == pytest.approx(sorted(logits.tolist(), reverse=True), abs=1e-4)
    assert [r["text"] for r in ranked] == [DOCS[r["index"]] for r in ranked]

    info = httpx.get(f"{tuned.base_url}/tei/{tuned.embedder_id}/info", headers=headers).json()
    assert info["model_id"] == tuned.embedder_id and info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert info["max_input_length"] == TINY_EMBEDDER["passage_max_len"]
    assert (
        "reranker" in httpx.get(f"{tuned.base_url}/tei/{tuned.reranker_id}/info", headers=headers).json()["model_type"]
    )


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _openai_shape(body: dict) -> bool:
    error = body.get("error")
    return isinstance(error, dict) and {"message", "type", "param", "code"} <= set(error) and error["message"] != ""


def _cohere_shape(body: dict) -> bool:
    return set(body) == {"message"} and isinstance(body["message"], str) and body["message"] != ""


def _tei_shape(body: dict) -> bool:
    return set(body) == {"error", "error_type"} and body["error"] != ""


SHAPES = {"openai": _openai_shape, "cohere": _cohere_shape, "tei": _tei_shape}
MANY = ["a text"] * 257  # one over RETUNE_MAX_EMBED_INPUTS' default
LONG = "x" * 100_001  # one over RETUNE_MAX_TEXT_CHARS' default


def _bad_requests(tuned: Tuned) -> list[tuple[str, str, str, dict | None, int, str]]:
    """(family, case, path, body, expected status, what the message names); the key is the read key."""
    emb, rr = tuned.embedder_id, tuned.reranker_id
    openai, cohere, tei = "/v1/embeddings", "/v2/rerank", f"/tei/{emb}/embed"
    return [
        ("openai", "unknown model", openai, {"model": "no-such", "input": "x"}, 404, "no-such"),
        ("openai", "reranker as embedder", openai, {"model": rr, "input": "x"}, 422, "not an embedder"),
        ("openai", "token ids", openai, {"model": emb, "input": [[101, 2054]]}, 400, "check_embedding_ctx_length"),
        ("openai", "flat token ids", openai, {"model": emb, "input": [101, 2054]}, 400, "token ids"),
        ("openai", "empty input", openai, {"model": emb, "input": []}, 422, "empty"),
        ("openai", "empty text", openai, {"model": emb, "input": [""]}, 422, "empty"),
        ("openai", "too many inputs", openai, {"model": emb, "input": MANY}, 413, "at most 256"),
        ("openai", "over-long text", openai, {"model": emb, "input": LONG}, 413, "characters"),
        ("openai", "too many dimensions", openai, {"model": emb, "input": "x", "dimensions": 4096}, 422, "dimensions"),
        ("openai", "not json", openai, None, 422, "json"),
        ("cohere", "unknown model", cohere, {"model": "no-such", "query": "q", "documents": ["d"]}, 404, "no-such"),
        ("cohere", "embedder as reranker", cohere, {"model": emb, "query": "q", "documents": ["d"]}, 422,
         "not a reranker"),
        ("cohere", "v1 embedder as reranker", "/v1/rerank", {"model": emb, "query": "q", "documents": ["d"]}, 422,
         "not a reranker"),
        ("cohere", "empty documents", cohere, {"model": rr, "query": "q", "documents": []}, 422, "empty"),
        ("cohere", "empty query", cohere, {"model": rr, "query": "", "documents": ["d"]}, 422, "query"),
        ("cohere", "too many documents", cohere, {"model": rr, "query": "q", "documents": ["d"] * 1001}, 413,
         "at most 1000"),
        ("cohere", "over-long document", cohere, {"model": rr, "query": "q", "documents": [LONG]}, 413, "characters"),
        ("tei", "unknown model", "/tei/no-such/embed", {"inputs": "x"}, 404, "no-such"),
        ("tei", "embedder as reranker", f"/tei/{emb}/rerank", {"query": "q", "texts": ["d"]}, 422, "not a reranker"),
        ("tei", "token ids", tei, {"inputs": [[101, 2054]]}, 400, "token ids"),
        ("tei", "empty input", tei, {"inputs": []}, 422, "empty"),
        ("tei", "too many inputs", tei, {"inputs": MANY}, 413, "at most 256"),
        ("tei", "over-long text", tei, {"inputs": LONG}, 413, "characters"),
        ("tei", "over the model's length, truncate false", tei, {"inputs": "word " * 300, "truncate": False}, 413,
         "tokens"),
        ("tei", "unknown prompt", tei, {"inputs": "x", "prompt_name": "classify"}, 422, "prompt_name"),
        ("tei", "empty texts", f"/tei/{rr}/rerank", {"query": "q", "texts": []}, 422, "empty"),
    ]  # fmt: skip


def test_bad_inputs_get_a_4xx_in_the_route_familys_shape(tuned: Tuned) -> None:
    failures = []
    for family, case, path, body, status, names in _bad_requests(tuned):
        kwargs = {"json": body} if body is not None else {"content": b"{not json"}
        headers = {**_auth(tuned.read_key), "content-type": "application/json"}
        response = httpx.post(f"{tuned.base_url}{path}", headers=headers, timeout=120, **kwargs)
        answer = response.json()
        text = json.dumps(answer).lower()
        if response.status_code != status or not SHAPES[family](answer) or names.lower() not in text:
            failures.append((family, case, response.status_code, answer if len(text) < 400 else text[:400]))
    assert not failures, failures


@pytest.mark.parametrize("key", [None, "rt_wrong"], ids=["no key", "wrong key"])
def test_auth_errors_in_each_familys_shape(tuned: Tuned, key: str | None) -> None:
    calls = [
        ("openai", "post", "/v1/embeddings", {"model": tuned.embedder_id, "input": "x"}),
        ("openai", "get", "/v1/models", None),
        ("cohere", "post", "/v2/rerank", {"model": tuned.reranker_id, "query": "q", "documents": ["d"]}),
        ("cohere", "post", "/v1/rerank", {"model": tuned.reranker_id, "query": "q", "documents": ["d"]}),
        ("tei", "post", f"/tei/{tuned.embedder_id}/embed", {"inputs": "x"}),
        ("tei", "post", f"/tei/{tuned.reranker_id}/rerank", {"query": "q", "texts": ["d"]}),
        ("tei", "get", f"/tei/{tuned.embedder_id}/info", None),
    ]
    headers = _auth(key) if key else {}
    for family, method, path, body in calls:
        response = httpx.request(method, f"{tuned.base_url}{path}", json=body, headers=headers)
        assert response.status_code == 401, (path, response.text)
        assert SHAPES[family](response.json()), (path, response.text)
    from openai import AuthenticationError, OpenAI

    with pytest.raises(AuthenticationError):
        OpenAI(api_key=key or "none", base_url=f"{tuned.base_url}/v1").embeddings.create(
            model=tuned.embedder_id, input="x"
        )
