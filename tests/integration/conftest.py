"""Start the real service (API + Celery worker, the `serve` command users run) on each backend.

- ``embedded``: SQLite file + SQLAlchemy/SQLite Celery broker, nothing else running;
- ``postgres-s3``: the production layout: the machine's PostgreSQL (a fresh database per run) + Redis
  (a queue per run) + an S3 store (moto's server on loopback, a fresh prefix per run).

So every test on the ``service`` fixture runs once on local storage and once on S3. Tests read artifacts
through ``Service.store`` (tests/integration/store_view.py), never from the data dir, except a host's
scratch (``tmp/``) and a running job's work dir, which are local on both layouts.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import S3Server
from tests.integration.store_view import LocalView, S3View, store_view

ROOT = Path(__file__).resolve().parents[2]
PG_ADMIN_URL = os.environ.get("RETUNE_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")
ADMIN_KEY = "rt_test_admin_" + uuid.uuid4().hex
UPLOAD_LIMIT = 4_000_000  # small, so the over-limit upload test sends little
REDIS_URL = os.environ.get("RETUNE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TRAINING_LINE = json.dumps({"query": "what is x", "pos": ["x is a letter"], "neg": ["y is another"]})
SMALL_EVAL = {"split": "test", "max_queries": 5, "max_corpus_docs": 60}
# A BEIR folder of three documents, one judged test query and one judged training query.
BEIR_TINY = {
    "corpus.jsonl": '{"_id": "d1", "text": "alpha"}\n{"_id": "d2", "text": "beta"}\n{"_id": "d3", "text": "gamma"}\n',
    "queries.jsonl": '{"_id": "q1", "text": "first"}\n{"_id": "q2", "text": "second"}\n',
    "qrels/test.tsv": "query-id\tcorpus-id\tscore\nq1\td1\t1\n",
    "qrels/train.tsv": "query-id\tcorpus-id\tscore\nq2\td2\t1\n",
}


def job_finished(job: dict) -> bool:
    """A job's final states: a poll waiting on a job stops at any of them."""
    return job["status"] in {"succeeded", "failed", "cancelled"}


