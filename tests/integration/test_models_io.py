"""Models in and out: download (tar.gz / zip, model card), upload (POST /models), delete, unknown names.

A downloaded model is checked outside Retune: loaded by bare sentence-transformers, it encodes and
scores exactly as the service's stored copy, and an embedder reproduces its job's recorded test nDCG@10
with sentence-transformers + FAISS + pytrec_eval alone.
"""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.integration.conftest import Service, run_job
from tests.integration.test_end_to_end import TINY_EMBEDDER, TINY_RERANKER

# One backend (the production layout; the archive and upload code is the same on both): the suite stays within its time.
pytestmark = pytest.mark.parametrize("service", ["postgres-s3"], indirect=True)

CARD_SECTIONS = (
    "## Training data",
    "## Training parameters",
    "## Evaluation",
    "## Verdict",
    "## Training loss",
    "## Library versions",
    "## Usage",
)
BUNDLED = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def trained(service: Service, scifact_zip: bytes) -> dict:
    """One tiny embedder job and one tiny reranker job on the SciFact slice, per backend."""
    client = service.client
    upload = client.post("/datasets", files={"file": ("scifact-slice.zip", scifact_zip)}, data={"name": "scifact"})
    assert upload.status_code == 201, upload.text
    dataset_id = upload.json()["id"]
    embedder = run_job(
        service, {"kind": "embedder", "dataset_id": dataset_id, "eval": {"split": "test"}, "params": TINY_EMBEDDER}
    )
    reranker = run_job(
        service,
        {
            "kind": "reranker",
            "dataset_id": dataset_id,
            "eval": {"split": "test"},
            "params": {**TINY_RERANKER, "candidate_model": embedder["model_id"]},
        },
    )
    return {"dataset_id": dataset_id, "embedder": embedder, "reranker": reranker}


def _download(service: Service, model_id: str, archive_format: str | None = None) -> bytes:
    params = {"format": archive_format} if archive_format else {}
    with service.client.stream("GET", f"/models/{model_id}/download", params=params) as response:
        assert response.status_code == 200, response.read()
        assert "attachment" in response.headers["content-disposition"]
        assert "content-length" not in response.headers  # streamed, not built in memory first
        return b"".join(response.iter_bytes())


def _extract(archive: bytes, dest: Path) -> Path:
    """Extract with the standard library and return the single top folder (the model folder)."""
    if archive[:2] == b"PK":
        with zipfile.ZipFile(io.BytesIO(archive)) as zf:
            zf.extractall(dest)
    else:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tf:
            tf.extractall(dest, filter="data")
    (top,) = list(dest.iterdir())
    return top


def _stored(service: Service, model_id: str) -> Path:
    """The model's stored files, read through the store (downloaded from S3 on that layout)."""
    return service.store.folder(f"models/{model_id}")


def _chosen_metric(points: list[dict], metric: str, split: str) -> tuple[int, float]:
    """The step the job kept (first maximum after step 0, as BestModel keeps it) and its recorded value."""
    best: dict | None = None
    for p in points:
        if (
            p["name"] == metric
            and p["split"] == split
            and p["step"] > 0
            and (best is None or p["value"] > best["value"])
        ):
            best = p
    assert best is not None, points
    return best["step"], best["value"]


def _slice(scifact_zip: bytes) -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, int]]]:
    """Corpus texts (BEIR's title + text), test queries and test qrels of the uploaded slice."""
    with zipfile.ZipFile(io.BytesIO(scifact_zip)) as zf:
        docs = [json.loads(line) for line in zf.read("scifact-slice/corpus.jsonl").decode().splitlines()]
        queries = {
            q["_id"]: q["text"] for q in map(json.loads, zf.read("scifact-slice/queries.jsonl").decode().splitlines())
        }
        qrels: dict[str, dict[str, int]] = {}
        for row in zf.read("scifact-slice/qrels/test.tsv").decode().splitlines()[1:]:
            qid, did, grade = row.split("\t")
            qrels.setdefault(qid, {})[did] = int(grade)
    corpus = {d["_id"]: f"{d['title']} {d['text']}".strip() if d.get("title") else d["text"] for d in docs}
    return corpus, {q: queries[q] for q in qrels}, qrels


