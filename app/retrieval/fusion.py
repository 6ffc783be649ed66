"""Score fusion: order reranked candidates by a mix of the first stage's and the reranker's scores.

Why: a cross-encoder grown from a small bi-encoder body on a few hundred queries learns a ranking
signal of its own that is still weaker than the fine-tuned first stage (docs/benchmarks.md#reranker);
replacing the first stage's order throws its signal away, interpolating keeps both. Interpolating
first-stage and reranker scores is the standard remedy in IR (e.g. Wang et al., "BERT-based dense
retrievers require interpolation with BM25", ICTIR 2021).

The two scores live on different scales (cosine vs logit), so each is min-max normalised over the
query's reranked candidates first. The fused score therefore ranks within one query only; it is no
threshold (a threshold stays on the reranker's sigmoid). Min-max also stretches a near-flat
reranker's noise to the full 0..1 range: the collapse watch (score spread) is what flags such a model.
"""

from __future__ import annotations

import numpy as np


def min_max(scores: np.ndarray) -> np.ndarray:
    """Scores mapped to 0..1 over this list; a list with no spread maps to zeros (it carries no order)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return scores
    low, span = scores.min(), scores.max() - scores.min()
    return (scores - low) / span if span > 0 else np.zeros_like(scores)


def fuse(first_stage: np.ndarray, rerank: np.ndarray, first_stage_weight: float) -> np.ndarray:
    """``w * minmax(first_stage) + (1 - w) * minmax(rerank)``: w = 0 is the reranker's order, 1 the first stage's."""
    if not 0.0 <= first_stage_weight <= 1.0:
        raise ValueError("first_stage_weight must be in [0, 1]")
    if len(first_stage) != len(rerank):
        raise ValueError("first_stage and rerank must score the same candidates")
    return first_stage_weight * min_max(first_stage) + (1.0 - first_stage_weight) * min_max(rerank)
