"""Chaos soak: Retune's production layout under load while its processes and servers fail at random.

    nice -n 10 .venv/bin/python -m bench.chaos_soak --minutes 10 --seed 0 --clients 4

Started here, on loopback: a private ``redis-server`` (free port; so it can be restarted without touching
the machine's Redis), a fresh database on the machine's PostgreSQL reached through a TCP proxy (the proxy
is what a "database cut" stops), the API (``serve --no-worker``), one gpu+cpu Celery worker and one beat.
Load: ``--clients`` threads searching an index over HTTP (each answer's status and time recorded), and a
loop creating tiny embedder jobs (a small SciFact slice), index builds over their models, and a few
cancels. A controller injects, one at a time at random intervals: a worker SIGKILLed (its process
group, restarted after a second as a process manager would), the API restarted, Redis restarted (no
persistence: messages in flight are lost), PostgreSQL cut for a few seconds. The first four faults are
one of each kind. While a worker is dead, Redis is down or PostgreSQL is cut, one index build is asked
for (a client's write does not wait for a quiet moment).

Afterwards (the load stopped, everything restored, jobs and builds given a bounded time to end), checked
over HTTP and SQL: every job not cancelled on request ``succeeded``; each one's metrics are complete (a
loss at every step 1..total_steps), ordered, with no (step, name, split) recorded twice; every listed
model embeds and every listed index answers a search; searches answered 200, or 503 only while the
database was cut, never another 5xx; writes likewise. No HTTP answer while the API restarted is counted
apart, not a failure.
The result goes to bench/results/chaos_soak.json. The engine (:func:`run_soak`) is what
tests/integration/test_chaos.py runs with 40 s of load (and each fault once).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("RETUNE_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")
FAULTS = ("worker_kill", "api_restart", "redis_restart", "db_cut")
JOB_PARAMS = {"batch_size": 8, "passage_max_len": 64, "max_steps": 6, "checkpoint_steps": 2, "logging_steps": 1}
JOB_EVAL = {"split": "test", "max_queries": 5, "max_corpus_docs": 60}
QUERIES = ["vitamin D deficiency", "gene expression in cancer", "antibiotic resistance", "immune response"]


@dataclass
class SoakOptions:
    """One soak's shape; the defaults are the documented 10-minute run."""

    workdir: Path
    dataset_zip: bytes
    seconds: float = 600.0
    seed: int = 0
    clients: int = 4
    fault_gap: tuple[float, float] = (15.0, 45.0)  # seconds between one fault's recovery and the next
    db_cut: tuple[float, float] = (2.0, 6.0)
    jobs_in_flight: int = 3
    cancel_fraction: float = 0.15
    job_params: dict[str, int] = field(default_factory=lambda: dict(JOB_PARAMS))
    settle_seconds: float = 600.0


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Group:
    """A child process in its own process group, so that a kill takes its children (celery's pool) too."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logs: Path) -> None:
        self.name, self.argv, self.env, self.logs = name, argv, env, logs
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = (self.logs / f"{self.name}-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(
            self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


class Database:
    """A fresh database on the machine's PostgreSQL, reached through a TCP proxy that can be cut."""

    def __init__(self) -> None:
        import psycopg

        from tests.integration.tcp_proxy import TcpProxy

        self.name = f"retune_chaos_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        host, port = PG_ADMIN_URL.rsplit("@", 1)[1].split("/", 1)[0].split(":")
        self.proxy = TcpProxy(host, int(port))
        self.proxy.start()
        base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
        self.url = f"{base.replace(f'{host}:{port}', f'127.0.0.1:{self.proxy.port}')}/{self.name}"
        self.direct_url = f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{self.name}"

    def drop(self) -> None:
        import psycopg

        self.proxy.stop()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


