"""Prometheus series of the API, through prometheus-client (no hand-written exposition).

Names follow text-embeddings-inference where they mean the same: ``te_request_count`` (exposed by
prometheus-client as ``te_request_count_total``) and the ``te_request_duration`` histogram. Retune's own
series are ``retune_*``. Job figures are read from SQL at scrape time (a few COUNTs: cheap), so every API
process reports the same numbers whichever worker wrote them.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from app.core.config import get_settings
from app.db.session import session_scope
from app.db.tables import Job, utcnow

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
# Latency buckets in seconds: from a cached search (ms) to an upload (tens of seconds).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

registry = CollectorRegistry()
request_count = Counter(
    "te_request_count", "HTTP requests by method, route and status.", ["method", "route", "status"], registry=registry
)
request_duration = Histogram(
    "te_request_duration", "HTTP request duration in seconds.", ["method", "route"], buckets=BUCKETS, registry=registry
)
search_stage_duration = Histogram(
    "retune_search_stage_duration",
    "Duration of each /search stage in seconds (load, recall, rerank, total).",
    ["stage"],
    buckets=BUCKETS,
    registry=registry,
)


class JobCollector(Collector):
    """Jobs by status, the queue's depth and the workers seen alive, counted in SQL at scrape time."""

    def collect(self) -> Iterator[Metric]:
        stale_before = utcnow() - timedelta(seconds=get_settings().job_stale_seconds)
        with session_scope() as s:
            counts = dict(s.execute(select(Job.status, func.count()).group_by(Job.status)).tuples().all())
            alive = s.scalar(select(func.count()).where(Job.status == "running", Job.heartbeat_at >= stale_before))
        jobs = GaugeMetricFamily("retune_jobs", "Jobs by status.", labels=["status"])
        for status in JOB_STATUSES:
            jobs.add_metric([status], counts.get(status, 0))
        yield jobs
        queued = counts.get("queued", 0)
        yield GaugeMetricFamily("retune_queue_depth", "Jobs queued, not yet taken by a worker.", queued)
        yield GaugeMetricFamily(
            "retune_workers_seen_alive",
            "Worker processes seen alive: running jobs whose heartbeat is fresh (idle workers are not seen).",
            alive or 0,
        )


registry.register(JobCollector())


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    request_count.labels(method, route, str(status)).inc()
    request_duration.labels(method, route).observe(seconds)


def observe_search(timings_ms: dict[str, float]) -> None:
    for stage, ms in timings_ms.items():
        search_stage_duration.labels(stage).observe(ms / 1000.0)


def exposition() -> tuple[bytes, str]:
    """The text exposition of every series, and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST
