"""The pieces of supervision that need no service: the stalled rule, queue routing, the restart loop."""

from __future__ import annotations

import os
import signal
import sys
import time
from datetime import timedelta

import pytest

from app.cli import Supervisor
from app.core.config import Settings
from app.core.queue import BUILD_INDEX, RECOVER, make_celery, queue_for_job
from app.db.tables import utcnow
from app.services.supervision import is_stalled


def test_only_a_running_job_with_an_old_heartbeat_is_stalled() -> None:
    now = utcnow()
    assert is_stalled("running", now - timedelta(seconds=11), 10, now)
    assert is_stalled("running", None, 10, now)
    assert not is_stalled("running", now - timedelta(seconds=9), 10, now)
    assert not is_stalled("queued", None, 10, now)
    assert not is_stalled("succeeded", now - timedelta(days=1), 10, now)


def test_queue_names_derive_from_retune_queue_and_can_be_set() -> None:
    derived = Settings(queue="q1")
    assert (derived.resolved_gpu_queue, derived.resolved_cpu_queue) == ("q1", "q1.cpu")
    assert derived.consumed_queues() == ["q1", "q1.cpu"]  # the default worker takes both
    named = Settings(queue="q1", gpu_queue="train", cpu_queue="cheap", worker_queues="cpu")
    assert named.consumed_queues() == ["cheap"]
    with pytest.raises(ValueError, match="RETUNE_WORKER_QUEUES"):
        Settings(worker_queues="tpu").consumed_queues()


def test_training_goes_to_the_gpu_queue_mining_builds_and_sweeps_to_the_cpu_queue() -> None:
    settings = Settings(queue="q2")
    assert queue_for_job(settings, "embedder") == queue_for_job(settings, "reranker") == "q2"
    assert queue_for_job(settings, "mine_negatives") == "q2.cpu"
    router = make_celery(settings).amqp.router
    assert router.route({}, BUILD_INDEX)["queue"].name == "q2.cpu"
    assert router.route({}, RECOVER)["queue"].name == "q2.cpu"


def test_supervisor_restarts_a_killed_child_with_a_fresh_command() -> None:
    built: list[int] = []

    def sleeper() -> list[str]:
        built.append(len(built))
        return [sys.executable, "-c", "import time; time.sleep(60)"]

    supervisor = Supervisor({"sleeper": sleeper}).start()
    try:
        first = supervisor.procs["sleeper"].pid
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while supervisor.procs["sleeper"].pid == first or supervisor.procs["sleeper"].poll() is not None:
            assert time.monotonic() < deadline, "the killed child was not started again"
            time.sleep(0.1)
    finally:
        supervisor.stop(timeout=5)
    assert built == [0, 1], "each (re)start asks for its command line again"
    assert all(proc.poll() is not None for proc in supervisor.procs.values())