class Cluster:
    """Redis, PostgreSQL (behind the proxy), the API, one worker and one beat, each restartable."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir, self.port, self.redis_port = workdir, free_port(), free_port()
        self.key = "rt_chaos_admin_" + uuid.uuid4().hex
        self.db = Database()
        self.env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "RETUNE_DATA_DIR": str(workdir / "data"),
            "RETUNE_DATABASE_URL": self.db.url,
            "RETUNE_BROKER_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "RETUNE_QUEUE": f"retune-chaos-{uuid.uuid4().hex[:8]}",
            "RETUNE_PORT": str(self.port),
            "RETUNE_BOOTSTRAP_KEY": self.key,
            "RETUNE_WORKER_CONCURRENCY": "2",
            "RETUNE_JOB_STALE_SECONDS": "15",
            "RETUNE_RECOVERY_INTERVAL_SECONDS": "3",
            "RETUNE_REDISPATCH_SECONDS": "20",  # a message lost with Redis is sent again within the soak
        }
        app = [sys.executable, "-m", "app.cli"]
        redis = ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(workdir)]  # fmt: skip
        self.redis = Group("redis", redis, self.env, workdir)
        self.api = Group("api", [*app, "serve", "--no-worker"], self.env, workdir)
        self.worker = Group("worker", [*app, "worker"], self.env, workdir)
        self.beat = Group("beat", [*app, "beat"], self.env, workdir)
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout, headers={"Authorization": f"Bearer {self.key}"})

    def start(self) -> None:
        self.redis.start()
        self.api.start()
        self.wait_healthy(lambda h: True)  # the API migrated the database before workers start
        self.worker.start()
        self.beat.start()
        self.wait_healthy(lambda h: h["status"] == "ok")

    def wait_healthy(self, done: Any, timeout: float = 180.0) -> dict:
        """The /health body once it answers 200 and ``done(body)``; RuntimeError past ``timeout``."""
        deadline = time.monotonic() + timeout
        with self.client(timeout=10) as client:
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    answer = client.get("/health")
                    if answer.status_code == 200 and done(answer.json()):
                        return answer.json()
                time.sleep(0.5)
        raise RuntimeError(f"not healthy within {timeout:.0f} s; logs in {self.workdir}")

    def stop(self) -> None:
        for group in (self.beat, self.worker, self.api, self.redis):
            group.stop(timeout=10)
        self.db.drop()


@dataclass
class Window:
    kind: str
    start: float
    end: float = float("inf")
    survived: bool = False


@dataclass
class Record:
    """What the clients and the load loop saw: every search, every write, every fault window."""

    searches: list[tuple[float, float, str]] = field(default_factory=list)  # (start, end, status or error)
    writes: list[tuple[float, float, str, str]] = field(default_factory=list)  # (start, end, what, status)
    faults: list[Window] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def during(self, kinds: tuple[str, ...], start: float, end: float) -> bool:
        """Whether a fault of one of ``kinds`` overlapped [start, end] (its window: injected to recovered)."""
        return any(w.kind in kinds and w.start <= end and start <= w.end for w in self.faults)


class Controller:
    """Injects one fault at a time, at random gaps; the first four are one of each kind, shuffled."""

    def __init__(self, cluster: Cluster, record: Record, options: SoakOptions, dataset_id: str) -> None:
        self.cluster, self.record, self.options, self.dataset_id = cluster, record, options, dataset_id
        self.stop = threading.Event()
        self.rng = random.Random(options.seed)
        self.first = self.rng.sample(FAULTS, len(FAULTS))

    def run(self, deadline: float) -> None:
        """Until ``deadline``, and past it until one fault of each kind was injected."""
        while time.monotonic() < deadline or self.first:
            if self.stop.wait(self.rng.uniform(*self.options.fault_gap)):
                return
            kind = self.first.pop(0) if self.first else self.rng.choice(FAULTS)
            window = Window(kind, time.monotonic())
            with self.record.lock:
                self.record.faults.append(window)
            try:
                getattr(self, kind)()
                window.survived = True
            except RuntimeError as exc:
                print(f"fault {kind} not survived: {exc}", flush=True)
            window.end = time.monotonic()
            print(f"[{window.end:.0f}] {kind} ({window.end - window.start:.1f} s to recover)", flush=True)

    def _write_during(self, kind: str) -> None:
        """One index build asked for while the fault is on: a client's write does not wait for a quiet moment."""
        body = {"dataset_id": self.dataset_id, "model_id": "all-MiniLM-L6-v2"}
        start = time.monotonic()
        with self.cluster.client() as client:
            status, _ = _outcome(lambda: client.post("/indexes", json=body))
        with self.record.lock:
            self.record.writes.append((start, time.monotonic(), f"create_index during {kind}", status))

    def worker_kill(self) -> None:
        before = {w["name"] for w in self.cluster.wait_healthy(lambda h: True)["workers"]}
        self.cluster.worker.stop(signal.SIGKILL)
        self._write_during("worker_kill")
        time.sleep(1.0)  # a process manager's restart delay
        self.cluster.worker.start()
        self.cluster.wait_healthy(lambda h: any(w["name"] not in before for w in h["workers"]))

    def api_restart(self) -> None:
        self.cluster.api.stop(signal.SIGTERM)
        self.cluster.api.start()
        self.cluster.wait_healthy(lambda h: True)

    def redis_restart(self) -> None:
        self.cluster.redis.stop(signal.SIGTERM)
        self._write_during("redis_restart")
        time.sleep(self.rng.uniform(0.5, 2.0))
        self.cluster.redis.start()
        self.cluster.wait_healthy(lambda h: h["broker"] == "ok")

    def db_cut(self) -> None:
        self.cluster.db.proxy.stop()
        self._write_during("db_cut")
        time.sleep(self.rng.uniform(*self.options.db_cut))
        self.cluster.db.proxy.start()
        self.cluster.wait_healthy(lambda h: True)


