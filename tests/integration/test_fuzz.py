"""A short schemathesis run against the live service's own OpenAPI schema (the long one: docs/security.md).

Every check schemathesis has: no 5xx, responses match their schemas, status codes are documented,
operations refuse requests without a key, ... with the exceptions in schemathesis.toml.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import ADMIN_KEY, ROOT, Service


@pytest.mark.integration
def test_schemathesis_short_run(service: Service, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("st")), "--config-file", str(ROOT / "schemathesis.toml"),
            "run", f"{service.url}/openapi.json", "-H", f"Authorization: Bearer {ADMIN_KEY}",
            "--max-examples", "15", "--seed", "1", "--no-color", "--request-timeout", "60",
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    summary = result.stdout[-3000:]
    assert result.returncode == 0, summary
    assert " passed" in summary and "failures" not in summary.split("SUMMARY")[-1].lower(), summary
