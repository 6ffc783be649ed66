"""``python -m app.cli serve``: migrate, start a Celery worker and beat, serve the API. One command, one code path.

``serve`` supervises its worker and its beat: either one that dies is started again (with backoff), so a
killed worker does not leave the API up with nobody to run jobs (docs/deployment.md).
``serve --no-worker`` is the API alone (production, where workers run as their own processes);
``worker`` is a worker alone (queues: RETUNE_WORKER_QUEUES); ``beat`` is the one periodic-sweep sender
of a deployment; ``migrate`` only migrates.
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from app.core.config import get_settings

log = logging.getLogger("retune.supervisor")


def worker_command(concurrency: int) -> list[str]:
    """A Celery worker with ``concurrency`` processes (prefork), never threads: a training job holds
    process-wide state (torch's RNG and thread count, accelerate's AcceleratorState) that two jobs
    in one process would overwrite under each other. No beat inside (``-B``): a deployment runs one
    beat (:func:`beat_command`), however many workers it has."""
    settings = get_settings()
    return [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
        "-Q", ",".join(settings.consumed_queues()), "--pool", "prefork", "-c", str(concurrency),
        "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip


def beat_command() -> list[str]:
    """Celery beat: sends the recovery sweep every RETUNE_RECOVERY_INTERVAL_SECONDS to the cpu queue."""
    settings = get_settings()
    return [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "beat",
        "--schedule", str(settings.data_dir / f"celerybeat-{settings.queue}"), "--loglevel", "INFO",
    ]  # fmt: skip


class Supervisor:
    """Keeps child processes running: one that exits is started again after a backoff (1 s, doubling
    to 30 s; back to 1 s after a minute of running). Written by hand because the embedded mode is one
    command with no process manager (systemd, supervisord) to lean on; production uses its own."""

    MIN_BACKOFF, MAX_BACKOFF, HEALTHY_SECONDS = 1.0, 30.0, 60.0

    def __init__(self, commands: dict[str, Callable[[], list[str]]]) -> None:
        """``commands``: a name and a function giving its command line, called at each (re)start."""
        self.commands = commands
        self.procs: dict[str, subprocess.Popen] = {}
        self._started: dict[str, float] = {}
        self._backoff = dict.fromkeys(commands, self.MIN_BACKOFF)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)

    def _start(self, name: str) -> None:
        self.procs[name] = subprocess.Popen(self.commands[name](), preexec_fn=_die_with_parent)
        self._started[name] = time.monotonic()
        log.warning("supervisor: started %s (pid %d)", name, self.procs[name].pid)

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            for name, proc in list(self.procs.items()):
                code = proc.poll()
                if code is None:
                    continue
                ran = time.monotonic() - self._started[name]
                if ran >= self.HEALTHY_SECONDS:
                    self._backoff[name] = self.MIN_BACKOFF
                delay = self._backoff[name]
                self._backoff[name] = min(self.MAX_BACKOFF, delay * 2)
                log.warning("supervisor: %s (pid %d) exited with %s; restarting in %.0f s", name, proc.pid, code, delay)
                if self._stop.wait(delay):
                    return
                self._start(name)

    def start(self) -> Supervisor:
        for name in self.commands:
            self._start(name)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to each child (a worker finishes its step and hands its task back), then SIGKILL."""
        self._stop.set()
        self._thread.join(timeout=5)
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()


def _die_with_parent() -> None:
    """Linux: the worker gets SIGTERM when `serve` dies, however it dies (uvicorn re-raises SIGTERM
    after its graceful shutdown, so a `finally` in the parent is not enough)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def migrate() -> None:
    """The database to the newest schema; the embedded broker's tables and queue, once."""
    from app.core.queue import prepare_sql_broker
    from app.db.migrate import upgrade_to_head

    settings = get_settings()
    settings.ensure_dirs()
    upgrade_to_head(settings.resolved_database_url)
    prepare_sql_broker(settings)


def serve(with_worker: bool) -> int:
    import uvicorn

    settings = get_settings()
    migrate()
    commands = {"worker": lambda: worker_command(settings.worker_concurrency), "beat": beat_command}
    supervisor = Supervisor(commands).start() if with_worker else None
    try:
        uvicorn.run("app.main:app", host=settings.host, port=settings.port, log_level="info")
    finally:
        if supervisor is not None:
            supervisor.stop()
    return 0


def keys(args: argparse.Namespace) -> int:
    """Admin command for API keys, for when no admin key is at hand (e.g. the first one was lost)."""
    from app.db.session import session_scope
    from app.services import api_keys

    migrate()
    with session_scope() as session:
        if args.keys_command == "create":
            row, key = api_keys.create_key(session, args.name, args.scope)
            print(f"{row.id}\t{row.scope}\t{key}")
        elif args.keys_command == "revoke":
            row = api_keys.revoke_key(session, args.key_id)
            print(f"{row.id}\trevoked {row.revoked_at}")
        else:
            for row in api_keys.list_keys(session):
                state = f"revoked {row.revoked_at}" if row.revoked_at else "active"
                print(f"{row.id}\t{row.prefix}...\t{row.scope}\t{row.name}\t{state}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="retune")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_parser = sub.add_parser("serve", help="migrate, start a supervised worker and beat, and the API")
    serve_parser.add_argument("--no-worker", action="store_true", help="API only")
    sub.add_parser("worker", help="a Celery worker only (queues: RETUNE_WORKER_QUEUES)")
    sub.add_parser("beat", help="the periodic recovery sweep's sender: run exactly one per deployment")
    sub.add_parser("migrate", help="bring the database to the newest schema")
    keys_parser = sub.add_parser("keys", help="create, list or revoke API keys")
    keys_sub = keys_parser.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create")
    create.add_argument("--name", required=True)
    create.add_argument("--scope", choices=["read", "write", "admin"], required=True)
    keys_sub.add_parser("list")
    revoke = keys_sub.add_parser("revoke")
    revoke.add_argument("key_id")
    args = parser.parse_args(argv)
    if args.command == "keys":
        return keys(args)
    if args.command == "migrate":
        migrate()
        return 0
    if args.command == "worker":
        migrate()
        return subprocess.call(worker_command(get_settings().worker_concurrency))
    if args.command == "beat":
        migrate()
        return subprocess.call(beat_command())
    return serve(with_worker=not args.no_worker)


if __name__ == "__main__":
    raise SystemExit(main())
