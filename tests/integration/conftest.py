"""Start the real service (API + Celery worker, the `serve` command users run) on each backend.

- ``embedded``: SQLite file + SQLAlchemy/SQLite Celery broker, nothing else running;
- ``postgres``: the machine's PostgreSQL (a fresh database per run) + Redis (a queue per run).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
PG_ADMIN_URL = os.environ.get("RETUNE_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")
ADMIN_KEY = "rt_test_admin_" + uuid.uuid4().hex
UPLOAD_LIMIT = 4_000_000  # small, so the over-limit upload test sends little
REDIS_URL = os.environ.get("RETUNE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


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

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_for(self, path: str, done, timeout: float = 300.0, interval: float = 0.5):
        """Poll GET ``path`` until ``done(body)``; fail with the service log on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = self.client.get(path).json()
            if done(body):
                return body
            time.sleep(interval)
        pytest.fail(f"timed out waiting on {path}: {body}\n--- service log ---\n{self.log_tail()}")


def run_job(service: Service, body: dict, timeout: float = 600) -> dict:
    """POST a job, wait for it to end, and fail (with the service log) unless it succeeded."""
    created = service.client.post("/jobs", json=body)
    assert created.status_code == 202, created.text
    job = service.wait_for(f"/jobs/{created.json()['id']}", job_finished, timeout=timeout)
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
    service = Service(backend, url, tmp / "data", client, log_path)
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


@pytest.fixture(scope="session", params=["embedded", "postgres"])
def service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp(request.param)
    db_name = None
    env: dict[str, str] = {"RETUNE_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT)}
    if request.param == "postgres":
        db_name, pg_env = postgres_redis_env()
        env |= pg_env
    proc, svc = start_service(request.param, tmp, env)
    try:
        yield svc
    finally:
        svc.client.close()
        stop_service(proc)
        if db_name:
            drop_pg_database(db_name)
