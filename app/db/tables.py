"""SQL tables. The schema itself is created by Alembic migrations (``migrations/``)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy import Index as SqlIndex
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite stores no zone and would hand back naive times)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, datetime: UTCDateTime}


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    format: Mapped[str] = mapped_column(String(20))  # "training_jsonl" | "beir"
    path: Mapped[str] = mapped_column(Text)
    stats: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Model(Base):
    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))  # "embedder" | "reranker"
    source: Mapped[str] = mapped_column(String(20))  # "bundled" | "job" | "upload"
    path: Mapped[str] = mapped_column(Text)
    base_model: Mapped[str | None] = mapped_column(Text, nullable=True)
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # How to use it (pooling, normalisation, query instruction, max lengths): search uses exactly these.
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Held-out comparison with the base model; None when not measured (bundled models).
    better_than_base: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    # Base vs this model on the job's test queries, paired: {metric, base, final, delta, ci_low, ci_high,
    # queries, result: better | not_better | worse, split, contaminated}; None when not measured.
    verdict: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    file_name: Mapped[str | None] = mapped_column(String(255), nullable=True)  # an uploaded archive's name


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(20))  # "embedder" | "reranker" | "mine_negatives" | "serving_backend"
    status: Mapped[str] = mapped_column(String(20), default="queued", index=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="RESTRICT"))
    base_model: Mapped[str] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    eval: Mapped[dict[str, Any]] = mapped_column(default=dict)
    model_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The dataset a mine_negatives job wrote (not a foreign key, like model_id: deleting it is allowed).
    output_dataset_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    step: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Refreshed by the worker running the job; a stale one means that worker died (the job is then resumed).
    heartbeat_at: Mapped[datetime | None] = mapped_column(nullable=True)
    dispatched_at: Mapped[datetime | None] = mapped_column(nullable=True)  # its task was last sent then
    total_steps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The checkpoint step the latest attempt resumed from (None: never resumed): explains a step going back.
    resumed_from_step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)


class MetricPoint(Base):
    __tablename__ = "metric_points"
    # One value per point: the worker upserts, so a flush sent again after a cut never doubles a point.
    __table_args__ = (SqlIndex("uq_metric_points_point", "job_id", "step", "name", "split", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[float] = mapped_column(Float)
    name: Mapped[str] = mapped_column(String(50))
    value: Mapped[float] = mapped_column(Float)
    split: Mapped[str] = mapped_column(String(50))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Index(Base):
    __tablename__ = "indexes"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="RESTRICT"))
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="RESTRICT"))
    status: Mapped[str] = mapped_column(String(20), default="building")
    path: Mapped[str] = mapped_column(Text)
    index_type: Mapped[str] = mapped_column(String(10), default="flat")  # requested ("auto") until built
    memory_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    num_docs: Mapped[int | None] = mapped_column(Integer, nullable=True)
    docs_encoded: Mapped[int | None] = mapped_column(Integer, nullable=True)  # progress of a build: of num_docs
    dim: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # Like a job's: refreshed by the building worker; stale means it died (the sweep sends the build again).
    heartbeat_at: Mapped[datetime | None] = mapped_column(nullable=True)
    dispatched_at: Mapped[datetime | None] = mapped_column(nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16))  # shown in listings; the key itself is never stored
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(10))  # "read" | "write" | "admin"
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)


class IndexAlias(Base):
    """A stable name for an index or a model (exactly one); pointing it elsewhere is one row update (atomic)."""

    __tablename__ = "index_aliases"
    __table_args__ = (CheckConstraint("(index_id IS NULL) <> (model_id IS NULL)", name="ck_index_aliases_one_target"),)

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    index_id: Mapped[str | None] = mapped_column(ForeignKey("indexes.id", ondelete="RESTRICT"), nullable=True)
    model_id: Mapped[str | None] = mapped_column(ForeignKey("models.id", ondelete="RESTRICT"), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class WorkerSeen(Base):
    """A live Celery worker, refreshed by its main process: /health counts the fresh rows per queue.

    Kept in SQL because the embedded SQL broker has no broadcast, so Celery's ``inspect ping`` cannot
    reach workers there; one table works the same on both backends.
    """

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)  # "<Celery node name>:<pid>"
    queues: Mapped[str] = mapped_column(Text)  # comma-separated
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class JobEvent(Base):
    """What happened to a job, in order (OpenAI fine-tuning events): status changes, messages, metrics.

    The integer id is the cursor of ``GET /jobs/{id}/events?after=`` and the SSE ``Last-Event-ID``.
    """

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    level: Mapped[str] = mapped_column(String(10), default="info")  # "info" | "warn" | "error"
    type: Mapped[str] = mapped_column(String(10))  # "message" | "metrics" | "status"
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Made by the worker for the events it buffers: inserting one again (a flush sent twice) adds nothing.
    key: Mapped[str | None] = mapped_column(String(32), nullable=True, unique=True)