def _bare_ndcg_at_10(model_dir: Path, scifact_zip: bytes) -> float:
    """The test nDCG@10 by bare sentence-transformers + FAISS exact inner product + pytrec_eval."""
    import faiss
    import pytrec_eval
    from sentence_transformers import SentenceTransformer

    corpus, queries, qrels = _slice(scifact_zip)
    model = SentenceTransformer(str(model_dir), device="cpu")
    doc_ids, query_ids = list(corpus), list(queries)
    docs = model.encode_document([corpus[d] for d in doc_ids], normalize_embeddings=True, convert_to_numpy=True)
    qs = model.encode_query([queries[q] for q in query_ids], normalize_embeddings=True, convert_to_numpy=True)
    index = faiss.IndexFlatIP(docs.shape[1])
    index.add(np.ascontiguousarray(docs, dtype=np.float32))
    scores, ranks = index.search(np.ascontiguousarray(qs, dtype=np.float32), 100)
    run = {
        q: {doc_ids[r]: float(s) for s, r in zip(scores[i], ranks[i], strict=True) if r >= 0}
        for i, q in enumerate(query_ids)
    }
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate(run)
    return sum(per_query.get(q, {}).get("ndcg_cut_10", 0.0) for q in qrels) / len(qrels)


@pytest.mark.integration
@pytest.mark.slow
def test_embedder_download_loads_outside_retune_and_reproduces_its_ndcg(
    service: Service, trained: dict, scifact_zip: bytes, tmp_path: Path
) -> None:
    from sentence_transformers import SentenceTransformer

    from app.retrieval.embedder import load_embedder

    job = trained["embedder"]
    model_id = job["model_id"]
    shown = service.client.get(f"/models/{model_id}").json()
    assert shown["download_url"] == f"/models/{model_id}/download"

    tar_dir = _extract(_download(service, model_id), tmp_path / "tar")
    zip_dir = _extract(_download(service, model_id, "zip"), tmp_path / "zip")
    texts = ["Vitamin D deficiency increases infection risk.", "Aspirin lowers the risk of stroke."]
    stored = _stored(service, model_id)
    expected = load_embedder(str(stored), "cpu").encode(texts, convert_to_numpy=True)
    for folder in (tar_dir, zip_dir):
        assert (folder / "model.safetensors").read_bytes() == (stored / "model.safetensors").read_bytes()
        got = SentenceTransformer(str(folder), device="cpu").encode(texts, convert_to_numpy=True)
        np.testing.assert_allclose(got, expected, atol=1e-6)

    card = (tar_dir / "README.md").read_text()
    assert card == (zip_dir / "README.md").read_text()
    served = service.client.get(f"/models/{model_id}/card")
    assert served.status_code == 200 and served.headers["content-type"].startswith("text/markdown")
    assert served.text == card  # the dashboard shows the card the download carries
    assert card.startswith("---\n") and "library_name: sentence-transformers" in card
    for section in CARD_SECTIONS:
        assert section in card, section
    assert "scifact" in card
    assert "| batch_size | 8 | 32 |" in card  # a parameter that differs from its default, with both values
    assert "passage_max_len" in card and "| learning_rate |" not in card  # default ones are left out

    points = service.client.get(f"/jobs/{job['id']}/metrics").json()["points"]
    step, recorded = _chosen_metric(points, "ndcg@10", "test")
    assert f"this model (step {step})" in card
    assert "| test | ndcg@10 | " in card and f"{recorded:.4f}" in card
    losses = [p for p in points if p["name"] == "loss"]
    assert all(f"| {p['step']} |" in card.split("## Training loss")[1] for p in losses)

    assert _bare_ndcg_at_10(tar_dir, scifact_zip) == pytest.approx(recorded, abs=1e-4)


@pytest.mark.integration
@pytest.mark.slow
def test_reranker_download_loads_as_a_cross_encoder_with_the_same_logits(
    service: Service, trained: dict, tmp_path: Path
) -> None:
    import torch
    from sentence_transformers import CrossEncoder

    from app.retrieval.reranker import load_reranker

    model_id = trained["reranker"]["model_id"]
    folder = _extract(_download(service, model_id, "zip"), tmp_path / "zip")
    pairs = [
        ("Vitamin D deficiency increases infection risk.", "Low vitamin D levels were linked to more infections."),
        ("Vitamin D deficiency increases infection risk.", "Aspirin lowers the risk of stroke."),
    ]
    expected = load_reranker(str(_stored(service, model_id)), "cpu").predict(pairs)
    got = CrossEncoder(str(folder), device="cpu", activation_fn=torch.nn.Identity()).predict(pairs)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    card = (folder / "README.md").read_text()
    assert "text-ranking" in card and "CrossEncoder(" in card
    for section in CARD_SECTIONS:
        assert section in card, section
    assert "test/fused" in card  # every stored evaluation split gets rows


