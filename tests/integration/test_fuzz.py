"""A short schemathesis run against the live service's own OpenAPI schema (the long one: docs/security.md).

Every check schemathesis has: no 5xx, responses match their schemas, status codes are documented,
operations refuse requests without a key, ... with the exceptions in schemathesis.toml.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

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
@pytest.mark.parametrize("backend", ["embedded", "postgres-s3"])
def test_schemathesis_short_run(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    # A service of its own: the fuzzer's stateful phase starts real jobs and index builds with any
    # ids it finds, which would load the shared test service for minutes.
    db_name, env = postgres_redis_env() if backend == "postgres-s3" else (None, {})
    if backend == "postgres-s3":
        env |= s3_env(request.getfixturevalue("s3_server"))
    proc, service = start_service(backend, tmp_path, env)
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
        if db_name:
            drop_pg_database(db_name)
    summary = result.stdout[-3000:]
    assert result.returncode == 0, summary
    assert " passed" in summary and "failures" not in summary.split("SUMMARY")[-1].lower(), summary
