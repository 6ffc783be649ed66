"""Held-out query splits. Evaluation never sees a training query (by id or by text)."""

from __future__ import annotations

import random
from collections.abc import Iterable


def holdout_split(query_ids: Iterable[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministically set aside ``fraction`` of the queries: returns ``(train_ids, heldout_ids)``.

    Sorting first makes the split independent of file order; at least one query lands on each side.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError("holdout_fraction must be between 0 and 1 (exclusive)")
    ids = sorted(set(query_ids))
    if len(ids) < 2:
        raise ValueError("at least two queries are needed to hold some out")
    random.Random(seed).shuffle(ids)
    n_heldout = min(len(ids) - 1, max(1, round(len(ids) * fraction)))
    return sorted(ids[n_heldout:]), sorted(ids[:n_heldout])
