"""Several hosts for real: each in its own Linux network namespace, with its own data dir.

``svc`` runs a private PostgreSQL, Redis and S3 server (moto's), ``api`` the API alone, ``w1`` and
``w2`` one worker each. The hosts reach one another only over a bridge on a private subnet; the
machine's PostgreSQL and Redis (on loopback) are out of their reach. A job trains on ``w1``, whose
every process is SIGKILLed after a checkpoint reached the store; the beat's sweep (on ``api``) sends
the job again and ``w2``, a standby worker, resumes it from that checkpoint, then builds an index
that ``api`` searches and embeds with. (A takeover by a worker's start, rather than by the sweep,
is test_artifact_store_s3.py's.)
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.services.artifacts import MANIFEST
from tests.conftest import S3Server, missing, scifact_slice_zip
from tests.integration.conftest import ADMIN_KEY, ROOT, Service, eventually, job_finished, upload_dataset
from tests.integration.netns import Host, Network, log_tail, unsupported
from tests.integration.store_view import store_view
from tests.integration.test_artifact_store_s3 import SMALL_EVAL, TINY, _cached, _only_cache

PARAMS = {**TINY, "checkpoint_steps": 2, "max_steps": 3}  # killed after the checkpoint at 2; 3 on w2
PG_PORT, REDIS_PORT, S3_PORT, API_PORT = 5432, 6379, 5000, 8000


def _tools() -> tuple[Path, str]:
    """PostgreSQL's server binaries and redis-server, or the test cannot run (fails under CI)."""
    if reason := unsupported():
        missing(reason)
    initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdb:
        missing("PostgreSQL's server binaries (/usr/lib/postgresql/*/bin/initdb) are not installed")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        missing("no `postgres` user to run PostgreSQL's server as")
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


def _launch_s3(svc: Host) -> tuple[subprocess.Popen, S3Server]:
    """moto's S3 server on ``svc``; not waited for here (its start overlaps PostgreSQL's and Redis's)."""
    proc = svc.popen("s3", [sys.executable, "-m", "moto.server", "-H", svc.addr, "-p", str(S3_PORT)])
    return proc, S3Server(f"http://{svc.addr}:{S3_PORT}", "retune-multi-host")


def _retune(host: Host, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return host.popen(name, [sys.executable, "-m", "app.cli", *args], env, cwd=ROOT)


def _logged(host: Host, name: str, needle: str) -> bool:
    return needle in host.log(name).read_text(errors="replace")


@dataclass
class Cluster:
    net: Network
    api: Service
    s3: S3Server
    env: dict[str, str]
    tmp: Path

    def start_worker(self, name: str) -> tuple[Host, subprocess.Popen]:
        """A worker alone on a new host with an empty data dir (``tmp/NAME``); not waited for."""
        host = self.net.add_host(name)
        return host, _retune(host, "worker", ["worker"], self.env | {"RETUNE_DATA_DIR": str(self.tmp / name)})

    def keys(self, under: str) -> list[str]:
        pages = self.s3.client().get_paginator("list_objects_v2").paginate(Bucket=self.s3.bucket, Prefix=under)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def reaches(self, host: Host, addr: str, port: int) -> bool:
        """Whether a TCP connection from inside ``host`` to ``addr:port`` succeeds."""
        probe = f"import socket; socket.create_connection(({addr!r}, {port}), timeout=2)"
        argv = ["ip", "netns", "exec", host.netns, sys.executable, "-c", probe]
        return subprocess.run(argv, capture_output=True).returncode == 0


def _wait_worker(host: Host, proc: subprocess.Popen) -> None:
    host.wait_ready("worker", proc, lambda: _logged(host, "worker", " ready."), timeout=180)


def _launch_api_and_beat(net: Network, env: dict[str, str], data_dir: Path) -> tuple[Service, Callable[[], None]]:
    """The API alone, and the deployment's one beat (it sends the recovery sweep), on host ``api``;
    returns the API and a function that waits until both are up (so other starts can overlap them)."""
    host = net.add_host("api")
    env = env | {"RETUNE_DATA_DIR": str(data_dir), "RETUNE_HOST": host.addr, "RETUNE_PORT": str(API_PORT)}
    proc, beat = _retune(host, "api", ["serve", "--no-worker"], env), _retune(host, "beat", ["beat"], env)
    url = f"http://{host.addr}:{API_PORT}"
    client = httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, trust_env=False)

    def wait() -> None:
        host.wait_ready("api", proc, lambda: client.get("/health").status_code == 200, 180)
        host.wait_ready("beat", beat, lambda: _logged(host, "beat", "beat: Starting"), 180)

    return Service("netns", url, data_dir, client, host.log("api"), store_view(env, data_dir)), wait


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """svc (PostgreSQL, Redis, S3), api (API + beat) and w1 (a worker), all started and ready."""
    bindir, redis_server = _tools()
    tmp = tmp_path_factory.mktemp("hosts")
    workdir = Path(tempfile.mkdtemp(prefix="retune-svc-"))  # outside pytest's root-only tmp: postgres reads it
    try:
        net = Network(tmp)
    except RuntimeError as error:  # root without CAP_NET_ADMIN, as in an unprivileged container
        shutil.rmtree(workdir, ignore_errors=True)
        missing(f"cannot make network interfaces here: {error}")
    try:
        svc = net.add_host("svc")
        s3_proc, s3 = _launch_s3(svc)
        env = {
            **os.environ,
            **s3.env("retune"),
            "RETUNE_DATABASE_URL": _start_postgres(svc, bindir, workdir, str(net.subnet)),
            "RETUNE_BROKER_URL": _start_redis(svc, redis_server, workdir),
            "RETUNE_BOOTSTRAP_KEY": ADMIN_KEY,
            "RETUNE_JOB_STALE_SECONDS": "5",
            "RETUNE_RECOVERY_INTERVAL_SECONDS": "1",
            "RETUNE_WORKER_CONCURRENCY": "1",
            "HF_HUB_OFFLINE": "1",
        }
        svc.wait_ready("s3", s3_proc, lambda: bool(s3.client().create_bucket(Bucket=s3.bucket)))
        api, wait_api = _launch_api_and_beat(net, env, tmp / "api")
        cluster = Cluster(net, api, s3, env, tmp)
        w1 = cluster.start_worker("w1")  # its start overlaps the API's
        wait_api()
        _wait_worker(*w1)
        yield cluster
    finally:
        net.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _train_across_a_lost_host(cluster: Cluster, dataset_id: str) -> dict:
    """The job starts on w1, a standby worker starts on w2; once a checkpoint is in the store, w1 loses
    power. The beat's sweep finds the job's heartbeat stale and sends it again: w2 resumes it."""
    api, w1 = cluster.api, cluster.net.hosts["w1"]
    body = {"kind": "embedder", "dataset_id": dataset_id, "eval": SMALL_EVAL, "params": PARAMS}
    job = api.client.post("/jobs", json=body).json()
    api.wait_for(f"/jobs/{job['id']}", lambda j: j["status"] != "queued", timeout=60, interval=0.2)
    w2 = cluster.start_worker("w2")  # after w1 took the job: only a sweep can give it to w2
    pattern = re.compile(rf"retune/work/{job['id']}/checkpoint-\d+/{MANIFEST}")
    api.wait_for(
        f"/jobs/{job['id']}",
        lambda j: job_finished(j) or any(pattern.fullmatch(k) for k in cluster.keys(f"retune/work/{job['id']}/")),
        timeout=180,
        interval=0.2,
    )
    w1.kill_all()
    assert not w1.pids()
    killed_at = api.client.get(f"/jobs/{job['id']}").json()
    assert killed_at["status"] == "running" and killed_at["step"] < PARAMS["max_steps"], killed_at

    _wait_worker(*w2)
    final = api.wait_for(f"/jobs/{job['id']}", job_finished, timeout=180)
    assert final["status"] == "succeeded", (final, log_tail(w2[0].log("worker")))
    return final


