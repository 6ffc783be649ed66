"""A short schemathesis run against the live service's own OpenAPI schema (the long one: docs/security.md).

Every check schemathesis has: no 5xx, responses match their schemas, status codes are documented,
operations refuse requests without a key, ... with the exceptions in schemathesis.toml.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import S3Server
from tests.integration.conftest import (
    ADMIN_KEY,
    ROOT,
    drop_pg_database,
    postgres_redis_env,
    s3_env,
    start_service,
    stop_service,
)


@pytest.mark.integration
def test_schemathesis_short_run(tmp_path: Path, s3_server: S3Server) -> None:
    # One backend, the production layout (PostgreSQL + Redis + S3): the HTTP layer fuzzed here is the same
    # code on both; what differs by backend (storage, SQL) is tested on both by the other integration tests.
    # A service of its own: the fuzzer's stateful phase starts real jobs and index builds with any
    # ids it finds, which would load the shared test service for minutes.
    db_name, env = postgres_redis_env()
    proc, service = start_service("postgres-s3", tmp_path, env | s3_env(s3_server))
    try:
        result = subprocess.run(
            [
                str(Path(sys.executable).with_name("st")), "--config-file", str(ROOT / "schemathesis.toml"),
                "run", f"{service.url}/openapi.json", "-H", f"Authorization: Bearer {ADMIN_KEY}",
                "--max-examples", "15", "--seed", "1", "--no-color", "--request-timeout", "60",
            ],
            cwd=tmp_path, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    finally:
        stop_service(proc)
        drop_pg_database(db_name)
    summary = result.stdout[-3000:]
    assert result.returncode == 0, summary
    assert " passed" in summary and "failures" not in summary.split("SUMMARY")[-1].lower(), summary
