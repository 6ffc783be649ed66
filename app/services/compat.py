"""Embedding and reranking for the OpenAI-, Cohere- and TEI-compatible routes, with any model a job made.

Texts are embedded exactly as in training and in ``/search``: the model's recorded ``EmbedderConfig``
(query instruction, normalisation, query length) is applied, the query instruction only to queries.
Models come from :mod:`app.services.serving`, the cache ``/search`` uses, so nothing is loaded twice, and
their forward passes go through the model's batcher, shared with ``/search`` and every other request.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.errors import InputTooLargeError, InvalidRequestError
from app.db.tables import Model
from app.retrieval.embedder import EmbedderConfig, EncodeKey, batched_encode
from app.retrieval.reranker import batched_logits, sigmoid
from app.services import serving
from app.services.model_refs import resolve_model
from app.services.models import model_calibration

QUERY, DOCUMENT = "query", "document"


@dataclass
class Embeddings:
    model: Model
    vectors: np.ndarray  # (n, dim) float32
    prompt_tokens: int


@dataclass
class Ranked:
    index: int
    score: float  # calibrated probability, or sigmoid(logit): see RerankOutcome.score_type
    logit: float


@dataclass
class RerankOutcome:
    model: Model
    results: list[Ranked]  # best first
    score_type: str  # "calibrated" | "sigmoid"


def input_type_for_prompt(prompt_name: str | None) -> str:
    """TEI's ``prompt_name``: Retune models save two prompts, ``query`` and ``document`` (as in training)."""
    if prompt_name in (None, DOCUMENT, "passage"):
        return DOCUMENT
    if prompt_name == QUERY:
        return QUERY
    raise InvalidRequestError(f"prompt_name '{prompt_name}' is unknown: use 'query' or 'document'")


def pooling_mode(settings: Settings, row: Model) -> str:
    """The embedder's pooling ("mean", "cls", ...), as TEI's /info reports it."""
    model = serving.embedder(settings, row, EmbedderConfig.from_dict(row.config).max_seq_length)
    mode = next((getattr(m, "pooling_mode", None) for m in model if hasattr(m, "pooling_mode")), None)
    return mode if isinstance(mode, str) else "mean"


def check_texts(settings: Settings, texts: list[str], limit: int, what: str) -> None:
    """The bounds every compat route shares: at least one text, at most ``limit``, none empty or over-long."""
    if not texts:
        raise InvalidRequestError(f"{what} is empty: give at least one text")
    if len(texts) > limit:
        raise InputTooLargeError(f"{what} has {len(texts)} texts; at most {limit} per request")
    for i, text in enumerate(texts):
        if not text.strip():
            raise InvalidRequestError(f"{what}[{i}] is empty (or only whitespace)")
        if len(text) > settings.max_text_chars:
            raise InputTooLargeError(
                f"{what}[{i}] has {len(text)} characters; at most {settings.max_text_chars} "
                "(shorter texts are truncated to the model's maximum length in tokens)"
            )


def embed(
    session: Session,
    settings: Settings,
    model_ref: str,
    texts: list[str],
    input_type: str = DOCUMENT,
    dimensions: int | None = None,
    normalize: bool | None = None,
    max_tokens: int | None = None,
) -> Embeddings:
    """``max_tokens``: refuse (413) a text longer than this many tokens instead of truncating it."""
    check_texts(settings, texts, settings.max_embed_inputs, "input")
    row = resolve_model(session, model_ref, "embedder")
    config = EmbedderConfig.from_dict(row.config)
    served = serving.served_embedder(settings, row, config.max_seq_length)
    model = served.model
    if input_type == QUERY:
        formatted = [config.format_query(t) for t in texts]
        key = EncodeKey(QUERY, config.normalize if normalize is None else normalize, config.query_max_seq_length)
    else:
        formatted = [config.format_passage(t) for t in texts]
        key = EncodeKey(DOCUMENT, config.normalize if normalize is None else normalize)
    with served.tokens.use() as tokenizer:
        counts = token_counts(tokenizer, formatted)
    if max_tokens is not None and (longest := max(counts)) > max_tokens:
        raise InputTooLargeError(f"an input has {longest} tokens; at most {max_tokens} without truncation")
    read_cap = (config.query_max_seq_length if input_type == QUERY else None) or model.max_seq_length
    lengths = [min(c, read_cap or c) for c in counts]
    vectors = batched_encode(served.batcher, model, served.tokens, formatted, key, lengths)
    vectors = shorten(vectors, dimensions, key.normalize)
    cap = model.max_seq_length or max(counts)
    return Embeddings(row, vectors, sum(min(c, cap) for c in counts))


