"""Several hosts for real: each in its own Linux network namespace, with its own data dir.

``svc`` runs a private PostgreSQL, Redis and S3 server (moto's), ``api`` the API alone, ``w1`` and
``w2`` one worker each. The hosts reach one another only over a bridge on a private subnet; the
machine's PostgreSQL and Redis (on loopback) are out of their reach. A job trains on ``w1``, whose
every process is SIGKILLed after a checkpoint reached the store; ``w2`` resumes it from that
checkpoint, then builds an index that ``api`` searches and embeds with.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.services.artifacts import MANIFEST
from tests.conftest import S3Server, missing, scifact_slice_zip
from tests.integration.conftest import ADMIN_KEY, ROOT, Service, job_finished, upload_dataset
from tests.integration.netns import Host, Network, log_tail, unsupported
from tests.integration.test_artifact_store_s3 import SMALL_EVAL, TINY, _cached, _only_cache

PARAMS = {**TINY, "checkpoint_steps": 2, "max_steps": 4}  # killed after step 2, resumed for 3 and 4
PG_PORT, REDIS_PORT, S3_PORT, API_PORT = 5432, 6379, 5000, 8000


def _tools() -> tuple[Path, str]:
    """PostgreSQL's server binaries and redis-server, or the test cannot run (fails under CI)."""
    if reason := unsupported():
        missing(reason)
    initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdb:
        missing("PostgreSQL's server binaries (/usr/lib/postgresql/*/bin/initdb) are not installed")
    if not (redis := shutil.which("redis-server")):
        missing("redis-server is not installed")
    return Path(initdb[-1]).parent, redis


