"""Several hosts sharing only PostgreSQL, Redis and an S3 store (moto's server on loopback).

The API and each worker have their own data dir: every dataset, model, index and checkpoint one of
them reads was written by another through the store. A worker SIGKILLed after a checkpoint is replaced
by one with an empty data dir, and the job resumes from the checkpoint in the store.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from app.services.artifacts import MANIFEST
from tests.conftest import S3Server, scifact_slice_zip
from tests.integration.conftest import (
    Service,
    drop_pg_database,
    eventually,
    job_finished,
    postgres_redis_env,
    run_job,
    start_service,
    start_worker,
    stop_service,
)

TINY = {"batch_size": 8, "passage_max_len": 64, "logging_steps": 1, "max_steps": 2}
SMALL_EVAL = {"split": "test", "max_queries": 5, "max_corpus_docs": 40}


@dataclass
class Hosts:
    api: Service
    s3: S3Server
    prefix: str
    env: dict[str, str]
    tmp: Path
    workers: list[subprocess.Popen] = field(default_factory=list)

    def start_worker(self, name: str) -> Path:
        """A worker on its own (fresh) data dir, as on another machine; returns that dir."""
        data_dir = self.tmp / name
        self.workers.append(start_worker(self.tmp, self.env | {"RETUNE_DATA_DIR": str(data_dir)}))
        return data_dir

    def keys(self, under: str) -> list[str]:
        client = self.s3.client()
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.s3.bucket, Prefix=f"{self.prefix}/{under}")
        return [o["Key"].removeprefix(f"{self.prefix}/") for page in pages for o in page.get("Contents", [])]

    def published(self, key: str) -> bool:
        return f"{key}/{MANIFEST}" in self.keys(key)


@pytest.fixture(scope="module")
def hosts(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    tmp = tmp_path_factory.mktemp("s3")
    prefix = f"run-{uuid.uuid4().hex[:8]}"
    db_name, pg_env = postgres_redis_env()
    env = pg_env | s3_server.env(prefix) | {"RETUNE_JOB_STALE_SECONDS": "3", "RETUNE_WORKER_CONCURRENCY": "1"}
    (tmp / "api").mkdir()
    proc, api = start_service("s3", tmp / "api", env, api_only=True)
    setup = Hosts(api, s3_server, prefix, env, tmp)
    setup.start_worker("worker-1")
    try:
        yield setup
    finally:
        for worker in setup.workers:
            stop_service(worker)
        api.client.close()
        stop_service(proc)
        drop_pg_database(db_name)


@pytest.fixture(scope="module")
def dataset_id(hosts: Hosts) -> str:
    """A small SciFact slice (16 train / 8 test queries, 40 documents), uploaded once."""
    upload = ("scifact-slice.zip", scifact_slice_zip(n_train=16, n_test=8, n_distractors=16))
    return hosts.api.client.post("/datasets", files={"file": upload}).json()["id"]


def _only_cache(data_dir: Path) -> None:
    """Nothing published lives in a host's data dir: artifacts are in the store, copies in cache/."""
    for sub in ("datasets", "models", "indexes"):
        assert not any((data_dir / sub).iterdir()), f"{data_dir / sub} holds artifacts"


def _cached(data_dir: Path) -> list[Path]:
    return list((data_dir / "cache" / "artifacts").iterdir())


@pytest.mark.integration
@pytest.mark.slow
def test_upload_train_index_search_download_through_s3(hosts: Hosts, dataset_id: str) -> None:
    client = hosts.api.client
    dataset = client.get(f"/datasets/{dataset_id}").json()
    assert hosts.published(f"datasets/{dataset['id']}")
    job = run_job(hosts.api, {"kind": "embedder", "dataset_id": dataset["id"], "eval": SMALL_EVAL, "params": TINY})
    model_id = job["model_id"]
    assert hosts.published(f"models/{model_id}")

    index = client.post("/indexes", json={"dataset_id": dataset["id"], "model_id": model_id}).json()
    index = hosts.api.wait_for(f"/indexes/{index['id']}", lambda i: i["status"] != "building", timeout=180)
    assert index["status"] == "ready", (index, hosts.api.log_tail())
    assert hosts.published(f"indexes/{index['id']}")

    query = "vitamin D deficiency"
    hits = client.post("/search", json={"index_id": index["id"], "query": query, "top_k": 5}).json()["results"]
    assert len(hits) == 5 and all(hit["text"] for hit in hits)
    again = client.post("/search", json={"index_id": index["id"], "query": query, "top_k": 5}).json()["results"]
    assert [h["doc_id"] for h in again] == [h["doc_id"] for h in hits]

    with client.stream("GET", f"/models/{model_id}/download") as response:
        assert response.status_code == 200
        archive = response.read()
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tf:
        names = {Path(n).name for n in tf.getnames()}
    assert {"config.json", "model.safetensors", "README.md"} <= names

    api_dir, worker_dir = hosts.api.data_dir, hosts.tmp / "worker-1"
    _only_cache(api_dir)
    _only_cache(worker_dir)
    assert any(p.name.startswith(f"indexes__{index['id']}--") for p in _cached(api_dir))
    assert any(p.name.startswith(f"datasets__{dataset['id']}--") for p in _cached(worker_dir))
    assert not hosts.keys(f"work/{job['id']}/"), "checkpoints are removed from the store when the job ends"

    assert client.delete(f"/indexes/{index['id']}").status_code == 204
    assert not hosts.keys(f"indexes/{index['id']}/")


@pytest.mark.integration
@pytest.mark.slow
def test_job_resumes_on_another_data_dir_after_its_worker_is_killed(hosts: Hosts, dataset_id: str) -> None:
    client = hosts.api.client
    params = {**TINY, "checkpoint_steps": 2, "max_steps": 6}
    body = {"kind": "embedder", "dataset_id": dataset_id, "eval": SMALL_EVAL, "params": params}
    job = client.post("/jobs", json=body).json()
    pattern = re.compile(rf"work/{job['id']}/checkpoint-\d+/{MANIFEST}")
    hosts.api.wait_for(
        f"/jobs/{job['id']}",
        lambda j: job_finished(j) or any(pattern.fullmatch(k) for k in hosts.keys(f"work/{job['id']}/")),
        timeout=300,
        interval=0.2,
    )
    for worker in hosts.workers:
        os.killpg(worker.pid, signal.SIGKILL)
    killed_at = client.get(f"/jobs/{job['id']}").json()
    assert killed_at["status"] == "running" and killed_at["step"] < params["max_steps"], killed_at

    fresh = hosts.start_worker("worker-2")
    final = hosts.api.wait_for(f"/jobs/{job['id']}", job_finished, timeout=300)
    assert final["status"] == "succeeded", final
    assert final["attempts"] == 2
    assert "fetched the checkpoint at step" in final["message"]
    assert "resumed from checkpoint at step" in final["message"]
    points = client.get(f"/jobs/{job['id']}/metrics").json()["points"]
    assert [p["step"] for p in points if p["name"] == "loss"] == list(range(1, params["max_steps"] + 1))
    assert hosts.published(f"models/{final['model_id']}")
    work = fresh / "work" / job["id"]
    eventually(lambda: not work.exists() and not hosts.keys(f"work/{job['id']}/"), "a success removes the checkpoints")
