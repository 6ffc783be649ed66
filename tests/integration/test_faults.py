"""Faults against real processes on PostgreSQL + Redis + S3 (moto's server; the production layout: API and
worker apart, the worker on its own data dir where the test starts it alone)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import missing
from tests.integration.conftest import (
    Processes,
    Service,
    job_finished,
    post_embedder_job,
    stop_service,
    upload_dataset,
)
from tests.integration.tcp_proxy import TcpProxy

TINY = {"epochs": 1, "batch_size": 8, "passage_max_len": 96, "logging_steps": 1}


def _job(service: Service, dataset_id: str, **params: object) -> dict:
    return post_embedder_job(service, dataset_id, TINY | params)


@pytest.mark.integration
def test_database_briefly_unreachable_gives_503_then_recovers(
    tmp_path: Path, pg_s3_env: dict[str, str], processes: Processes
) -> None:
    proxy = TcpProxy("127.0.0.1", 5432)
    proxy.start()
    url = pg_s3_env["RETUNE_DATABASE_URL"].replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    try:
        _, service = processes.service("postgres", tmp_path, pg_s3_env | {"RETUNE_DATABASE_URL": url})
        assert service.client.get("/models").status_code == 200
        proxy.stop()
        down = service.client.get("/models")
        assert down.status_code == 503, down.text
        assert "database" in down.json()["detail"]
        assert service.client.get("/health").status_code == 503
        proxy.start()
        deadline = time.monotonic() + 20
        while service.client.get("/models").status_code != 200:
            assert time.monotonic() < deadline, "did not recover without a restart"
            time.sleep(0.5)
        assert service.client.get("/health").json()["database"] == "ok"
    finally:
        proxy.stop()


@pytest.mark.integration
@pytest.mark.slow
def test_api_restart_while_job_runs(
    tmp_path: Path, pg_s3_env: dict[str, str], scifact_zip: bytes, processes: Processes
) -> None:
    processes.worker(tmp_path, pg_s3_env | {"RETUNE_DATA_DIR": str(tmp_path / "worker")})  # another host
    proc, service = processes.service("postgres", tmp_path, pg_s3_env, api_only=True)
    dataset = upload_dataset(service, scifact_zip, "s.zip")
    job = _job(service, dataset["id"])
    service.wait_for(f"/jobs/{job['id']}", lambda j: j["step"] >= 1, timeout=300)
    stop_service(proc)  # the API goes away mid-job ...
    time.sleep(2)
    _, service = processes.service(
        "postgres", tmp_path, pg_s3_env | {"RETUNE_PORT": service.url.rsplit(":", 1)[1]}, api_only=True
    )  # ... and comes back
    final = service.wait_for(f"/jobs/{job['id']}", job_finished, timeout=300)
    assert final["status"] == "succeeded", final
    assert final["attempts"] == 1, "the job was never interrupted"
    points = service.client.get(f"/jobs/{job['id']}/metrics").json()["points"]
    assert [p["step"] for p in points if p["name"] == "loss"] == list(range(1, final["total_steps"] + 1))
    assert [p["step"] for p in points if p["name"] == "ndcg@10" and p["split"] == "validation"] == [
        0,
        final["total_steps"],
    ]


@pytest.mark.integration
@pytest.mark.slow
def test_two_jobs_and_searching_without_cross_talk(
    tmp_path: Path, pg_s3_env: dict[str, str], scifact_zip: bytes, processes: Processes
) -> None:
    _, service = processes.service("postgres", tmp_path, pg_s3_env | {"RETUNE_WORKER_CONCURRENCY": "2"})
    client = service.client
    dataset = upload_dataset(service, scifact_zip, "s.zip")
    index = client.post("/indexes", json={"dataset_id": dataset["id"], "model_id": "all-MiniLM-L6-v2"}).json()
    service.wait_for(f"/indexes/{index['id']}", lambda i: i["status"] == "ready", timeout=300)

    searches: list[int] = []
    stop = threading.Event()

    def keep_searching() -> None:
        while not stop.is_set():
            body = {"index_id": index["id"], "query": "vitamin D", "top_k": 3}
            searches.append(client.post("/search", json=body).status_code)
            time.sleep(0.3)

    searcher = threading.Thread(target=keep_searching)
    searcher.start()
    try:
        long_job = _job(service, dataset["id"], max_steps=400, learning_rate=1e-5)
        short_job = _job(service, dataset["id"], seed=7)
        waiting_job = _job(service, dataset["id"], max_steps=2)
        for job in (long_job, short_job):
            service.wait_for(f"/jobs/{job['id']}", lambda j: j["status"] == "running", timeout=300)
        assert client.get(f"/jobs/{waiting_job['id']}").json()["status"] == "queued"  # both slots are taken

        client.post(f"/jobs/{long_job['id']}/cancel")  # frees its slot for the waiting job
        long_final = service.wait_for(f"/jobs/{long_job['id']}", job_finished, timeout=120)
        assert long_final["status"] == "cancelled" and long_final["model_id"] is None
        waiting = service.wait_for(f"/jobs/{waiting_job['id']}", job_finished, timeout=300)
        assert waiting["status"] == "succeeded", waiting
        service.wait_for(f"/jobs/{short_job['id']}", job_finished, timeout=300)
    finally:
        stop.set()
        searcher.join(timeout=60)
    assert searches and set(searches) == {200}, searches

    short_final = client.get(f"/jobs/{short_job['id']}").json()
    assert short_final["status"] == "succeeded", (short_final, service.log_tail())
    for job in (short_final, waiting):
        points = client.get(f"/jobs/{job['id']}/metrics").json()["points"]
        losses = [p["step"] for p in points if p["name"] == "loss"]
        assert losses == list(range(1, job["total_steps"] + 1)), (job["id"], losses)
    assert short_final["model_id"] != waiting["model_id"]
    models = {m["id"]: m for m in client.get("/models").json()}
    assert models[short_final["model_id"]]["job_id"] == short_job["id"]
    assert models[waiting["model_id"]]["job_id"] == waiting_job["id"]


REDIS_START = (
    'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no '
    "--dir /var/lib/redis --logfile /var/log/redis/ci.log"
)


def _redis_up() -> bool:
    return (
        subprocess.run(["redis-cli", "-h", "127.0.0.1", "ping"], capture_output=True, text=True).stdout.strip()
        == "PONG"
    )


def _restart_redis() -> None:
    """Restart the machine's Redis as an operator would; it keeps nothing on disk, so queued messages are lost."""
    subprocess.run(["redis-cli", "-h", "127.0.0.1", "shutdown", "nosave"], capture_output=True)
    deadline = time.monotonic() + 20
    while _redis_up():
        assert time.monotonic() < deadline, "redis did not stop"
        time.sleep(0.2)
    subprocess.run(REDIS_START, shell=True, check=True)
    while not _redis_up():
        assert time.monotonic() < deadline + 20, "redis did not come back"
        time.sleep(0.2)


