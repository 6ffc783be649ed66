"""Cross-request batching: concurrent requests to one loaded model share its forward passes.

One :class:`Batcher` per loaded model. A request puts its rows (texts, or (query, passage) pairs) on the
queue with a future; one worker thread drains the queue, waits at most ``max_wait_ms`` after the first
arrival for more, sorts the collected rows by token length, cuts them into batches by a token budget
(rows x padded length, padding to a multiple of ``pad_multiple``) and a row cap, runs one forward pass
per batch and hands every caller its own rows in its own order. Rows that must not share a pass (other
task, normalisation or query length) carry different keys and are batched apart.

Hand-written because the serving peers' batchers (TEI's router, Triton's dynamic batcher) are servers
of their own, not a library a FastAPI process can call into; sentence-transformers batches one call only.

At most ``max_queued_texts`` rows wait or run at once: past that a request is refused at once
(:class:`~app.core.errors.ServerBusyError`, a 429) instead of queueing without end. A request larger than
the bound is still taken when nothing is queued, so every request within the per-request bounds can be
served. The worker takes at most ``ROUND_BATCHES`` batches' worth of rows per round, first come first
served, so a large request is cut into rounds and a small one arriving meanwhile joins the next round.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.core.errors import ServerBusyError

ROUND_BATCHES = 4  # batches' worth of rows one round of the worker takes off the queue
IDLE_EXIT_SECONDS = 30.0  # an idle worker ends (a model evicted from the cache is then freed)

RunBatch = Callable[[Hashable, list[Any]], np.ndarray]


@dataclass(frozen=True)
class BatchLimits:
    max_wait_ms: float = 5.0
    max_batch_tokens: int = 16384  # rows x padded length of one forward pass
    max_batch_rows: int = 64
    max_queued_texts: int = 8192
    pad_multiple: int = 8
    retry_after_seconds: int = 1


@dataclass
class _Request:
    key: Hashable
    items: list[Any]
    lengths: list[int]
    future: Future = field(default_factory=Future)
    results: list[Any] = field(default_factory=list)
    taken: int = 0  # rows handed to a round so far
    done: int = 0  # rows computed so far

    def __post_init__(self) -> None:
        self.results = [None] * len(self.items)


@dataclass
class _Row:
    request: _Request
    position: int

    @property
    def length(self) -> int:
        return self.request.lengths[self.position]


def padded(length: int, multiple: int) -> int:
    return -(-length // multiple) * multiple if multiple > 1 else length


def token_batches(rows: list[_Row], limits: BatchLimits) -> list[list[_Row]]:
    """Rows sorted by length, longest first, cut where the next row would overflow the token budget
    (rows x the batch's padded longest row) or the row cap; a row over the budget gets a batch alone."""
    ordered = sorted(rows, key=lambda r: -r.length)
    batches: list[list[_Row]] = []
    current: list[_Row] = []
    for row in ordered:
        width = padded(current[0].length if current else row.length, limits.pad_multiple)
        if current and (len(current) >= limits.max_batch_rows or (len(current) + 1) * width > limits.max_batch_tokens):
            batches.append(current)
            current = []
        current.append(row)
    if current:
        batches.append(current)
    return batches


class Batcher:
    """``run(key, items)`` is one forward pass over rows of one key; it returns one result per item."""

    def __init__(self, name: str, run: RunBatch, limits: BatchLimits) -> None:
        self.name = name
        self.limits = limits
        self.forward_passes = 0  # read by tests and the bench: passes actually run
        self._run = run
        self._queue: deque[_Request] = deque()
        self._outstanding = 0  # rows queued or in a pass
        self._cond = threading.Condition()
        self._worker: threading.Thread | None = None

    def submit(self, key: Hashable, items: Sequence[Any], lengths: Sequence[int]) -> Future:
        """Queue ``items`` (with their token ``lengths``); the future gets their results, in their order."""
        request = _Request(key, list(items), [max(1, int(n)) for n in lengths])
        if not request.items:
            request.future.set_result(np.zeros(0, dtype=np.float32))
            return request.future
        with self._cond:
            if self._outstanding and self._outstanding + len(request.items) > self.limits.max_queued_texts:
                raise ServerBusyError(
                    f"model '{self.name}' has {self._outstanding} texts queued (at most "
                    f"{self.limits.max_queued_texts}); retry shortly",
                    self.limits.retry_after_seconds,
                )
            self._outstanding += len(request.items)
            self._queue.append(request)
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name=f"batcher:{self.name}", daemon=True)
                self._worker.start()
            self._cond.notify()
        return request.future

    def run(self, key: Hashable, items: Sequence[Any], lengths: Sequence[int]) -> np.ndarray:
        """:meth:`submit` and wait for the results."""
        return self.submit(key, items, lengths).result()

    @property
    def outstanding(self) -> int:
        with self._cond:
            return self._outstanding

    def _work(self) -> None:
        while True:
            rows = self._next_round()
            if rows is None:
                return
            by_key: dict[Hashable, list[_Row]] = {}
            for row in rows:
                by_key.setdefault(row.request.key, []).append(row)
            for key, key_rows in by_key.items():
                for batch in token_batches(key_rows, self.limits):
                    self._run_batch(key, batch)

    def _next_round(self) -> list[_Row] | None:
        """Waits for work (None after ``IDLE_EXIT_SECONDS`` without any), then ``max_wait_ms`` for more."""
        with self._cond:
            idle_until = time.monotonic() + IDLE_EXIT_SECONDS
            while not self._queue:
                left = idle_until - time.monotonic()
                if left <= 0:
                    self._worker = None
                    return None
                self._cond.wait(left)
            deadline = time.monotonic() + self.limits.max_wait_ms / 1000
            wanted = self.limits.max_batch_rows * ROUND_BATCHES
            while self._queued_rows() < wanted and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            return self._take(wanted)

    def _queued_rows(self) -> int:
        return sum(len(r.items) - r.taken for r in self._queue)

    def _take(self, wanted: int) -> list[_Row]:
        """Up to ``wanted`` rows, first come first served (a request may be split across rounds)."""
        rows: list[_Row] = []
        while self._queue and len(rows) < wanted:
            request = self._queue[0]
            end = min(len(request.items), request.taken + wanted - len(rows))
            rows.extend(_Row(request, i) for i in range(request.taken, end))
            request.taken = end
            if request.taken == len(request.items):
                self._queue.popleft()
        return rows

    def _run_batch(self, key: Hashable, batch: list[_Row]) -> None:
        live = [row for row in batch if not row.request.future.done()]  # a failed request's rows are skipped
        if live:
            try:
                self.forward_passes += 1
                outputs = self._run(key, [row.request.items[row.position] for row in live])
            except Exception as exc:  # handed to the callers: the worker must outlive one bad batch
                for row in live:
                    if not row.request.future.done():
                        row.request.future.set_exception(exc)
                outputs = None
            for i, row in enumerate(live):
                if outputs is not None and not row.request.future.done():
                    row.request.results[row.position] = outputs[i]
        for row in batch:
            self._finish_row(row.request)

    def _finish_row(self, request: _Request) -> None:
        with self._cond:
            self._outstanding -= 1
        request.done += 1
        if request.done == len(request.items) and not request.future.done():
            request.future.set_result(np.stack(request.results))
