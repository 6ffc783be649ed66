"""Exit codes of `retune jobs watch` / `jobs create --watch`, so a script can tell outcomes apart."""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class ExitCode(IntEnum):
    OK = 0  # the job succeeded and its model beats the base model (or a job that trains nothing succeeded)
    ERROR = 1  # the API refused the request, or the service could not be reached
    USAGE = 2  # bad command-line arguments (click's own code)
    JOB_FAILED = 3
    JOB_CANCELLED = 4
    NOT_BETTER = 5  # the job succeeded but its model does not beat the base model


def is_better(job: dict[str, Any]) -> bool:
    """``verdict.result == "better"`` where the service reports a verdict, else ``better_than_base``."""
    verdict = job.get("verdict")
    if isinstance(verdict, dict):
        verdict = verdict.get("result")
    if verdict is not None:
        return verdict == "better"
    return job.get("better_than_base") is True


def job_exit_code(job: dict[str, Any]) -> ExitCode:
    status = job.get("status")
    if status == "failed":
        return ExitCode.JOB_FAILED
    if status == "cancelled":
        return ExitCode.JOB_CANCELLED
    if status != "succeeded":
        return ExitCode.ERROR
    if job.get("kind") in ("mine_negatives", "serving_backend"):  # no new model, nothing to compare with a base
        return ExitCode.OK
    return ExitCode.OK if is_better(job) else ExitCode.NOT_BETTER