@pytest.mark.integration
@pytest.mark.slow
def test_redis_restart_with_idle_worker_and_with_a_queued_job(
    tmp_path: Path, pg_s3_env: dict[str, str], scifact_zip: bytes, processes: Processes
) -> None:
    if not shutil.which("redis-server") or not pg_s3_env["RETUNE_BROKER_URL"].startswith("redis://127.0.0.1:6379"):
        missing("needs the machine's own Redis on 127.0.0.1:6379 to restart")
    env = pg_s3_env | {"RETUNE_DATA_DIR": str(tmp_path / "data"), "RETUNE_REDISPATCH_SECONDS": "3",
                    "RETUNE_RECOVERY_INTERVAL_SECONDS": "2"}  # fmt: skip
    _, service = processes.service("postgres", tmp_path, env, api_only=True)
    worker = processes.worker(tmp_path, env)
    try:
        dataset = upload_dataset(service, scifact_zip, "s.zip")

        _restart_redis()  # the worker is idle: it must reconnect by itself
        job = _job(service, dataset["id"], max_steps=2)
        assert service.wait_for(f"/jobs/{job['id']}", job_finished, timeout=300)["status"] == "succeeded"

        os.killpg(worker.pid, signal.SIGKILL)  # no worker: the next job stays queued in Redis ...
        queued = _job(service, dataset["id"], max_steps=2)
        time.sleep(1)
        _restart_redis()  # ... and its message is lost with the restart
        queue_length = subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "llen", pg_s3_env["RETUNE_QUEUE"]], capture_output=True, text=True
        ).stdout.strip()
        assert queue_length == "0", "the message should really be gone"
        assert service.client.get(f"/jobs/{queued['id']}").json()["status"] == "queued"

        processes.worker(tmp_path, env)  # Retune sends it again from SQL
        final = service.wait_for(f"/jobs/{queued['id']}", job_finished, timeout=300)
        assert final["status"] == "succeeded", final
        assert final["attempts"] == 1
    finally:
        if not _redis_up():
            subprocess.run(REDIS_START, shell=True)
