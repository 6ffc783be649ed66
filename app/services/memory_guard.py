"""Will a job fit in its worker's memory? An estimate of its peak resident memory, and the memory there is.

A job whose estimate can never fit is refused when it is created (422, saying what to lower); one that
fits the worker but not now (other jobs hold the memory) stays queued with a message and is sent
again by the recovery sweep. So a worker never starts a job that the kernel would kill for memory.

Written by hand because neither torch nor transformers estimates a CPU training step's peak
(accelerate's ``estimate-memory`` counts weights and optimizer state, not activations): the estimate
is a linear model fitted to ``bench.train_memory``'s measurements (docs/benchmarks.md, "Training
memory"), scaled by the base model's width x depth.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from app.core.config import Settings
from app.core.errors import JobTooLargeError, RetuneError
from app.services.models import resolve_base_model

log = logging.getLogger(__name__)

GIB = 2**30
# Fitted to bench/results/train_memory.json (MiniLM-L6: hidden 384, 6 layers, batch 32, 256 tokens; the
# figures and the fit are in docs/benchmarks.md, "Training memory").
PROCESS_BYTES = int(1.1 * GIB)  # interpreter, torch, the data, the model, its gradients and Adam state
FUSED_BYTES_PER_TOKEN = 260_000  # kept for backward per token of a pass with gradients, fused attention
ATTENTION_MATRIX_BYTES_PER_TOKEN = 240_000  # more with attention dropout (math path), at 256 tokens
ENCODE_BYTES_PER_TOKEN = 40_000  # a no-grad forward (the evaluations, mining)
ENCODE_BATCH = 64  # encode_texts' batch: the step-0 evaluation, mining
REFERENCE_WIDTH_X_DEPTH = 384 * 6


@dataclass(frozen=True)
class Estimate:
    peak_bytes: int
    detail: str  # which pass sets the peak, in words for the job's message


def model_scale(base_path: str) -> float:
    """Activation memory grows with hidden size x layers; 1.0 for MiniLM-L6 or a config we cannot read."""
    config = Path(base_path) / "config.json"
    try:
        data = json.loads(config.read_text())
        return max(1.0, data["hidden_size"] * data["num_hidden_layers"] / REFERENCE_WIDTH_X_DEPTH)
    except (OSError, ValueError, KeyError, TypeError):
        return 1.0


def train_bytes_per_token(seq: int, attention_dropout: float | None) -> float:
    """With attention dropout torch's attention takes its math path, which keeps each layer's
    (heads x seq) probabilities and their dropout mask per token: that part grows with ``seq``."""
    extra = 0.0 if attention_dropout == 0 else ATTENTION_MATRIX_BYTES_PER_TOKEN * seq / 256
    return FUSED_BYTES_PER_TOKEN + extra


def _training_pass(kind: str, params: dict[str, Any]) -> tuple[int, int, float | None, str]:
    """(texts, tokens per text, attention dropout, words) of the largest forward pass with gradients."""
    if kind == "embedder":
        seq, batch = params["passage_max_len"], params["batch_size"]
        # Uncached, every column of the batch at once (queries counted at full length: an upper bound);
        # cached (GradCache), one mini-batch of one column at a time.
        texts = (
            min(params["mini_batch_size"], batch) if params["cached_loss"] else batch * (1 + params["train_group_size"])
        )
        return texts, seq, params.get("attention_dropout", 0.0), f"{texts} texts x {seq} tokens with gradients"
    queries = params["mini_batch_size"] or (2 if params["batch_size"] % 2 == 0 else 1)
    texts = queries * params["group_size"]
    words = f"{texts} (query, passage) pairs x {params['max_length']} tokens with gradients"
    return texts, params["max_length"], 0.1, words  # a cross-encoder trains with its attention dropout


def estimate_peak(kind: str, params: dict[str, Any], scale: float = 1.0) -> Estimate:
    """Peak resident bytes of a job of ``kind`` with validated ``params`` (see docs/training.md, Memory)."""
    devices = params.get("devices", 1) if kind == "embedder" else 1
    ranks = devices if isinstance(devices, int) else len(devices)
    if ranks > 1:  # one process per device, each with its model, optimiser and batch_size / ranks rows
        one = estimate_peak(kind, params | {"devices": 1, "batch_size": params["batch_size"] // ranks}, scale)
        return Estimate(one.peak_bytes * ranks, f"{ranks} processes, each {one.detail}")
    if kind not in ("embedder", "reranker"):
        seq = params.get("passage_max_len") or 256
        encode = int(ENCODE_BYTES_PER_TOKEN * ENCODE_BATCH * seq * scale)
        return Estimate(int(PROCESS_BYTES * scale) + encode, f"encoding {ENCODE_BATCH} texts x {seq} tokens")
    texts, seq, dropout, words = _training_pass(kind, params)
    train = train_bytes_per_token(seq, dropout) * texts * seq * scale
    encode = ENCODE_BYTES_PER_TOKEN * ENCODE_BATCH * seq * scale
    return Estimate(int(PROCESS_BYTES * scale + max(train, encode)), words)


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _meminfo(key: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def memory_capacity(settings: Settings) -> int | None:
    """What the workers may use in all: RETUNE_WORKER_MEMORY_BYTES, else the cgroup limit, else the RAM."""
    if settings.worker_memory_bytes:
        return settings.worker_memory_bytes
    limit = _read_int(Path("/sys/fs/cgroup/memory.max")) or _read_int(
        Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")
    )
    total = _meminfo("MemTotal")
    candidates = [x for x in (limit, total) if x]
    return min(candidates) if candidates else None


def memory_free_now() -> int | None:
    """Memory a new job can take now: the cgroup's headroom or the kernel's MemAvailable, the lower."""
    limit, used = _read_int(Path("/sys/fs/cgroup/memory.max")), _read_int(Path("/sys/fs/cgroup/memory.current"))
    headroom = limit - used if limit and used is not None else None
    available = _meminfo("MemAvailable")
    candidates = [x for x in (headroom, available) if x is not None]
    return min(candidates) if candidates else None


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def _advice(kind: str) -> str:
    if kind == "embedder":
        return "lower batch_size or passage_max_len, or set cached_loss true with a smaller mini_batch_size"
    if kind == "reranker":
        return "lower mini_batch_size, group_size or max_length"
    return "lower passage_max_len"


def check_fits(kind: str, params: dict[str, Any], base_path: str, settings: Settings) -> Estimate:
    """At job creation: refuse a job whose expected peak exceeds all the memory its workers have."""
    estimate = estimate_peak(kind, params, model_scale(base_path))
    capacity = memory_capacity(settings)
    if capacity is not None and estimate.peak_bytes > capacity:
        raise JobTooLargeError(
            f"this job's expected peak memory is {_gib(estimate.peak_bytes)} ({estimate.detail}), more than the "
            f"{_gib(capacity)} a worker has (RETUNE_WORKER_MEMORY_BYTES, the cgroup limit or the RAM): {_advice(kind)}"
        )
    return estimate


def hold_reason(job_id: str, settings: Settings) -> str | None:
    """At the worker, before claiming: why the job must wait for memory, or None when it fits now.

    It fits when its estimate fits both in the capacity less the estimates of the jobs already
    running (they may not have reached their peak yet) and in what the kernel has free now.
    """
    from app.db.session import session_scope
    from app.db.tables import Job

    with session_scope() as s:
        job = s.get(Job, job_id)
        if job is None or job.status != "queued":
            return None
        others = list(s.execute(select(Job.kind, Job.params).where(Job.status == "running", Job.id != job_id)))
        kind, params = job.kind, dict(job.params)
        try:
            scale = model_scale(resolve_base_model(s, settings, job.base_model)[0])
        except RetuneError:
            scale = 1.0  # the run itself will say what is wrong with the model
    need = estimate_peak(kind, params, scale).peak_bytes
    capacity, free = memory_capacity(settings), memory_free_now()
    taken = sum(estimate_peak(k, p).peak_bytes for k, p in others)
    room = [x for x in ((capacity - taken) if capacity else None, free) if x is not None]
    if not room or need <= min(room):
        return None
    return (
        f"waiting for memory: expected peak {_gib(need)}, {_gib(min(room))} free for it now "
        f"({len(others)} other job(s) running); it starts when memory frees up (the recovery sweep sends it again)"
    )


def hold(job_id: str, reason: str) -> None:
    """Leave the job queued, saying why (once: the message is not repeated at every retry)."""
    from app.db.session import session_scope
    from app.db.tables import Job

    log.info("job %s held: %s", job_id, reason)
    with session_scope() as s:
        job = s.get(Job, job_id)
        if job is not None and job.status == "queued" and job.message != reason:
            job.message = reason
