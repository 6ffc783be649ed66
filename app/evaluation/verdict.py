"""Base vs chosen model on the test queries: the paired change with a bootstrap interval, and a verdict.

A mean that went up proves little on a few hundred queries: two systems scored on the same queries
are compared query by query, and the 95% interval of the mean change says whether it is larger than
the noise of that query set. The verdict reads only the interval:
``better`` (all of it above 0), ``worse`` (all of it below 0), else ``not_better``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

PerQuery = Mapping[str, Mapping[str, float]]
BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95

VerdictResult = Literal["better", "not_better", "worse"]


@dataclass(frozen=True)
class Verdict:
    metric: str
    base: float
    final: float
    delta: float
    ci_low: float
    ci_high: float
    queries: int
    result: VerdictResult
    split: str = "test"
    contaminated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def sentence(self) -> str:
        return (
            f"{self.split} {self.metric}: base {self.base:.4f} -> {self.final:.4f}, change {self.delta:+.4f} "
            f"(95% interval {self.ci_low:+.4f}..{self.ci_high:+.4f}, {self.queries} queries): {self.result}"
        )


def paired_deltas(base: PerQuery, final: PerQuery, metric: str) -> np.ndarray:
    missing = set(base) ^ set(final)
    if missing:
        raise ValueError(f"base and final were scored on different queries ({len(missing)} differ)")
    return np.array([final[q][metric] - base[q][metric] for q in sorted(base)], dtype=np.float64)


def bootstrap_interval(deltas: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap of the mean over queries (scipy's), resampling queries: the pairing is kept."""
    if len(deltas) < 2 or np.allclose(deltas, deltas[0]):
        value = float(deltas.mean()) if len(deltas) else 0.0
        return value, value  # no spread to resample
    from scipy.stats import bootstrap

    result = bootstrap(
        (deltas,),
        np.mean,
        n_resamples=BOOTSTRAP_RESAMPLES,
        confidence_level=CONFIDENCE,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def judge(
    base: PerQuery, final: PerQuery, metric: str, split: str = "test", contaminated: bool = False, seed: int = 0
) -> Verdict:
    deltas = paired_deltas(base, final, metric)
    low, high = bootstrap_interval(deltas, seed)
    result: VerdictResult = "better" if low > 0 else "worse" if high < 0 else "not_better"
    queries = sorted(base)
    return Verdict(
        metric=metric,
        base=float(np.mean([base[q][metric] for q in queries])),
        final=float(np.mean([final[q][metric] for q in queries])),
        delta=float(deltas.mean()),
        ci_low=low,
        ci_high=high,
        queries=len(queries),
        result=result,
        split=split,
        contaminated=contaminated,
    )
