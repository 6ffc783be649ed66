"""The outage buffer is bounded and loses nothing: progress updates replace each other, a write past the
bound waits for the database (everything is then sent, in order), and a database still unreachable past
the wait ends the attempt with an error the job runner treats as an outage (job left to the sweep).

The unreachable database is a real refused connection (a closed port); the reachable one a SQLite file.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from app.services import write_buffer
from app.services.write_buffer import DatabaseUnreachable, WriteBuffer, is_unreachable


class Database:
    """A SQLite file that can be made unreachable (the sessions then go to a port nobody listens on)."""

    def __init__(self, path: Path) -> None:
        self.up = True
        self.reachable = sessionmaker(bind=create_engine(f"sqlite:///{path}"))
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            closed_port = sock.getsockname()[1]
        self.down = sessionmaker(bind=create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{closed_port}/none"))
        with self.reachable() as s, s.begin():
            s.execute(text("CREATE TABLE written (value TEXT)"))

    @contextmanager
    def scope(self) -> Iterator[Session]:
        with (self.reachable if self.up else self.down)() as session, session.begin():
            yield session

    def rows(self) -> list[str]:
        with self.reachable() as s:
            return list(s.scalars(text("SELECT value FROM written ORDER BY rowid")))


def _write(value: str, session: Session) -> None:
    session.execute(text("INSERT INTO written VALUES (:v)"), {"v": value})


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Database:
    database = Database(tmp_path / "db.sqlite")
    monkeypatch.setattr(write_buffer, "session_scope", database.scope)
    return database


def _buffer(max_pending: int = 100, full_wait_seconds: float = 5.0) -> WriteBuffer:
    return WriteBuffer(lambda s: True, retry_seconds=0.05, max_pending=max_pending, full_wait_seconds=full_wait_seconds)


def test_progress_replaces_its_unsent_predecessor(db: Database) -> None:
    buffer = _buffer()
    db.up = False
    for step in range(1, 51):
        buffer.add(partial(_write, f"loss {step}"))
        buffer.add(partial(_write, f"progress {step}"), replaces="progress")
    assert buffer.pending == 51, "50 metric points and the latest progress"
    db.up = True
    assert buffer.flush(force=True)
    assert db.rows() == [f"loss {step}" for step in range(1, 51)] + ["progress 50"]


def test_past_the_bound_the_writer_waits_and_nothing_is_lost(db: Database) -> None:
    buffer = _buffer(max_pending=5)
    db.up = False
    for step in range(5):
        buffer.add(partial(_write, str(step)))
    back = threading.Timer(0.5, lambda: setattr(db, "up", True))
    back.start()
    started = time.monotonic()
    buffer.add(partial(_write, "5"))  # the sixth: waits until the database answers
    assert time.monotonic() - started >= 0.4
    assert buffer.pending == 0 and db.rows() == [str(step) for step in range(6)]


def test_still_unreachable_past_the_wait_ends_the_attempt(db: Database) -> None:
    buffer = _buffer(max_pending=2, full_wait_seconds=0.3)
    db.up = False
    buffer.add(partial(_write, "0"))
    buffer.add(partial(_write, "1"))
    with pytest.raises(DatabaseUnreachable) as raised:
        buffer.add(partial(_write, "2"))
    assert is_unreachable(raised.value), "the job runner leaves the job running with its checkpoint"
    assert buffer.pending == 3, "nothing was dropped while waiting"