@pytest.mark.integration
@pytest.mark.slow
def test_job_survives_its_host_and_another_host_serves_the_model(cluster: Cluster) -> None:
    api, client, hosts = cluster.api, cluster.api.client, cluster.net.hosts
    assert not cluster.reaches(hosts["api"], "127.0.0.1", 5432), "the machine's PostgreSQL must be out of reach"
    assert cluster.reaches(hosts["api"], hosts["svc"].addr, PG_PORT)

    upload = scifact_slice_zip(n_train=16, n_test=8, n_distractors=16)
    dataset_id = upload_dataset(api, upload, "scifact-slice.zip")["id"]
    job = _train_across_a_lost_host(cluster, dataset_id)
    assert job["attempts"] == 2
    assert "fetched the checkpoint at step" in job["message"]
    assert "resumed from checkpoint at step" in job["message"]
    points = client.get(f"/jobs/{job['id']}/metrics").json()["points"]
    assert [p["step"] for p in points if p["name"] == "loss"] == list(range(1, PARAMS["max_steps"] + 1))

    index = client.post("/indexes", json={"dataset_id": dataset_id, "model_id": job["model_id"]}).json()
    body = {"model": job["model_id"], "input": ["vitamin D", "bone density"], "encoding_format": "float"}
    vectors = client.post("/v1/embeddings", json=body).json()["data"]  # while w2 builds the index
    assert len(vectors) == 2 and len(vectors[0]["embedding"]) == 384
    index = api.wait_for(f"/indexes/{index['id']}", lambda i: i["status"] != "building", timeout=120)
    assert index["status"] == "ready", index
    hits = client.post("/search", json={"index_id": index["id"], "query": "vitamin D", "top_k": 5}).json()
    assert len(hits["results"]) == 5 and all(hit["text"] for hit in hits["results"])

    w1_dir, w2_dir = cluster.tmp / "w1", cluster.tmp / "w2"
    for data_dir in (api.data_dir, w1_dir, w2_dir):
        _only_cache(data_dir)
    assert any(p.name.startswith(f"indexes__{index['id']}--") for p in _cached(api.data_dir))
    assert any(p.name.startswith(f"datasets__{dataset_id}--") for p in _cached(w2_dir))
    work = w2_dir / "work" / job["id"]
    eventually(lambda: not work.exists() and not cluster.keys(f"retune/work/{job['id']}/"), "checkpoints removed")