def _outcome(call: Any) -> tuple[str, Any]:
    """An HTTP call's status as text ("200", "503"), or the transport error's name, and the answer."""
    try:
        answer = call()
    except httpx.TimeoutException:
        return "timeout", None
    except httpx.TransportError:
        return "connection_error", None
    return str(answer.status_code), answer


def searcher(cluster: Cluster, record: Record, index_id: str, seed: int, stop: threading.Event) -> None:
    rng = random.Random(seed)
    with cluster.client() as client:
        while not stop.is_set():
            body = {"index_id": index_id, "query": rng.choice(QUERIES), "top_k": 5}
            start = time.monotonic()
            status, _ = _outcome(lambda b=body: client.post("/search", json=b))
            with record.lock:
                record.searches.append((start, time.monotonic(), status))
            stop.wait(rng.uniform(0.2, 0.6))  # think time: four clients, not four busy loops on two cores


class Load:
    """Tiny embedder jobs (at most ``jobs_in_flight`` unfinished), index builds over their models, and a
    few cancels, every two seconds; what was asked is kept for the checks."""

    def __init__(self, cluster: Cluster, record: Record, options: SoakOptions, dataset_id: str) -> None:
        self.cluster, self.record, self.options, self.dataset_id = cluster, record, options, dataset_id
        self.rng = random.Random(options.seed + 1)
        self.unfinished: set[str] = set()
        self.cancel_asked: set[str] = set()
        self.cancels_due: list[tuple[float, str]] = []
        self.models: list[str] = []
        self.building: set[str] = set()

    def run(self, stop: threading.Event) -> None:
        with self.cluster.client() as client:
            while not stop.wait(2.0):
                self._tick(client)

    def _write(self, what: str, call: Any) -> Any:
        start = time.monotonic()
        status, answer = _outcome(call)
        with self.record.lock:
            self.record.writes.append((start, time.monotonic(), what, status))
        return answer.json() if status.startswith("2") else None

    def _tick(self, client: httpx.Client) -> None:
        self._poll(client)
        now = time.monotonic()
        for due, job_id in [c for c in self.cancels_due if c[0] <= now]:
            self.cancels_due.remove((due, job_id))
            self.cancel_asked.add(job_id)  # asked, even if the answer is lost on the way back
            self._write("cancel", lambda j=job_id: client.post(f"/jobs/{j}/cancel"))
        if len(self.unfinished) < self.options.jobs_in_flight:
            body = {
                "kind": "embedder",
                "dataset_id": self.dataset_id,
                "eval": JOB_EVAL,
                "params": self.options.job_params,
            }
            if job := self._write("create_job", lambda: client.post("/jobs", json=body)):
                self.unfinished.add(job["id"])
                if self.rng.random() < self.options.cancel_fraction:
                    self.cancels_due.append((now + self.rng.uniform(2, 20), job["id"]))
        if self.models and not self.building and self.rng.random() < 0.3:
            body = {"dataset_id": self.dataset_id, "model_id": self.rng.choice(self.models)}
            if index := self._write("create_index", lambda: client.post("/indexes", json=body)):
                self.building.add(index["id"])

    def _poll(self, client: httpx.Client) -> None:
        for job_id in list(self.unfinished):
            status, answer = _outcome(lambda j=job_id: client.get(f"/jobs/{j}"))
            if status == "200" and answer.json()["status"] in {"succeeded", "failed", "cancelled"}:
                self.unfinished.discard(job_id)
                if answer.json()["model_id"]:
                    self.models.append(answer.json()["model_id"])
        for index_id in list(self.building):
            status, answer = _outcome(lambda i=index_id: client.get(f"/indexes/{i}"))
            if status == "200" and answer.json()["status"] != "building":
                self.building.discard(index_id)


def _listed(client: httpx.Client, path: str) -> list[dict]:
    answer = client.get(path, params={"limit": 1000})
    answer.raise_for_status()
    return answer.json()