def _stored_state(service: Service) -> tuple[list[str], list[str], list[str]]:
    models = sorted(m["id"] for m in service.client.get("/models").json())
    files = service.store.ids("models")
    scratch = sorted(p.name for p in (service.data_dir / "tmp").iterdir())
    return models, files, scratch


def _tar_gz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.mark.integration
@pytest.mark.slow
def test_upload_round_trip_and_refusals(service: Service, trained: dict) -> None:
    client = service.client
    archive = _download(service, trained["embedder"]["model_id"])
    config = json.dumps({"architectures": ["BertModel"], "model_type": "bert"}).encode()
    before = _stored_state(service)
    read_key = client.post("/keys", json={"name": "reader", "scope": "read"}).json()["key"]

    refusals = {
        "read key": (403, {"file": ("m.tar.gz", archive)}, {"Authorization": f"Bearer {read_key}"}, "scope"),
        "pickle only": (422, {"file": ("p.tar.gz", _tar_gz({"m/config.json": config, "m/pytorch_model.bin": b"x"}))},
                        None, "safetensors"),
        "traversal": (422, {"file": ("t.zip", _zip({"../evil/config.json": config}))}, None, ".."),
        "remote code": (422, {"file": ("r.zip", _zip({"m/config.json": json.dumps({"auto_map": {"AutoModel": "x.M"}})
                                                      .encode(), "m/model.safetensors": b"x"}))}, None, "auto_map"),
    }  # fmt: skip
    for case, (code, files, headers, words) in refusals.items():
        response = client.post("/models", files=files, headers=headers or {})
        assert response.status_code == code, (case, response.text)
        assert words in response.json()["detail"], (case, response.text)
        assert _stored_state(service) == before, case
    as_reranker = client.post("/models", files={"file": ("m.tar.gz", archive)}, data={"kind": "reranker"})
    assert as_reranker.status_code == 422 and "never trained" in as_reranker.json()["detail"], as_reranker.text
    assert _stored_state(service) == before

    uploaded = client.post("/models", files={"file": ("my-embedder.tar.gz", archive)}, data={"name": "mine"})
    assert uploaded.status_code == 201, uploaded.text
    model = uploaded.json()
    assert (model["source"], model["file_name"], model["kind"], model["name"]) == (
        "upload", "my-embedder.tar.gz", "embedder", "mine",
    )  # fmt: skip
    assert {m["id"]: m for m in client.get("/models").json()}[model["id"]]["source"] == "upload"
    job = run_job(
        service,
        {
            "kind": "embedder",
            "dataset_id": trained["dataset_id"],
            "base_model": model["id"],
            "eval": {"split": "test"},
            "params": {**TINY_EMBEDDER, "max_steps": 1},
        },
    )
    assert job["base_model"] == model["id"]


@pytest.mark.integration
def test_unknown_model_names_are_refused_before_any_worker_runs(service: Service, trained: dict) -> None:
    client = service.client
    jobs_before = len(client.get("/jobs").json())
    cases = {
        "base_model": {"kind": "embedder", "base_model": "no-such-model-xyz"},
        "params.candidate_model": {"kind": "reranker", "params": {"candidate_model": "no-such-org/no-such-model"}},
    }
    for field, body in cases.items():
        response = client.post("/jobs", json={"dataset_id": trained["dataset_id"], "eval": {"split": "test"}, **body})
        assert response.status_code == 422, response.text
        reference = body.get("base_model") or body["params"]["candidate_model"]
        assert f"{field} '{reference}'" in response.json()["detail"], response.text
    assert len(client.get("/jobs").json()) == jobs_before


@pytest.mark.integration
@pytest.mark.slow
def test_delete_is_refused_while_used_and_removes_everything_after(service: Service, trained: dict) -> None:
    client = service.client
    archive = _download(service, trained["embedder"]["model_id"])
    model_id = client.post("/models", files={"file": ("del.tar.gz", archive)}).json()["id"]
    assert service.store.exists(f"models/{model_id}")

    bundled = client.delete(f"/models/{BUNDLED}")
    assert bundled.status_code == 409 and "cannot be deleted" in bundled.json()["detail"]

    index = client.post("/indexes", json={"dataset_id": trained["dataset_id"], "model_id": model_id})
    assert index.status_code == 202, index.text
    index_id = index.json()["id"]
    service.wait_for(f"/indexes/{index_id}", lambda i: i["status"] != "building", timeout=300)
    alias = client.put("/aliases/models-io", json={"index_id": index_id})
    assert alias.status_code in (200, 201), alias.text
    refused = client.delete(f"/models/{model_id}")
    assert refused.status_code == 409, refused.text
    assert f"index '{index_id}'" in refused.json()["detail"] and "alias 'models-io'" in refused.json()["detail"]
    assert client.get(f"/models/{model_id}").status_code == 200 and service.store.exists(f"models/{model_id}")

    unused = client.post("/models", files={"file": ("unused.tar.gz", archive)}).json()["id"]
    assert client.delete(f"/models/{unused}").status_code == 204
    assert client.get(f"/models/{unused}").status_code == 404
    assert unused not in {m["id"] for m in client.get("/models").json()}
    assert not service.store.leftovers(f"models/{unused}")


