"""The worker's write buffer against a real PostgreSQL cut by a TCP proxy (in-process, seconds): writes
wait in order while the database is unreachable, land once it is back, and a flush sent twice (a commit
cut after the server applied it) writes nothing twice; a job taken over stops its old attempt's writes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from app.db.migrate import upgrade_to_head
from app.db.session import make_engine
from app.db.tables import Dataset, Job, JobEvent, MetricPoint, utcnow
from app.services import job_observer, write_buffer
from app.services.job_observer import SqlObserver
from tests.integration.tcp_proxy import TcpProxy


@pytest.fixture
def databases(pg_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TcpProxy, sessionmaker]]:
    """(the proxy the observer's connections go through, sessions straight to the database)."""
    url = pg_env["RETUNE_DATABASE_URL"]
    upgrade_to_head(url)
    proxy = TcpProxy("127.0.0.1", 5432)
    proxy.start()
    cut = sessionmaker(bind=make_engine(url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")),
                       expire_on_commit=False)  # fmt: skip

    @contextmanager
    def cut_scope() -> Iterator[Session]:
        with cut() as session, session.begin():
            yield session

    monkeypatch.setattr(write_buffer, "session_scope", cut_scope)
    monkeypatch.setattr(job_observer, "session_scope", cut_scope)
    direct = sessionmaker(bind=make_engine(url), expire_on_commit=False)
    with direct() as s:
        s.add(Dataset(id="d", name="d", format="beir", path="x"))
        s.add(Job(id="j", kind="embedder", dataset_id="d", base_model="m", status="running", attempts=1))
        s.commit()
    try:
        yield proxy, direct
    finally:
        proxy.stop()


def _losses(direct: sessionmaker) -> list[int]:
    with direct() as s:
        return list(s.scalars(select(MetricPoint.step).where(MetricPoint.name == "loss").order_by(MetricPoint.id)))


def test_writes_wait_in_order_while_cut_and_land_once(databases: tuple[TcpProxy, sessionmaker]) -> None:
    proxy, direct = databases
    observer = SqlObserver("j", attempt=1, poll_seconds=0.2)
    observer.on_metric(1, 0.1, "loss", 1.0, "train")
    proxy.stop()
    for step in (2, 3, 4):
        observer.on_metric(step, 0.1 * step, "loss", 1.0 / step, "train")
        observer.on_progress(step, 10)
    observer.on_message("written while cut off")
    assert observer.buffer.pending > 0 and _losses(direct) == [1]
    assert not observer.should_stop(), "an unreachable database is no reason to stop"

    proxy.start()
    assert observer.finish("succeeded", wait_seconds=10)
    assert _losses(direct) == [1, 2, 3, 4]
    with direct() as s:
        job = s.get(Job, "j")
        assert (job.status, job.step, job.message) == ("succeeded", 4, "written while cut off")
        found = list(s.scalars(select(JobEvent).order_by(JobEvent.id)))
    assert [(e.type, (e.data or {}).get("step")) for e in found] == [
        ("metrics", 1), ("metrics", 2), ("metrics", 3), ("metrics", 4), ("message", None), ("status", None),
    ]  # fmt: skip


def test_a_flush_sent_twice_writes_nothing_twice(databases: tuple[TcpProxy, sessionmaker]) -> None:
    _, direct = databases
    key, at = write_buffer.event_key(), utcnow()
    for _ in range(2):  # as when the first commit was applied but its answer was cut
        with direct() as s:
            write_buffer.upsert_metric(s, "j", 5, 0.5, "loss", 0.25, "train", created_at=at)
            job_observer._append_message("j", key, "once", at, s)
            s.commit()
    with direct() as s:
        assert len(list(s.scalars(select(MetricPoint).where(MetricPoint.step == 5)))) == 1
        assert len(list(s.scalars(select(JobEvent).where(JobEvent.key == key)))) == 1
        assert s.get(Job, "j").message == "once"


def test_an_attempt_whose_job_was_taken_over_stops_writing(databases: tuple[TcpProxy, sessionmaker]) -> None:
    _, direct = databases
    with direct() as s:
        s.execute(update(Job).where(Job.id == "j").values(attempts=2))  # the sweep gave it to another worker
        s.commit()
    observer = SqlObserver("j", attempt=1)
    observer.on_metric(7, 0.7, "loss", 0.5, "train")
    assert observer.lost and observer.should_stop()
    assert not observer.finish("failed", wait_seconds=1, error="must not land")
    with direct() as s:
        assert s.get(Job, "j").status == "running" and _losses(direct) == []
