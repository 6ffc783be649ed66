"""``python -m app.cli serve``: migrate, start a Celery worker, serve the API. One command, one code path.

``serve --no-worker`` is the API alone (production, where workers run as their own processes);
``worker`` is a worker alone; ``migrate`` only migrates.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys

from app.core.config import get_settings


def worker_command(concurrency: int) -> list[str]:
    """A Celery worker with ``concurrency`` processes (prefork), never threads: a training job holds
    process-wide state (torch's RNG and thread count, accelerate's AcceleratorState) that two jobs
    in one process would overwrite under each other."""
    settings = get_settings()
    return [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
        "-Q", settings.queue, "--pool", "prefork", "-c", str(concurrency),
        "-B", "--schedule", str(settings.data_dir / f"celerybeat-{settings.queue}"),
        "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip


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
    worker = (
        subprocess.Popen(worker_command(settings.worker_concurrency), preexec_fn=_die_with_parent)
        if with_worker
        else None
    )
    try:
        uvicorn.run("app.main:app", host=settings.host, port=settings.port, log_level="info")
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
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
    serve_parser = sub.add_parser("serve", help="migrate, start a worker and the API")
    serve_parser.add_argument("--no-worker", action="store_true", help="API only")
    sub.add_parser("worker", help="a Celery worker only")
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
    return serve(with_worker=not args.no_worker)


if __name__ == "__main__":
    raise SystemExit(main())