def settle(cluster: Cluster, timeout: float) -> float | None:
    """Seconds until no job is unfinished and no index is building, or None past ``timeout``."""
    started = time.monotonic()
    with cluster.client() as client:
        while time.monotonic() - started < timeout:
            with contextlib.suppress(httpx.HTTPError):
                jobs, indexes = _listed(client, "/jobs"), _listed(client, "/indexes")
                if all(j["status"] in {"succeeded", "failed", "cancelled"} for j in jobs) and all(
                    i["status"] != "building" for i in indexes
                ):
                    return round(time.monotonic() - started, 1)
            time.sleep(2.0)
    return None


def check_jobs(client: httpx.Client, cancel_asked: set[str], violations: list[str]) -> dict[str, int]:
    """Every job not cancelled on request succeeded, with a loss at each step, in order, each once."""
    jobs = _listed(client, "/jobs")
    for job in jobs:
        if job["status"] == "cancelled" and job["id"] in cancel_asked:
            continue
        if job["status"] != "succeeded":
            violations.append(f"job {job['id']} ended {job['status']}: {job['error'] or job['message']}")
            continue
        points = client.get(f"/jobs/{job['id']}/metrics").json()["points"]
        twice = [k for k, n in Counter((p["step"], p["name"], p["split"]) for p in points).items() if n > 1]
        losses = [p["step"] for p in points if p["name"] == "loss"]
        if twice:
            violations.append(f"job {job['id']}: points recorded twice: {twice}")
        if losses != list(range(1, job["total_steps"] + 1)):
            violations.append(f"job {job['id']}: loss steps {losses}, expected 1..{job['total_steps']}")
    statuses = Counter(j["status"] for j in jobs)
    return {"listed": len(jobs), **statuses, "resumed": sum(j["attempts"] > 1 for j in jobs)}


def duplicate_points(database_url: str) -> list[tuple]:
    """Straight from SQL: any (job, step, name, split) stored twice (the API could hide it)."""
    import psycopg

    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "SELECT job_id, step, name, split, count(*) FROM metric_points "
            "GROUP BY job_id, step, name, split HAVING count(*) > 1"
        ).fetchall()


def check_artifacts(client: httpx.Client, violations: list[str]) -> dict[str, int]:
    """Every listed model loads (embeds, or reranks) and every listed index is ready and answers."""
    models = _listed(client, "/models")
    for model in models:
        if model["kind"] == "embedder":
            answer = client.post("/v1/embeddings", json={"model": model["id"], "input": "probe"})
        else:
            answer = client.post("/v2/rerank", json={"model": model["id"], "query": "q", "documents": ["d"]})
        if answer.status_code != 200:
            violations.append(f"model {model['id']} does not load: {answer.status_code} {answer.text[:200]}")
    indexes = _listed(client, "/indexes")
    for index in indexes:
        answer = client.post("/search", json={"index_id": index["id"], "query": QUERIES[0], "top_k": 3})
        if index["status"] != "ready" or answer.status_code != 200:
            violations.append(f"index {index['id']} {index['status']}: search {answer.status_code} {index['error']}")
    return {
        "models": len(models),
        "indexes": len(indexes),
        "indexes_ready": sum(i["status"] == "ready" for i in indexes),
    }


def classify_searches(record: Record, violations: list[str]) -> dict[str, int]:
    """200; 503 while the database was cut; no HTTP answer while the API restarted; anything else is a
    violation. A fault's window runs from its injection until /health showed it recovered."""
    counts: Counter[str] = Counter()
    for start, end, status in record.searches:
        if status == "200":
            counts["200"] += 1
        elif status == "503" and record.during(("db_cut",), start, end):
            counts["503_while_db_cut"] += 1
        elif status in {"connection_error", "timeout"} and record.during(("api_restart",), start, end):
            counts["no_answer_while_api_restarting"] += 1
        else:
            counts["other_5xx" if status.startswith("5") else f"unexpected_{status}"] += 1
            violations.append(f"search answered {status} at {start:.1f}-{end:.1f} with no fault to explain it")
    return {"total": len(record.searches), "200": 0, "503_while_db_cut": 0, "other_5xx": 0, **counts}


def classify_writes(record: Record, violations: list[str]) -> dict[str, int]:
    """The writes (the load loop's and those sent during faults): a 503 is fine while the database was cut
    (the client is told to retry), no answer while the API restarted; another 5xx, or either of those
    unexplained, is not. Redis down is no reason for a 503: the job or build waits in SQL for the sweep."""
    counts: Counter[str] = Counter()
    for start, end, what, status in record.writes:
        counts[f"{what} {status}"] += 1
        explained = (status == "503" and record.during(("db_cut",), start, end)) or (
            status in {"connection_error", "timeout"} and record.during(("api_restart",), start, end)
        )
        if (status.startswith("5") or status in {"connection_error", "timeout"}) and not explained:
            violations.append(f"{what} answered {status} at {start:.1f}-{end:.1f} with no fault to explain it")
    return dict(sorted(counts.items()))


