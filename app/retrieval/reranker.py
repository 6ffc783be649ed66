"""Cross-encoder rerankers, and the guard against serving a head that was never trained.

Loading an embedding checkpoint as a sequence classifier makes transformers create a fresh,
random ``classifier`` layer: scores are then noise and differ from process to process. The guard
asks transformers which weights were missing from (or did not fit) the checkpoint and refuses
such a model unless the caller forces it.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import TYPE_CHECKING

import numpy as np

from app.core.errors import UntrainedHeadError
from app.retrieval.batcher import Batcher, BatchLimits
from app.retrieval.embedder import PrivateTokenizer, padding_kwargs, token_lengths

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder

# The sequence-classification head of BERT-like bodies, the pooler (dense + tanh over [CLS]) and the
# classifier: matches their module names and their parameter names.
HEAD_PATTERN = r"\.(pooler|classifier)(\.|$)"


def untrained_head_weights(path: str) -> list[str]:
    """Names of the weights transformers had to initialise randomly when loading ``path`` with one logit."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        _, info = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, output_loading_info=True, trust_remote_code=False, use_safetensors=True
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = set(info.get("missing_keys") or ())
    missing |= {str(k[0]) if isinstance(k, tuple) else str(k) for k in info.get("mismatched_keys") or ()}
    return sorted(missing)


def ensure_trained_head(path: str, name: str) -> None:
    missing = untrained_head_weights(path)
    if missing:
        raise UntrainedHeadError(
            f"model '{name}' has a classification head that was never trained "
            f"(randomly initialised: {', '.join(missing)}); its scores would be random. "
            "Train a reranker with a 'reranker' job, or pass force=true to use it anyway."
        )


def load_reranker(path: str, device: str, max_length: int | None = None) -> CrossEncoder:
    import torch
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(
        path,
        num_labels=1,
        device=device,
        activation_fn=torch.nn.Identity(),
        trust_remote_code=False,
        model_kwargs={"use_safetensors": True},  # a pickled checkpoint can run code when loaded
    )
    if max_length:
        model.max_seq_length = max_length
    model.eval()
    return model


# Pairs per forward pass. On a CPU small batches are faster, fp32 and int8 alike: a batch's activations
# stay in cache (bench.rerank_batch; the figures are in docs/benchmarks.md, "Rerank batch size").
# A GPU wants large batches: sentence-transformers' default is kept there.
CPU_RERANK_BATCH_SIZE = 8
GPU_RERANK_BATCH_SIZE = 32


def default_rerank_batch_size(device: str) -> int:
    return CPU_RERANK_BATCH_SIZE if device == "cpu" else GPU_RERANK_BATCH_SIZE


def rerank_logits(model: CrossEncoder, query: str, passages: list[str], batch_size: int | None = None) -> np.ndarray:
    """Raw logits for (query, passage) pairs; CrossEncoder.predict sorts by length to limit padding.

    ``batch_size``: pairs per forward pass; default: the best measured for the model's device type.
    """
    return pair_logits(model, [(query, p) for p in passages], batch_size)


def pair_logits(
    model: CrossEncoder, pairs: list[tuple[str, str]], batch_size: int | None = None, pad_multiple: int | None = None
) -> np.ndarray:
    """Raw logits for (query, passage) pairs; ``pad_multiple``: pad each batch to a multiple of this many tokens."""
    if not pairs:
        return np.zeros(0, dtype=np.float32)
    scores = model.predict(
        pairs,
        batch_size=batch_size or default_rerank_batch_size(model.device.type),
        show_progress_bar=False,
        convert_to_numpy=True,
        **padding_kwargs(pad_multiple),
    )
    return np.asarray(scores, dtype=np.float32).reshape(-1)


def rerank_batcher(model: CrossEncoder, name: str, limits: BatchLimits) -> Batcher:
    """A batcher whose passes are :func:`pair_logits` calls of one batch each (pairs of any queries)."""

    def run(_key: Hashable, pairs: list[tuple[str, str]]) -> np.ndarray:
        return pair_logits(model, pairs, len(pairs), limits.pad_multiple)

    return Batcher(name, run, limits)


def batched_logits(
    batcher: Batcher, model: CrossEncoder, tokens: PrivateTokenizer, pairs: list[tuple[str, str]]
) -> np.ndarray:
    """:func:`pair_logits` through ``batcher``: the pairs share passes with other requests' pairs."""
    if not pairs:
        return np.zeros(0, dtype=np.float32)
    with tokens.use() as tokenizer:
        lengths = token_lengths(tokenizer, pairs, model.max_seq_length)
    return batcher.run(None, pairs, lengths).reshape(-1)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))
