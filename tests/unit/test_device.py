"""Memory a task freed goes back to the OS (the worker calls this after every task)."""

from __future__ import annotations

import os
import platform
import threading

import pytest

from app.retrieval.device import release_freed_memory


def rss_mb() -> float:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_heap_of_a_finished_thread_is_returned():
    def task() -> None:
        # ~500 MB in 64 KB blocks: under glibc's mmap threshold, so free() keeps them in the thread's arena.
        # The last block, freed last, is what a fragmented heap looks like to free(): nothing trimmed.
        blocks = [bytearray(64 * 1024) for _ in range(8000)]
        del blocks[:-1]

    thread = threading.Thread(target=task)
    thread.start()
    thread.join()
    before = rss_mb()
    release_freed_memory()
    assert before - rss_mb() > 300, (before, rss_mb())


def test_the_worker_hands_memory_back_after_every_task(monkeypatch):
    """The hook that calls release_freed_memory is connected to Celery's task_postrun, and calls it."""
    from celery.signals import task_postrun

    import worker.tasks

    calls: list[int] = []
    monkeypatch.setattr("app.retrieval.device.release_freed_memory", lambda: calls.append(1))
    task_postrun.send(sender=worker.tasks.run_job, task_id="t", task=worker.tasks.run_job, args=(), kwargs={})
    assert calls == [1]
