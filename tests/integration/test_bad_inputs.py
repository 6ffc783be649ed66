"""Malformed uploads and requests: each gets a 4xx naming what is wrong; nothing is half-stored."""

from __future__ import annotations

import json

import pytest

from tests.integration.conftest import BEIR_TINY, TRAINING_LINE, UPLOAD_LIMIT, Service, upload_beir, zip_bytes

# (file name, content, expected status, substrings the message must contain)
BAD_UPLOADS = [
    ("notes.txt", b"hello", 422, ["notes.txt", "unsupported"]),
    ("train.jsonl", f"{TRAINING_LINE}\n{{not json\n".encode(), 422, ["train.jsonl", "line 2"]),
    ("train.jsonl", b'{"pos": ["a"], "neg": []}\n', 422, ["line 1", "query"]),
    ("train.jsonl", b'{"query": "q", "pos": "a", "neg": []}\n', 422, ["line 1", "pos"]),
    ("train.jsonl", b'{"query": "q", "pos": [], "neg": []}\n', 422, ["line 1", "pos"]),
    ("train.jsonl", b'{"query": "q", "pos": ["a"], "neg": [], "pos_scores": [1, 2]}\n', 422, ["pos_scores"]),
    ("train.jsonl", b"", 422, ["train.jsonl"]),
    ("train.jsonl", b'{"query": 5, "pos": ["a"], "neg": []}\n', 422, ["query"]),
    ("beir.zip", zip_bytes({**BEIR_TINY, "qrels/test.tsv": "query-id\tcorpus-id\tscore\nq1\tnope\t1\n"}), 422,
     ["qrels/test.tsv", "line 2", "corpus-id"]),
    ("beir.zip", zip_bytes({**BEIR_TINY, "qrels/test.tsv": "query-id\tcorpus-id\tscore\nq1\td1\thigh\n"}), 422,
     ["qrels/test.tsv", "score"]),
    ("beir.zip", zip_bytes({k: v for k, v in BEIR_TINY.items() if k != "corpus.jsonl"}), 422, ["corpus.jsonl"]),
    ("beir.zip", zip_bytes({**BEIR_TINY, "corpus.jsonl": '{"_id": "d1", "text": "a"}\n{"_id": "d1", "text": "b"}\n'}),
     422, ["corpus.jsonl", "line 2", "_id"]),
    ("evil.zip", zip_bytes({**BEIR_TINY, "../escape.txt": "x"}), 422, ["evil.zip", "escape"]),
    ("broken.zip", b"PK\x03\x04 definitely not a zip", 422, ["broken.zip"]),
    ("big.jsonl", (TRAINING_LINE + "\n").encode() * (UPLOAD_LIMIT // len(TRAINING_LINE) + 10), 413,
     ["big.jsonl", "limit"]),
]  # fmt: skip


def _state(service: Service) -> tuple[list[str], list[str], list[str]]:
    ids = sorted(d["id"] for d in service.client.get("/datasets").json())
    stored = service.store.ids("datasets")
    scratch = sorted(p.name for p in (service.data_dir / "tmp").iterdir())
    return ids, stored, scratch


@pytest.mark.integration
def test_bad_uploads_are_refused_and_leave_nothing(service: Service) -> None:
    before = _state(service)
    for filename, content, status, needles in BAD_UPLOADS:
        response = service.client.post("/datasets", files={"file": (filename, content)})
        assert response.status_code == status, (filename, response.text)
        detail = response.json()["detail"]
        for needle in needles:
            assert needle in detail, (filename, needle, detail)
    assert _state(service) == before


@pytest.mark.integration
def test_bad_requests_get_clear_4xx(service: Service) -> None:
    client = service.client
    dataset_id = upload_beir(service, "tiny")["id"]

    jobs_before = client.get("/jobs").json()
    cases = [
        ("post", "/jobs", {"kind": "embedder", "dataset_id": "missing"}, 404, "dataset 'missing'"),
        ("post", "/jobs", {"kind": "embedder", "dataset_id": dataset_id, "params": {"lr": 1}}, 422, "params.lr"),
        ("post", "/jobs", {"kind": "embedder", "dataset_id": dataset_id, "params": {"batch_size": 0}}, 422,
         "params.batch_size"),
        ("post", "/jobs", {"kind": "embedder", "dataset_id": dataset_id, "eval": {"split": "dev"}}, 422, "dev"),
        ("post", "/jobs", {"kind": "embedder", "dataset_id": dataset_id, "eval": {"holdout_fraction": 1.5}}, 422,
         "holdout_fraction"),
        ("post", "/jobs", {"kind": "classifier", "dataset_id": dataset_id}, 422, "kind"),
        ("post", "/jobs", {"kind": "embedder", "dataset_id": dataset_id, "base_model": "/no/such/dir"}, 422,
         "/no/such/dir"),
        ("post", "/indexes", {"dataset_id": dataset_id, "model_id": "nope"}, 404, "model 'nope'"),
        ("post", "/search", {"index_id": "nope", "query": "x"}, 404, "index 'nope'"),
        ("post", "/search", {"index_id": "nope", "query": ""}, 422, "query"),
        ("post", "/search", {"index_id": "nope", "query": "x", "threshold": 2}, 422, "threshold"),
        ("get", "/jobs/nope", None, 404, "job 'nope'"),
        ("post", "/jobs/nope/cancel", None, 404, "job 'nope'"),
    ]  # fmt: skip
    for method, path, body, status, needle in cases:
        response = client.request(method, path, json=body)
        assert response.status_code == status, (path, body, response.text)
        assert needle in json.dumps(response.json()), (path, body, response.text)
    assert client.get("/jobs").json() == jobs_before, "a refused job must not be stored"

    assert client.delete(f"/datasets/{dataset_id}").status_code == 204
    assert client.get(f"/datasets/{dataset_id}").status_code == 404
    assert not service.store.leftovers(f"datasets/{dataset_id}")