def _fault_counts(windows: list[Window]) -> dict[str, Any]:
    """Injected, survived (recovered, as /health showed), and the longest recovery in seconds."""
    return {
        "injected": len(windows),
        "survived": sum(w.survived for w in windows),
        "max_recovery_seconds": round(max((w.end - w.start for w in windows), default=0.0), 1),
    }


def _prepare(cluster: Cluster, dataset_zip: bytes) -> tuple[str, str]:
    """The dataset every job trains on, and the index the clients search (the bundled model over it)."""
    with cluster.client(timeout=120) as client:
        dataset = client.post("/datasets", files={"file": ("scifact-slice.zip", dataset_zip)})
        dataset.raise_for_status()
        index = client.post("/indexes", json={"dataset_id": dataset.json()["id"], "model_id": "all-MiniLM-L6-v2"})
        index.raise_for_status()
        deadline = time.monotonic() + 300
        while (built := client.get(f"/indexes/{index.json()['id']}").json())["status"] == "building":
            if time.monotonic() > deadline:
                raise RuntimeError("the first index was not built within 300 s")
            time.sleep(1.0)
        if built["status"] != "ready":
            raise RuntimeError(f"the first index failed: {built['error']}")
    return dataset.json()["id"], index.json()["id"]


def _under_load(cluster: Cluster, options: SoakOptions, record: Record, dataset_id: str, index_id: str) -> Load:
    """The clients, the load loop and the controller for ``options.seconds`` (longer until each fault
    kind was injected once); every fault recovered when this returns."""
    stop = threading.Event()
    load = Load(cluster, record, options, dataset_id)
    threads = [
        threading.Thread(target=searcher, args=(cluster, record, index_id, options.seed * 100 + c, stop))
        for c in range(options.clients)
    ]
    threads.append(threading.Thread(target=load.run, args=(stop,)))
    for thread in threads:
        thread.start()
    controller = Controller(cluster, record, options, dataset_id)
    try:
        controller.run(deadline=time.monotonic() + options.seconds)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    return load


def run_soak(options: SoakOptions) -> dict[str, Any]:
    """The whole soak: start, load with faults, settle, check. The report's ``violations`` is empty
    when every invariant held."""
    cluster = Cluster(options.workdir)
    record = Record()
    violations: list[str] = []
    try:
        cluster.start()
        dataset_id, index_id = _prepare(cluster, options.dataset_zip)
        load = _under_load(cluster, options, record, dataset_id, index_id)
        settled = settle(cluster, options.settle_seconds)
        if settled is None:
            violations.append(f"jobs or index builds still unfinished {options.settle_seconds:.0f} s after the load")
        with cluster.client(timeout=120) as client:
            jobs = check_jobs(client, load.cancel_asked, violations)
            artifacts = check_artifacts(client, violations)
        violations += [f"metric point stored twice: {row}" for row in duplicate_points(cluster.db.direct_url)]
    finally:
        cluster.stop()
    faults = {kind: _fault_counts([w for w in record.faults if w.kind == kind]) for kind in FAULTS}
    violations += [f"{w.kind} at {w.start:.1f} not recovered" for w in record.faults if not w.survived]
    searches = classify_searches(record, violations)
    lost = sum(1 for v in violations if v.startswith(("job ", "index ")))
    return {
        "seconds": options.seconds,
        "seed": options.seed,
        "clients": options.clients,
        "faults": faults,
        "jobs": jobs | {"cancel_asked": len(load.cancel_asked)},
        "artifacts": artifacts,
        "searches": searches,
        "writes": classify_writes(record, violations),
        "settled_seconds": settled,
        "lost": lost,
        "violations": violations,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the load and faults run")
    parser.add_argument("--seed", type=int, default=0, help="the fault schedule's and the load's random seed")
    parser.add_argument("--clients", type=int, default=4, help="search client threads")
    parser.add_argument("--workdir", type=Path, default=None, help="logs and data (default: a temporary folder)")
    parser.add_argument("--name", default="chaos_soak", help="bench/results/NAME.json")
    args = parser.parse_args()

    import tempfile

    from bench.common import write_results
    from tests.conftest import scifact_slice_zip

    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        workdir = args.workdir or Path(tmp)
        options = SoakOptions(workdir, scifact_slice_zip(), args.minutes * 60, args.seed, args.clients)
        started = time.monotonic()
        report = run_soak(options)
        report["wall_seconds"] = round(time.monotonic() - started, 1)
    write_results(args.name, report)
    if report["violations"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