def _start_postgres(svc: Host, bindir: Path, workdir: Path, subnet: str) -> str:
    """A fresh cluster (trust auth, no fsync: it lives for one test) listening on ``svc`` only."""
    shutil.chown(workdir, "postgres")
    as_postgres = ["runuser", "-u", "postgres", "--"]
    init = subprocess.run(
        [*as_postgres, str(bindir / "initdb"), "-D", str(workdir / "data"), "-U", "postgres", "--auth=trust", "-N"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert init.returncode == 0, f"initdb failed:\n{init.stdout}\n{init.stderr}"
    with (workdir / "data" / "pg_hba.conf").open("a") as hba:
        hba.write(f"host all all {subnet} trust\n")  # the other hosts, over the bridge
    settings = {"listen_addresses": svc.addr, "port": PG_PORT, "unix_socket_directories": workdir, "fsync": "off"}
    options = [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]
    proc = svc.popen("postgres", [*as_postgres, str(bindir / "postgres"), "-D", str(workdir / "data"), *options])

    def accepts() -> bool:
        import psycopg

        psycopg.connect(f"postgresql://postgres@{svc.addr}:{PG_PORT}/postgres", connect_timeout=2).close()
        return True

    svc.wait_ready("postgres", proc, accepts)
    return f"postgresql+psycopg://postgres@{svc.addr}:{PG_PORT}/postgres"


def _start_redis(svc: Host, redis_server: str, workdir: Path) -> str:
    args = ["--bind", svc.addr, "--port", str(REDIS_PORT), "--save", "", "--appendonly", "no", "--dir", str(workdir)]
    proc = svc.popen("redis", [redis_server, *args, "--protected-mode", "no"])

    def pongs() -> bool:
        import redis

        return redis.Redis(host=svc.addr, port=REDIS_PORT, socket_timeout=2).ping()

    svc.wait_ready("redis", proc, pongs)
    return f"redis://{svc.addr}:{REDIS_PORT}/0"


def _start_s3(svc: Host) -> S3Server:
    proc = svc.popen("s3", [sys.executable, "-m", "moto.server", "-H", svc.addr, "-p", str(S3_PORT)])
    s3 = S3Server(f"http://{svc.addr}:{S3_PORT}", "retune-multi-host")
    svc.wait_ready("s3", proc, lambda: bool(s3.client().create_bucket(Bucket=s3.bucket)))
    return s3


@dataclass
class Cluster:
    net: Network
    api: Service
    s3: S3Server
    env: dict[str, str]
    tmp: Path

    def start_worker(self, name: str) -> tuple[Host, Path]:
        """A worker alone on a new host with an empty data dir; returns once Celery says it is ready."""
        host, data_dir = self.net.add_host(name), self.tmp / name
        cmd = [sys.executable, "-m", "app.cli", "worker"]
        proc = host.popen("worker", cmd, self.env | {"RETUNE_DATA_DIR": str(data_dir)}, cwd=ROOT)
        host.wait_ready("worker", proc, lambda: " ready." in host.log("worker").read_text(errors="replace"), 120)
        return host, data_dir

    def keys(self, under: str) -> list[str]:
        pages = self.s3.client().get_paginator("list_objects_v2").paginate(Bucket=self.s3.bucket, Prefix=under)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def reaches(self, host: Host, addr: str, port: int) -> bool:
        """Whether a TCP connection from inside ``host`` to ``addr:port`` succeeds."""
        probe = f"import socket; socket.create_connection(({addr!r}, {port}), timeout=2)"
        argv = ["ip", "netns", "exec", host.netns, sys.executable, "-c", probe]
        return subprocess.run(argv, capture_output=True).returncode == 0


def _start_api(net: Network, env: dict[str, str], data_dir: Path) -> Service:
    api = net.add_host("api")
    env = env | {"RETUNE_DATA_DIR": str(data_dir), "RETUNE_HOST": api.addr, "RETUNE_PORT": str(API_PORT)}
    proc = api.popen("api", [sys.executable, "-m", "app.cli", "serve", "--no-worker"], env, cwd=ROOT)
    url = f"http://{api.addr}:{API_PORT}"
    client = httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, trust_env=False)
    api.wait_ready("api", proc, lambda: client.get("/health").status_code == 200, 120)
    return Service("netns", url, data_dir, client, api.log("api"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    bindir, redis_server = _tools()
    tmp = tmp_path_factory.mktemp("hosts")
    workdir = Path(tempfile.mkdtemp(prefix="retune-svc-"))  # outside pytest's root-only tmp: postgres reads it
    net = Network(tmp)
    try:
        svc = net.add_host("svc")
        s3 = _start_s3(svc)
        env = {
            **os.environ,
            **s3.env("retune"),
            "RETUNE_DATABASE_URL": _start_postgres(svc, bindir, workdir, str(net.subnet)),
            "RETUNE_BROKER_URL": _start_redis(svc, redis_server, workdir),
            "RETUNE_BOOTSTRAP_KEY": ADMIN_KEY,
            "RETUNE_JOB_STALE_SECONDS": "3",
            "RETUNE_WORKER_CONCURRENCY": "1",
            "HF_HUB_OFFLINE": "1",
        }
        api = _start_api(net, env, tmp / "api")
        yield Cluster(net, api, s3, env, tmp)
    finally:
        net.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _train_across_a_lost_host(cluster: Cluster, dataset_id: str) -> tuple[dict, Path, Path]:
    """The job starts on w1; once a checkpoint is in the store w1 loses power; w2 finishes it."""
    w1, w1_dir = cluster.start_worker("w1")
    body = {"kind": "embedder", "dataset_id": dataset_id, "eval": SMALL_EVAL, "params": PARAMS}
    job = cluster.api.client.post("/jobs", json=body).json()
    pattern = re.compile(rf"retune/work/{job['id']}/checkpoint-\d+/{MANIFEST}")
    cluster.api.wait_for(
        f"/jobs/{job['id']}",
        lambda j: job_finished(j) or any(pattern.fullmatch(k) for k in cluster.keys(f"retune/work/{job['id']}/")),
        timeout=120,
        interval=0.2,
    )
    w1.kill_all()
    assert not w1.pids()
    killed_at = cluster.api.client.get(f"/jobs/{job['id']}").json()
    assert killed_at["status"] == "running" and killed_at["step"] < PARAMS["max_steps"], killed_at

    w2, w2_dir = cluster.start_worker("w2")
    final = cluster.api.wait_for(f"/jobs/{job['id']}", job_finished, timeout=120)
    assert final["status"] == "succeeded", (final, log_tail(w2.log("worker")))
    return final, w1_dir, w2_dir


@pytest.mark.integration
@pytest.mark.slow
def test_job_survives_its_host_and_another_host_serves_the_model(cluster: Cluster) -> None:
    api, client = cluster.api, cluster.api.client
    api_host = cluster.net.hosts[1]
    assert not cluster.reaches(api_host, "127.0.0.1", 5432), "the machine's PostgreSQL must be out of reach"
    assert cluster.reaches(api_host, cluster.net.hosts[0].addr, PG_PORT)

    upload = scifact_slice_zip(n_train=16, n_test=8, n_distractors=16)
    dataset_id = upload_dataset(api, upload, "scifact-slice.zip")["id"]
    job, w1_dir, w2_dir = _train_across_a_lost_host(cluster, dataset_id)
    assert job["attempts"] == 2
    assert "fetched the checkpoint at step" in job["message"]
    assert "resumed from checkpoint at step" in job["message"]
    points = client.get(f"/jobs/{job['id']}/metrics").json()["points"]
    assert [p["step"] for p in points if p["name"] == "loss"] == list(range(1, PARAMS["max_steps"] + 1))

    index = client.post("/indexes", json={"dataset_id": dataset_id, "model_id": job["model_id"]}).json()
    index = api.wait_for(f"/indexes/{index['id']}", lambda i: i["status"] != "building", timeout=120)
    assert index["status"] == "ready", index
    hits = client.post("/search", json={"index_id": index["id"], "query": "vitamin D", "top_k": 5}).json()
    assert len(hits["results"]) == 5 and all(hit["text"] for hit in hits["results"])
    body = {"model": job["model_id"], "input": ["vitamin D", "bone density"], "encoding_format": "float"}
    vectors = client.post("/v1/embeddings", json=body).json()["data"]
    assert len(vectors) == 2 and len(vectors[0]["embedding"]) == 384

    for data_dir in (api.data_dir, w1_dir, w2_dir):
        _only_cache(data_dir)
    assert any(p.name.startswith(f"indexes__{index['id']}--") for p in _cached(api.data_dir))
    assert any(p.name.startswith(f"datasets__{dataset_id}--") for p in _cached(w2_dir))
    assert not (w2_dir / "work" / job["id"]).exists() and not cluster.keys(f"retune/work/{job['id']}/")