@dataclass
class Service:
    backend: str
    url: str
    data_dir: Path
    client: httpx.Client
    log_path: Path
    store: LocalView | S3View

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_for_log(self, needle: str, timeout: float = 30.0) -> str:
        """The whole log once a line holds ``needle`` (a worker may log just after the API shows the result)."""
        deadline = time.monotonic() + timeout
        while needle not in (log := self.log_path.read_text(errors="replace")):
            if time.monotonic() > deadline:
                pytest.fail(f"no log line holds {needle!r}\n--- service log ---\n{self.log_tail()}")
            time.sleep(0.2)
        return log

    def wait_for(self, path: str, done, timeout: float = 300.0, interval: float = 0.5):
        """Poll GET ``path`` until ``done(body)``; fail with the service log on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = self.client.get(path).json()
            if done(body):
                return body
            time.sleep(interval)
        pytest.fail(f"timed out waiting on {path}: {body}\n--- service log ---\n{self.log_tail()}")


def eventually(condition, what: str, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    """Wait until ``condition()`` holds: what a worker does just after it commits a status (removing a
    succeeded job's checkpoints, say) is seen a moment after the API shows that status."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"after {timeout:.0f} s, still not: {what}")
        time.sleep(0.2)


def zip_bytes(files: Mapping[str, str | bytes]) -> bytes:
    """A zip archive of ``files`` (name -> content), built in memory."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, content in files.items():
            zf.writestr(name, content)
    return buf.getvalue()


def upload_dataset(service: Service, content: bytes, filename: str, name: str | None = None) -> dict:
    """POST a dataset file; fail (with the answer) unless it was stored."""
    response = service.client.post(
        "/datasets", files={"file": (filename, content)}, data={"name": name} if name else {}
    )
    assert response.status_code == 201, response.text
    return response.json()


def upload_beir(service: Service, name: str, files: Mapping[str, str] = BEIR_TINY) -> dict:
    """Upload a small BEIR folder (``files``) as ``name``.zip named ``name``."""
    return upload_dataset(service, zip_bytes(files), f"{name}.zip", name)


def post_job(service: Service, body: dict) -> dict:
    """POST a job; fail (with the answer) unless it was queued."""
    created = service.client.post("/jobs", json=body)
    assert created.status_code == 202, created.text
    return created.json()


def post_embedder_job(service: Service, dataset_id: str, params: dict, eval_spec: dict = SMALL_EVAL) -> dict:
    """POST an embedder job evaluated on a few test queries (for tests about processes, not figures)."""
    return post_job(service, {"kind": "embedder", "dataset_id": dataset_id, "eval": eval_spec, "params": params})


def run_job(service: Service, body: dict, timeout: float = 600) -> dict:
    """POST a job, wait for it to end, and fail (with the service log) unless it succeeded."""
    job = service.wait_for(f"/jobs/{post_job(service, body)['id']}", job_finished, timeout=timeout)
    assert job["status"] == "succeeded", (job, service.log_tail())
    return job


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _create_pg_database() -> tuple[str, str]:
    import psycopg

    name = f"retune_it_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return name, f"{base}/{name}"


def drop_pg_database(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_service(
    backend: str, tmp: Path, extra_env: dict[str, str] | None = None, api_only: bool = False
) -> tuple[subprocess.Popen, Service]:
    port = int((extra_env or {}).get("RETUNE_PORT") or _free_port())
    env = {
        **os.environ,
        "RETUNE_DATA_DIR": str(tmp / "data"),
        "RETUNE_PORT": str(port),
        "RETUNE_BOOTSTRAP_KEY": ADMIN_KEY,
        "HF_HUB_OFFLINE": "1",
    }
    env.update(extra_env or {})
    log_path = tmp / f"service-{time.monotonic_ns()}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", *(["--no-worker"] if api_only else [])],
        cwd=ROOT,
        env=env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # one process group: teardown stops the API and its worker together
    )
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    service = Service(backend, url, tmp / "data", client, log_path, store_view(env, tmp / "data"))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"service exited early:\n{service.log_tail()}")
        try:
            if client.get("/health").status_code == 200:
                return proc, service
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    stop_service(proc)
    pytest.fail(f"service did not become healthy:\n{service.log_tail()}")


def start_worker(tmp: Path, env: dict[str, str]) -> subprocess.Popen:
    """A Celery worker as its own process (production layout), in its own process group."""
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker"],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
        stdout=(tmp / f"worker-{time.monotonic_ns()}.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def postgres_redis_env() -> tuple[str, dict[str, str]]:
    """A fresh PostgreSQL database and a private Redis queue; returns (database name, env)."""
    db_name, db_url = _create_pg_database()
    return db_name, {
        "RETUNE_DATABASE_URL": db_url,
        "RETUNE_BROKER_URL": REDIS_URL,
        "RETUNE_QUEUE": f"retune-test-{uuid.uuid4().hex[:8]}",
    }


def stop_service(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def s3_env(s3: S3Server) -> dict[str, str]:
    """The S3 store under a fresh prefix of the run's bucket (one per service: nothing shared between tests)."""
    return s3.env(f"t-{uuid.uuid4().hex[:10]}")


@pytest.fixture(scope="session", params=["embedded", "postgres-s3"])
def service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp(request.param)
    db_name = None
    env: dict[str, str] = {"RETUNE_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT)}
    if request.param == "postgres-s3":
        db_name, pg_env = postgres_redis_env()
        env |= pg_env | s3_env(request.getfixturevalue("s3_server"))
    proc, svc = start_service(request.param, tmp, env)
    try:
        yield svc
    finally:
        svc.client.close()
        stop_service(proc)
        if db_name:
            drop_pg_database(db_name)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a process started in its own group (a worker) with its children, if still there."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@dataclass
class Processes:
    """Services and workers a test starts itself (to kill, restart or split them): all stopped at teardown."""

    services: list[subprocess.Popen] = field(default_factory=list)
    workers: list[subprocess.Popen] = field(default_factory=list)

    def service(
        self, backend: str, tmp: Path, extra_env: dict[str, str] | None = None, api_only: bool = False
    ) -> tuple[subprocess.Popen, Service]:
        proc, service = start_service(backend, tmp, extra_env, api_only)
        self.services.append(proc)
        return proc, service

    def worker(self, tmp: Path, env: dict[str, str]) -> subprocess.Popen:
        proc = start_worker(tmp, env)
        self.workers.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.services:
            stop_service(proc)
        for proc in self.workers:
            kill_group(proc)


@pytest.fixture
def processes() -> Iterator[Processes]:
    started = Processes()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def pg_env() -> Iterator[dict[str, str]]:
    """A fresh PostgreSQL database and a private Redis queue for one test; the database is dropped after it."""
    db_name, env = postgres_redis_env()
    try:
        yield env
    finally:
        drop_pg_database(db_name)


@pytest.fixture
def pg_s3_env(pg_env: dict[str, str], s3_server: S3Server) -> dict[str, str]:
    """The production layout for one test: ``pg_env`` plus the S3 store under a fresh prefix."""
    return pg_env | s3_env(s3_server)