def shorten(vectors: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
    """OpenAI's ``dimensions``: the first ``dimensions`` components (Matryoshka), re-normalised."""
    if dimensions is None or dimensions == vectors.shape[1]:
        return vectors
    if dimensions > vectors.shape[1]:
        raise InvalidRequestError(f"dimensions is {dimensions}; this model's embeddings have {vectors.shape[1]}")
    cut = np.ascontiguousarray(vectors[:, :dimensions])
    if normalize:
        cut /= np.maximum(np.linalg.norm(cut, axis=1, keepdims=True), 1e-12)
    return cut


def token_counts(tokenizer, texts: list[str]) -> list[int]:
    """Tokens per text with the model's own tokenizer (special tokens included), before truncation."""
    encoded = tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    return [len(ids) for ids in encoded]


def max_input_tokens(settings: Settings, row: Model) -> int:
    """The longest input (in tokens) the model reads; longer ones are truncated."""
    if row.kind == "reranker":
        return int(serving.reranker(settings, row).max_length or 512)
    config = EmbedderConfig.from_dict(row.config)
    return int(serving.embedder(settings, row, config.max_seq_length).max_seq_length or 512)


def rerank(
    session: Session,
    settings: Settings,
    model_ref: str,
    query: str,
    documents: list[str],
    top_n: int | None = None,
    max_tokens_per_doc: int | None = None,
) -> RerankOutcome:
    """Documents scored against ``query`` by a trained cross-encoder (never an untrained head), best first."""
    check_texts(settings, [query], 1, "query")
    check_texts(settings, documents, settings.max_rerank_documents, "documents")
    row = resolve_model(session, model_ref, "reranker")
    served = serving.served_reranker(settings, row)
    if max_tokens_per_doc is not None:
        with served.tokens.use() as tokenizer:
            documents = [_first_tokens(tokenizer, d, max_tokens_per_doc) for d in documents]
    logits = batched_logits(served.batcher, served.model, served.tokens, [(query, d) for d in documents])
    scores, score_type = relevance_scores(settings, row, logits)
    order = sorted(range(len(documents)), key=lambda i: -scores[i])
    ranked = [Ranked(i, float(scores[i]), float(logits[i])) for i in order]
    return RerankOutcome(row, ranked[:top_n] if top_n else ranked, score_type)


def relevance_scores(settings: Settings, row: Model, logits: np.ndarray) -> tuple[list[float], str]:
    """The model's calibrated P(relevant) (its ``reranker_only`` map: a rerank call carries no first-stage
    scores), or the sigmoid of the logit for a model without one; and which of the two it is."""
    calibration, _ = model_calibration(settings, row)
    if calibration is None or calibration.kind != "reranker" or calibration.gap(None):
        return [sigmoid(float(x)) for x in logits], "sigmoid"
    probabilities = calibration.predict(np.zeros(len(logits)), np.asarray(logits, dtype=np.float64))
    return [float(p) for p in probabilities], "calibrated"


def _first_tokens(tokenizer, text: str, limit: int) -> str:
    """Cohere's ``max_tokens_per_doc``: the text cut to its first ``limit`` tokens of the model's tokenizer."""
    ids = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    return text if len(ids) <= limit else tokenizer.decode(ids[:limit])