def _embed(service: Service, model_id: str, texts: list[str]) -> np.ndarray:
    response = service.client.post("/v1/embeddings", json={"model": model_id, "input": texts})
    assert response.status_code == 200, response.text
    return np.array([d["embedding"] for d in response.json()["data"]])


def _rerank(service: Service, model_id: str, query: str, documents: list[str]) -> list[float]:
    response = service.client.post("/v2/rerank", json={"model": model_id, "query": query, "documents": documents})
    assert response.status_code == 200, response.text
    return [r["relevance_score"] for r in sorted(response.json()["results"], key=lambda r: r["index"])]


def _gate(service: Service, trained: dict, model_id: str, params: dict) -> dict:
    body = {"kind": "serving_backend", "dataset_id": trained["dataset_id"], "base_model": model_id, "params": params}
    job = run_job(service, body)
    assert job["status"] == "succeeded", job
    assert job["model_id"] is None and "nothing is trained" in job["message"], job
    served = service.client.get(f"/models/{model_id}").json()["serving_backend"]
    verdict = served["gate"]["verdict"]  # scored on the validation queries the job named, not the test split
    assert verdict["split"] == "validation" and f"on {verdict['queries']} validation queries" in job["message"], job
    return served


@pytest.mark.integration
@pytest.mark.slow
def test_a_serving_backend_job_gates_a_model_that_exists(service: Service, trained: dict) -> None:
    """Uploaded models are served by torch fp32 until a ``serving_backend`` job gates them on a dataset's
    validation queries; then they serve on the backend that passed, from a new stored folder."""
    client = service.client
    uploads = {
        kind: client.post("/models", files={"file": (f"{kind}.tar.gz", _download(service, trained[kind]["model_id"]))})
        for kind in ("embedder", "reranker")
    }
    embedder, reranker = (uploads[k].json()["id"] for k in ("embedder", "reranker"))
    refusals = {
        BUNDLED: (BUNDLED, {}, "upload a copy"),
        "unknown model": ("no-such-model-xyz", {}, "no Retune model"),
        "unknown backend": (embedder, {"backends": ["onnx-bf16"]}, "unknown backend"),
        "candidate kind": (reranker, {"candidate_model": reranker}, "must be an embedder"),
    }
    for case, (model, params, words) in refusals.items():
        body = {"kind": "serving_backend", "dataset_id": trained["dataset_id"], "base_model": model, "params": params}
        response = client.post("/jobs", json=body)
        assert response.status_code == 422 and words in response.text, (case, response.text)

    texts = ["Vitamin D deficiency increases infection risk.", "Aspirin lowers the risk of stroke."]
    assert client.get(f"/models/{embedder}").json()["serving_backend"]["backend"] == "torch-fp32"
    vectors = _embed(service, embedder, texts)
    served = _gate(service, trained, embedder, {"backends": ["onnx-fp32"], "min_speedup": 0.0})
    assert served["backend"] == "onnx-fp32" and served["gate"]["passed"], served
    np.testing.assert_allclose(_embed(service, embedder, texts), vectors, atol=1e-4)
    assert not service.store.exists(f"models/{embedder}"), "the superseded folder is removed"
    assert client.get(f"/models/{embedder}/download").status_code == 200

    scores = _rerank(service, reranker, texts[0], texts)
    first_stage = {"backends": ["onnx-fp32"], "min_speedup": 0.0, "rerank_k": 20}
    first_stage["candidate_model"] = trained["embedder"]["model_id"]
    served = _gate(service, trained, reranker, first_stage)
    assert served["backend"] == "onnx-fp32" and served["gate"]["passed"], served
    assert _rerank(service, reranker, texts[0], texts) == pytest.approx(scores, abs=1e-4)
