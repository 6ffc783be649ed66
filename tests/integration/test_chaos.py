"""The chaos soak's short version (bench/chaos_soak.py for about a minute): a worker SIGKILLed, the API
restarted, Redis restarted and PostgreSQL cut, each at least once, under searches and tiny jobs; then
no job lost, no metric point missing or twice, every model and index loadable, no unexplained 5xx."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench.chaos_soak import FAULTS, SoakOptions, run_soak
from tests.conftest import missing, scifact_slice_zip


@pytest.mark.integration
@pytest.mark.slow
def test_chaos_soak_short_loses_nothing(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        missing("redis-server is not installed (the soak restarts a Redis of its own)")
    options = SoakOptions(
        tmp_path, scifact_slice_zip(n_train=24, n_test=10, n_distractors=40), seconds=60, seed=1,
        fault_gap=(3.0, 8.0), db_cut=(2.0, 4.0), jobs_in_flight=2, cancel_fraction=0.3, settle_seconds=300,
    )  # fmt: skip
    report = run_soak(options)
    print(json.dumps(report, indent=2))  # seen with -s: what was injected and answered

    assert report["violations"] == [], report
    assert report["lost"] == 0
    for kind in FAULTS:
        assert report["faults"][kind]["injected"] >= 1 and report["faults"][kind]["survived"] >= 1, report["faults"]
    assert report["jobs"].get("succeeded", 0) >= 1, report["jobs"]
    assert report["searches"]["200"] > 0 and report["searches"]["other_5xx"] == 0, report["searches"]
    assert report["artifacts"]["indexes_ready"] == report["artifacts"]["indexes"] >= 1
