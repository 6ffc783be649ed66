"""Two default embedder jobs at once on financial-qa-10k, through the real service: does each fit in 3 GB,
and do both fit on the machine?

    .venv/bin/python -m bench.job_memory                                # ~25 min on a shared 2-core CPU
    .venv/bin/python -m bench.job_memory --max-steps 0 --max-corpus-docs 0   # whole jobs (hours on a CPU)

Starts ``python -m app.cli serve`` (embedded mode, worker concurrency 2, the default), uploads
financial-qa-10k, and posts two embedder jobs with the default params on the set issue #23 names: 1,500
training questions, 10% of the questions held out by seed. Every second it reads the resident memory
(Linux ``VmRSS``) of every process of the service (API, Celery worker and its pool processes) and, at the
end, each pool process's ``VmHWM`` (its lifetime peak). A pool process runs one job at a time, so its peak
is the peak of the job it ran.

A job's peak is set by its largest pass (a training step at batch 32 and 256 tokens, or an evaluation
batch), not by how many steps it trains or how many passages it encodes, so by default the jobs stop
after ``--max-steps`` steps and evaluate against ``--max-corpus-docs`` passages (every judged one plus
distractors) to fit a CPU; the results file records what was run. Quality and speed of the memory-saving
defaults are measured by ``bench.train_memory_quality`` and ``bench.train_memory``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from bench.common import ROOT, SHARED_DATA, write_results, zip_folder
from bench.search_latency import _free_port, _stop_group, _wait

NAME = "job_memory"
KEY = "rt_bench_" + uuid.uuid4().hex
GIB = 2**30


def _field_kb(path: str, field: str) -> int:
    """A ``Name:  value kB`` line of a /proc file; 0 when the process is gone."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _status_kb(pid: int, field: str) -> int:
    return _field_kb(f"/proc/{pid}/status", field)


def _descendants(root: int) -> list[int]:
    """``root`` and every process below it (one read of /proc)."""
    parent_of: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent_of[int(entry.name)] = int(fields[1])
    found, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parent_of.items() if parent in frontier]
        found += frontier
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


class Sampler(threading.Thread):
    """Every second: each service process's VmRSS, and their sum; keeps the peaks and each pool's VmHWM."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root, self.stop = root, threading.Event()
        self.peak_total_kb, self.peak_kb, self.hwm_kb, self.names = 0, {}, {}, {}
        self.timeline: list[tuple[float, int]] = []

    def run(self) -> None:
        started = time.monotonic()
        while not self.stop.wait(1.0):
            total = 0
            for pid in _descendants(self.root):
                rss = _status_kb(pid, "VmRSS")
                total += rss
                self.peak_kb[pid] = max(self.peak_kb.get(pid, 0), rss)
                self.hwm_kb[pid] = max(self.hwm_kb.get(pid, 0), _status_kb(pid, "VmHWM"))
                self.names.setdefault(pid, _cmdline(pid)[:120])
            self.peak_total_kb = max(self.peak_total_kb, total)
            self.timeline.append((round(time.monotonic() - started, 1), total))


def _job_body(dataset_id: str, args: argparse.Namespace) -> dict[str, Any]:
    evaluation: dict[str, Any] = {"holdout_fraction": 0.1, "seed": 42}
    if args.max_corpus_docs:
        evaluation["max_corpus_docs"] = args.max_corpus_docs
    params: dict[str, Any] = {"max_train_queries": args.max_train_queries}
    if args.max_steps:
        params["max_steps"] = args.max_steps
    return {"kind": "embedder", "dataset_id": dataset_id, "eval": evaluation, "params": params}


def _overlap(jobs: list[dict[str, Any]]) -> float:
    """Seconds both jobs were running at once."""
    spans = [(_seconds(j["started_at"]), _seconds(j["finished_at"])) for j in jobs]
    return max(0.0, min(end for _, end in spans) - max(start for start, _ in spans))


def _seconds(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _summary(sampler: Sampler, jobs: list[dict[str, Any]], pool: list[int]) -> dict[str, Any]:
    per_pool = {str(pid): round(sampler.hwm_kb[pid] * 1024 / GIB, 3) for pid in pool}
    return {
        "jobs": [{k: j[k] for k in ("id", "status", "step", "total_steps", "started_at", "finished_at")} for j in jobs],
        "seconds_both_running": round(_overlap(jobs), 1),
        "pool_process_peak_gib": per_pool,
        "largest_job_peak_gib": max(per_pool.values()),
        "service_total_peak_gib": round(sampler.peak_total_kb * 1024 / GIB, 3),
        "processes": {str(pid): sampler.names.get(pid, "") for pid in sampler.peak_kb},
        "process_peak_rss_gib": {str(pid): round(kb * 1024 / GIB, 3) for pid, kb in sampler.peak_kb.items()},
        "total_rss_timeline_gib": [(t, round(kb * 1024 / GIB, 3)) for t, kb in sampler.timeline[::10]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-train-queries", type=int, default=1500)
    parser.add_argument("--max-steps", type=int, default=6, help="0: the whole epoch")
    parser.add_argument("--max-corpus-docs", type=int, default=1500, help="0: the whole corpus")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per job")
    parser.add_argument("--name", default=NAME)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    with tempfile.TemporaryDirectory() as tmp:
        port = _free_port()
        env = os.environ | {"RETUNE_DATA_DIR": str(Path(tmp) / "data"), "RETUNE_PORT": str(port),
                            "RETUNE_BOOTSTRAP_KEY": KEY, "HF_HUB_OFFLINE": "1", "RETUNE_WORKER_CONCURRENCY": "2",
                            "RETUNE_TORCH_THREADS": str(args.threads)}  # fmt: skip
        log = (Path(tmp) / "service.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600,
                              headers={"Authorization": f"Bearer {KEY}"})  # fmt: skip
        sampler = Sampler(proc.pid)
        try:
            result = _run(client, sampler, args)
        finally:
            sampler.stop.set()
            _stop_group(proc)
            print((Path(tmp) / "service.log").read_text(errors="replace")[-3000:], file=sys.stderr)
    write_results(args.name, result)


def _run(client: httpx.Client, sampler: Sampler, args: argparse.Namespace) -> dict[str, Any]:
    for _ in range(120):
        try:
            if client.get("/health").status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(1)
    archive = zip_folder(SHARED_DATA / "financial-qa-10k", "financial-qa-10k")
    dataset = client.post("/datasets", files={"file": ("finqa.zip", archive)})
    dataset.raise_for_status()
    sampler.start()
    body = _job_body(dataset.json()["id"], args)
    posted = [client.post("/jobs", json=body) for _ in range(2)]
    for response in posted:
        response.raise_for_status()
    jobs = [_wait(client, f"/jobs/{r.json()['id']}", {"succeeded"}, timeout=6 * 3600) for r in posted]
    sampler.stop.set()
    sampler.join()
    pool = [pid for pid, name in sampler.names.items() if "celery" in name and "worker" in name]
    pool = [pid for pid in pool if sampler.hwm_kb.get(pid, 0) > 0]
    summary = _summary(sampler, jobs, pool)
    summary["messages"] = [j["message"] for j in jobs]
    return {"settings": vars(args) | {"job": body, "machine_memory_gib": round(_total_memory() / GIB, 1)},
            "shared_machine": True} | summary  # fmt: skip


def _total_memory() -> int:
    return _field_kb("/proc/meminfo", "MemTotal") * 1024


if __name__ == "__main__":
    main()
