"""Units of the client-facing API: keyset pages, metrics events grouped per step, the error shape,
the estimated finish."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session, sessionmaker

from app.api.errors import dotted_field, is_retune_route, validation_response
from app.api.schemas import JOB_KINDS, JobIn
from app.core.errors import NotFoundError
from app.db.tables import Base, Dataset, IndexAlias, Job, JobEvent, MetricPoint
from app.services import events, job_observer, job_runner, write_buffer
from app.services.jobs import estimated_finish
from app.services.listing import page_aliases, page_datasets, page_jobs


@pytest.fixture
def factory() -> sessionmaker[Session]:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)  # a throwaway schema; the service migrates with Alembic
    return sessionmaker(bind=engine, expire_on_commit=False)


def _datasets(session: Session, n: int, same_time: bool = False) -> list[str]:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    times = [start + timedelta(seconds=0 if same_time else i) for i in range(n)]
    rows = [Dataset(id=f"d{i:02d}", name=str(i), format="beir", path="x", created_at=t) for i, t in enumerate(times)]
    session.add_all(rows)
    session.commit()
    return [r.id for r in rows]


@pytest.mark.parametrize("same_time", [False, True])
def test_keyset_pages_cover_every_row_once_newest_first(factory: sessionmaker[Session], same_time: bool) -> None:
    with factory() as s:
        ids = _datasets(s, 7, same_time)
        seen, after, pages = [], None, 0
        while True:
            page = page_datasets(s, after, 3)
            seen += [d.id for d in page.items]
            pages += 1
            if not page.has_more:
                break
            after = page.items[-1].id
        assert seen == sorted(ids, reverse=True) and pages == 3


def test_alias_pages_by_name_and_unknown_cursor_refused(factory: sessionmaker[Session]) -> None:
    with factory() as s:
        s.add_all([IndexAlias(name=n, index_id="i") for n in ("b", "a", "c")])
        s.commit()
        first = page_aliases(s, None, 2)
        assert [a.name for a in first.items] == ["a", "b"] and first.has_more
        rest = page_aliases(s, "b", 2)
        assert [a.name for a in rest.items] == ["c"] and not rest.has_more
        with pytest.raises(NotFoundError, match="nope"):
            page_aliases(s, "nope", 2)


def test_job_filters_combine(factory: sessionmaker[Session]) -> None:
    with factory() as s:
        _datasets(s, 2)
        s.add_all([
            Job(id="j1", kind="embedder", status="failed", dataset_id="d00", base_model="m"),
            Job(id="j2", kind="reranker", status="failed", dataset_id="d01", base_model="m"),
            Job(id="j3", kind="embedder", status="succeeded", dataset_id="d01", base_model="m"),
        ])  # fmt: skip
        s.commit()
        assert {j.id for j in page_jobs(s, None, 10, status="failed").items} == {"j1", "j2"}
        assert [j.id for j in page_jobs(s, None, 10, status="failed", kind="embedder").items] == ["j1"]
        assert {j.id for j in page_jobs(s, None, 10, dataset_id="d01").items} == {"j2", "j3"}


def test_observer_writes_one_metrics_event_per_step_and_split(
    factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    @contextmanager
    def scope() -> Iterator[Session]:
        with factory() as s:
            yield s
            s.commit()

    monkeypatch.setattr(job_observer, "session_scope", scope)
    monkeypatch.setattr(write_buffer, "session_scope", scope)
    with factory() as s:
        _datasets(s, 1)
        s.add(Job(id="j", kind="embedder", dataset_id="d00", base_model="m"))
        s.commit()
    observer = job_runner.SqlObserver("j")
    for name, value in (("ndcg@10", 0.5), ("mrr@10", 0.4)):
        observer.on_metric(0, 0.0, name, value, "test")
    observer.on_progress(1, 2)
    observer.on_metric(1, 0.5, "loss", 1.25, "train")
    observer.on_metric(2, 1.0, "ndcg@10", 0.6, "test")
    observer.on_message("done")
    with factory() as s:
        rows = list(s.scalars(select(JobEvent).order_by(JobEvent.id)))
        assert len(list(s.scalars(select(MetricPoint)))) == 4
    assert [(e.type, e.data) for e in rows] == [
        ("metrics", {"step": 0, "split": "test", "ndcg@10": 0.5, "mrr@10": 0.4}),
        ("metrics", {"step": 1, "split": "train", "loss": 1.25}),
        ("metrics", {"step": 2, "split": "test", "ndcg@10": 0.6}),
        ("message", None),
    ]
    with factory() as s:
        assert [e.id for e in events.list_events(s, "j", rows[1].id, 10)] == [rows[2].id, rows[3].id]


def _validation_error(body: object) -> RequestValidationError:
    try:
        TypeAdapter(JobIn).validate_python(body)
    except ValidationError as exc:
        return RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()])
    raise AssertionError("expected the body to be refused")


def test_validation_errors_become_one_sentence_with_the_field() -> None:
    response = validation_response(
        _validation_error({"kind": "embedder", "dataset_id": "d", "params": {"batch_size": 1}}), JOB_KINDS
    )
    assert response.status_code == 422
    assert b'"field":"params.batch_size"' in response.body and b'"detail":"params.batch_size: ' in response.body
    tag = validation_response(_validation_error({"kind": "classifier", "dataset_id": "d"}), JOB_KINDS)
    assert b'"field":"kind"' in tag.body
    assert dotted_field(("query", "limit")) == "limit"


def test_other_api_families_keep_their_error_shape() -> None:
    assert is_retune_route("/jobs/x") and is_retune_route("/v1beta") and is_retune_route("/search")
    assert not is_retune_route("/v1/embeddings") and not is_retune_route("/tei/rerank") and not is_retune_route("/v2")


def test_estimated_finish_follows_the_step_rate() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    job = Job(status="running", started_at=start, step=25, total_steps=100)
    assert estimated_finish(job, now=start + timedelta(minutes=10)) == start + timedelta(minutes=40)
    job.step = 0
    assert estimated_finish(job, now=start) is None
    job.status, job.step = "succeeded", 100
    assert estimated_finish(job) is None
