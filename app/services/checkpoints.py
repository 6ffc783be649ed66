"""A job's evaluated checkpoints, read from its metric points: each validation evaluation's step and
figures, and which one is the chosen model.

Derived rather than stored: the points are already the record of every evaluation. The chosen step
of a finished job is the one its test queries were evaluated at (test is touched only for the base,
at step 0, and for the chosen model); while it runs, the best so far by ``select_metric`` on
validation, the first of equal ones, as the trainer keeps it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from app.services.jobs import get_job, job_metrics
from app.training.data import TEST_ROLE, VALIDATION_ROLE


@dataclass
class Checkpoint:
    step: int
    epoch: float
    metrics: dict[str, float] = field(default_factory=dict)  # the order search serves (fused for a fusing reranker)
    chosen: bool = False


def _role(split: str) -> str:
    return split.removesuffix(":contaminated")


def job_checkpoints(session: Session, job_id: str) -> tuple[int | None, list[Checkpoint]]:
    job = get_job(session, job_id)
    points = job_metrics(session, job_id)
    served = f"{VALIDATION_ROLE}/fused" if any(_role(p.split) == f"{VALIDATION_ROLE}/fused" for p in points) else None
    by_step: dict[int, Checkpoint] = {}
    for p in points:
        if _role(p.split) == (served or VALIDATION_ROLE):
            by_step.setdefault(p.step, Checkpoint(p.step, p.epoch)).metrics[p.name] = p.value
    checkpoints = [by_step[s] for s in sorted(by_step)]
    tested = [p.step for p in points if _role(p.split) == TEST_ROLE and p.step > 0]
    metric = (job.params or {}).get("select_metric", "ndcg@10")
    candidates = [c for c in checkpoints if c.step > 0 and metric in c.metrics]
    chosen = tested[-1] if tested else (max(candidates, key=lambda c: (c.metrics[metric], -c.step)).step
                                        if candidates else None)  # fmt: skip
    for checkpoint in checkpoints:
        checkpoint.chosen = checkpoint.step == chosen
    return chosen, checkpoints
