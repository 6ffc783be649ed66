"""All of Retune's configuration, read once from ``RETUNE_*`` environment variables.

The defaults give the embedded mode (SQLite file + a SQLAlchemy-backed Celery broker under
``./data``) so that one command runs everything on a laptop; production sets the two URLs to
PostgreSQL and Redis and changes nothing else.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RETUNE_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("./data"), description="Datasets, models, indexes and the embedded DB.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite under data_dir.")
    broker_url: str | None = Field(None, description="Celery broker; default: sqla+sqlite under data_dir.")
    artifact_url: str = Field(
        "",
        description="Where datasets, models, indexes and checkpoints are stored: empty for data_dir, or "
        "s3://bucket/prefix (endpoint, region and credentials from the standard AWS_* variables).",
    )
    artifact_cache_bytes: int = Field(
        20 * 1024**3, ge=0, description="Bound on the local copies of S3 artifacts under data_dir/cache/artifacts."
    )
    host: str = "127.0.0.1"
    port: int = 8000
    queue: str = Field("retune", description="Celery queue the API sends to and workers consume.")
    worker_concurrency: int = Field(2, description="Tasks one embedded worker runs at once.")
    default_base_model: str = Field("all-MiniLM-L6-v2", description="Model id used when a job names no base model.")
    device: str | None = Field(None, description="torch device for workers; default cuda when present.")
    model_cache_size: int = Field(4, description="Models kept loaded per process for /search.")
    serving_backends: list[str] = Field(
        default_factory=list,
        description="Runtime backends a finished job tries for serving (JSON list, e.g. "
        '["onnx-int8", "onnx-fp32"]); the fastest that passes the validation gate serves; [] serves torch fp32.',
    )
    serving_gate_tolerance: float = Field(
        0.01, ge=0, lt=1, description="Largest relative validation nDCG@10 loss (95% interval) a backend may cost."
    )
    serving_gate_min_speedup: float = Field(
        1.0,
        ge=0,
        description="How many times as fast as torch fp32 a backend must score the gate's validation "
        "queries to serve; of those that pass, the fastest serves. 0: any backend that keeps the quality.",
    )
    rerank_batch_size: int | None = Field(
        None, ge=1, description="(query, passage) pairs per reranker forward pass; default: 8 on CPU, 32 on GPU."
    )
    batch_max_wait_ms: float = Field(
        5.0, ge=0, description="How long a model's batcher waits after a request for others to share its forward pass."
    )
    batch_max_tokens: int = Field(
        16384, ge=1, description="Token budget of one batched forward pass: rows x longest row, padded to 8."
    )
    batch_max_rows: int = Field(64, ge=1, description="Texts per batched embedding forward pass.")
    batch_max_queued_texts: int = Field(
        8192, ge=1, description="Texts (or pairs) queued per model; a request past it is refused (429)."
    )
    batch_retry_after_seconds: int = Field(1, ge=0, description="The Retry-After of that 429.")
    torch_threads: int | None = Field(
        None, ge=1, description="CPU threads torch uses per process; default: torch's own (one per core)."
    )
    allowed_model_roots: list[Path] = Field(
        default_factory=list,
        description="Local folders a job may name as base_model (JSON list); others are refused.",
    )
    allowed_hub_models: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Glob patterns of Hugging Face ids a job may name (JSON list); [] allows none.",
    )
    redispatch_seconds: int = Field(
        300, ge=1, description="A job still queued this long after its task was sent is sent again."
    )
    recovery_interval_seconds: float = Field(30.0, gt=0, description="How often workers look for lost jobs.")
    job_stale_seconds: int = Field(
        60, ge=2, description="A running job whose heartbeat is older than this is taken over by a starting worker."
    )
    db_outage_seconds: float = Field(
        600.0,
        ge=0,
        description="How long a worker waits for an unreachable database to record a job's end (its status, its "
        "model) before leaving the job, checkpoint kept, to the recovery sweep. Training itself never waits.",
    )
    db_outage_buffer_writes: int = Field(
        100_000,
        ge=1,
        description="Writes (metric points, events) a worker keeps for one job while the database is unreachable; "
        "progress updates replace each other. Past it training waits for the database (RETUNE_DB_OUTAGE_SECONDS), "
        "then the job is left, checkpoint kept, to the recovery sweep.",
    )

    gpu_queue: str | None = Field(None, description="Celery queue of training jobs; default: RETUNE_QUEUE.")
    cpu_queue: str | None = Field(
        None, description="Celery queue of index builds, mining and sweeps; default: RETUNE_QUEUE + '.cpu'."
    )
    worker_queues: str = Field(
        "gpu,cpu", description="Which queues `app.cli worker` consumes: 'gpu', 'cpu' or 'gpu,cpu'."
    )
    index_build_attempts: int = Field(3, ge=1, description="Builds of one index before it is marked failed.")

    worker_memory_bytes: int | None = Field(
        None,
        ge=1,
        description="Memory all of a machine's training jobs may use together; default: the cgroup limit, else the "
        "RAM. A job expected to peak above it is refused (422); one that does not fit now waits in the queue.",
    )

    bootstrap_key: str | None = Field(
        None, description="An admin API key to accept (set it in deployments; like TEI's --api-key)."
    )

    # Input bounds (a request over a bound is a 4xx, never an out-of-memory).
    max_upload_bytes: int = 512 * 1024 * 1024
    max_upload_lines: int = 2_000_000
    max_text_chars: int = 100_000
    max_recall_k: int = 1000
    max_top_k: int = 100
    max_batch_queries: int = 64
    max_model_upload_bytes: int = Field(
        4 * 1024**3, description="Bound on an uploaded model archive and on its extracted files (POST /models)."
    )

    metrics_allow: list[str] = Field(
        default_factory=list,
        description="CIDRs (JSON list) whose clients may read GET /metrics without a key; others need an admin key.",
    )

    @field_validator("serving_backends")
    @classmethod
    def _known_backends(cls, value: list[str]) -> list[str]:
        from app.retrieval.backends.spec import parse_backend

        return [parse_backend(label).label for label in value]

    @field_validator("artifact_url")
    @classmethod
    def _valid_artifact_url(cls, url: str) -> str:
        if url.strip() and not url.strip().startswith("s3://"):
            raise ValueError(f"expected s3://bucket/prefix or empty (the data dir), got {url!r}")
        return url.strip()

    @field_validator("metrics_allow")
    @classmethod
    def _valid_networks(cls, networks: list[str]) -> list[str]:
        for net in networks:
            ipaddress.ip_network(net, strict=False)  # ValueError names the bad one at start, not at a scrape
        return networks

    max_embed_inputs: int = Field(256, ge=1, description="Texts in one /v1/embeddings or /tei embed call.")
    max_rerank_documents: int = Field(1000, ge=1, description="Documents in one /v2/rerank or /tei rerank call.")

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'retune.sqlite').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{(self.data_dir / 'broker.sqlite').resolve()}"

    @property
    def resolved_gpu_queue(self) -> str:
        return self.gpu_queue or self.queue

    @property
    def resolved_cpu_queue(self) -> str:
        return self.cpu_queue or f"{self.queue}.cpu"

    def consumed_queues(self) -> list[str]:
        """The Celery queues a worker started with these settings consumes (RETUNE_WORKER_QUEUES)."""
        roles = {role.strip() for role in self.worker_queues.split(",") if role.strip()}
        unknown = roles - {"gpu", "cpu"}
        if unknown or not roles:
            raise ValueError(f"RETUNE_WORKER_QUEUES: expected 'gpu', 'cpu' or 'gpu,cpu', got {self.worker_queues!r}")
        return [q for role, q in (("gpu", self.resolved_gpu_queue), ("cpu", self.resolved_cpu_queue)) if role in roles]

    def ensure_dirs(self) -> None:
        for sub in ("datasets", "models", "indexes", "tmp"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)


@lru_cache
def get_settings() -> Settings:
    return Settings()
