"""Embedder training on several devices of one machine: one process per device, torch DDP.

The sentence-transformers Trainer does the data parallelism itself: each rank is started with the
torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*) and an initialised process group
(gloo on CPU, nccl on CUDA), which accelerate picks up. Every batch of ``batch_size`` rows is split
across the ranks (accelerate's ``split_batches``), and the loss gathers the embeddings of all ranks
(``gather_across_devices``), so the in-batch negatives are the global batch and the loss and gradient
are the single-process ones (tests/unit/test_distributed_training.py).

Rank 0 runs :func:`~app.training.embedder.train_embedder` as a single process would: step 0,
evaluations, the best model, the final test; the other ranks only train. The ranks are fresh
interpreters (``python -m app.training.distributed RANK FD``), each holding one end of a pipe: the
job goes down it, and rank 0's reports, checkpoints and result come back up to the caller's
observer, which stays in the calling process (so do ``on_checkpoint`` and cancellation). Hand-written
rather than ``torch.distributed.run`` or ``torch.multiprocessing.spawn``: the first has no channel back
to the caller, the second cannot start from a Celery pool process (a daemonic process may not have
multiprocessing children).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.connection import Connection, Pipe
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from app.retrieval.embedder import EmbedderConfig
from app.training.common import TrainingOutcome, precision_flags
from app.training.data import PreparedData
from app.training.observer import TrainingCancelled, TrainingObserver
from app.training.params import EmbedderParams

# A rank waits in a collective while rank 0 alone evaluates (step 0, every eval_steps): as long as that may
# take. A dead rank is found by the launcher, which ends the others, so a long wait never hangs a job.
COLLECTIVE_TIMEOUT_S = 24 * 3600
POLL_S = 0.5
DEATH_WAIT_S = 3.0  # a rank's error may be its peer's death, not yet visible as an exit


@dataclass(frozen=True)
class DevicePlan:
    """The processes of a run: the device each rank trains on (as it sees it) and the backend joining them."""

    backend: str  # gloo (CPU) or nccl (CUDA)
    rank_devices: list[str]
    visible_gpus: str | None  # CUDA_VISIBLE_DEVICES of every rank; rank r then uses cuda:r

    @property
    def size(self) -> int:
        return len(self.rank_devices)

    @property
    def named(self) -> list[str]:
        """The devices as the worker names them."""
        gpus = self.visible_gpus.split(",") if self.visible_gpus is not None else None
        return [f"cuda:{i}" for i in gpus] if gpus else list(self.rank_devices)


def plan_devices(devices: int | list[str], device: str) -> DevicePlan:
    """``devices``: a count (the first N GPUs when ``device`` is CUDA, else N CPU processes) or named devices.
    Raises ValueError when the machine lacks a named or counted GPU."""
    if isinstance(devices, int):
        devices = [f"cuda:{i}" for i in range(devices)] if device.startswith("cuda") else ["cpu"] * devices
    if all(d == "cpu" for d in devices):
        cores = os.cpu_count() or 1
        if len(devices) > cores:  # each process needs a core of its own to be worth starting
            raise ValueError(f"params.devices: {len(devices)} CPU processes on a machine with {cores} cores")
        return DevicePlan("gloo", list(devices), None)
    import torch

    present = torch.cuda.device_count() if torch.cuda.is_available() else 0
    indexes = [int(d.split(":")[1]) for d in devices]
    absent = [f"cuda:{i}" for i in indexes if i >= present]
    if absent:
        raise ValueError(f"params.devices: this worker has {present} CUDA device(s); {absent} not among them")
    return DevicePlan("nccl", [f"cuda:{r}" for r in range(len(devices))], ",".join(map(str, indexes)))


@dataclass(frozen=True)
class World:
    """This process's place in a DDP run, handed to the engine (picklable: it travels to the rank)."""

    rank: int
    size: int
    backend: str
    gather: bool = True  # False only to show what gathering changes (tests)

    def share(self, value: Any) -> Any:
        """Rank 0's ``value``, on every rank (the others pass None)."""
        import torch.distributed as dist

        box = [value if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def trainer_arguments(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """TrainingArguments for DDP: ``per_device_train_batch_size`` is the global batch, which accelerate
        splits into ``size`` equal shares (so rank r holds the rows a single process has at r/size of it)."""
        batch = arguments["per_device_train_batch_size"] // self.size * self.size
        if batch == 0:
            raise ValueError(f"fewer training rows than the {self.size} devices")
        return {
            "per_device_train_batch_size": batch,
            "accelerator_config": {"split_batches": True},
            "ddp_backend": self.backend,
            "ddp_timeout": COLLECTIVE_TIMEOUT_S,
        }

    def callbacks(self) -> list[TrainerCallback]:
        return [FollowRankZero()]


class FollowRankZero(TrainerCallback):
    """Every rank takes rank 0's decisions of the step: whether to stop (cancellation is read there), to log
    (its observer callback asks for the last step's loss) and to save. Logging and saving hold collectives,
    and a rank that stopped alone would leave the others waiting in the next step's."""

    FLAGS = ("should_training_stop", "should_log", "should_save", "should_evaluate")

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        import torch
        import torch.distributed as dist

        flags = torch.tensor([int(getattr(control, name)) for name in self.FLAGS], device=args.device)  # nccl: GPU
        dist.broadcast(flags, src=0)
        for name, value in zip(self.FLAGS, flags.tolist(), strict=True):
            setattr(control, name, bool(value))


# ---------------------------------------------------------------- inside a rank


@dataclass(frozen=True)
class RankJob:
    """What every rank gets, pickled through its pipe."""

    base_path: str
    data: PreparedData
    params: EmbedderParams
    work_dir: Path
    base_config: EmbedderConfig | None
    plan: DevicePlan
    threads: int | None
    gather: bool


class _Channel:
    """A rank's end of its pipe: reports go up; from the launcher come the job, acknowledgements and "cancel"."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.cancelled = False

    def send(self, kind: str, payload: Any) -> None:
        self.conn.send((kind, payload))

    def _read(self) -> str:
        message = self.conn.recv()
        if message == "cancel":
            self.cancelled = True
        return message

    def should_stop(self) -> bool:
        while not self.cancelled and self.conn.poll():
            self._read()
        return self.cancelled

    def checkpoint_saved(self, step: int) -> None:
        """Waits until the launcher has copied checkpoint ``step`` (to the artifact store): the next save may
        replace it."""
        self.send("checkpoint", (step,))
        while self._read() != "ack":
            pass


class _RelayObserver:
    """Rank 0's observer: reports and cancellation go through its pipe to the launcher's observer."""

    def __init__(self, channel: _Channel) -> None:
        self.channel = channel

    def on_metric(self, step: int, epoch: float, name: str, value: float, split: str) -> None:
        self.channel.send("metric", (step, epoch, name, value, split))

    def on_progress(self, step: int, total_steps: int) -> None:
        self.channel.send("progress", (step, total_steps))

    def should_stop(self) -> bool:
        return self.channel.should_stop()

    def on_resume(self, step: int) -> None:
        self.channel.send("resume", (step,))

    def on_message(self, text: str) -> None:
        self.channel.send("message", (text,))


def _join_world(rank: int, job: RankJob) -> World:
    """The process group, before the Trainer (rank 0 shares its rows through it first); accelerate then uses
    it, reading the torchrun environment the launcher set."""
    import torch
    import torch.distributed as dist

    if job.threads:
        torch.set_num_threads(job.threads)
    if job.plan.backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(
        job.plan.backend, rank=rank, world_size=job.plan.size, timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S)
    )
    return World(rank=rank, size=job.plan.size, backend=job.plan.backend, gather=job.gather)


def rank_main(rank: int, fd: int) -> None:
    """One rank's process (``python -m app.training.distributed RANK FD``). Rank 0 ends by sending
    ("done", outcome); any rank sends ("error", its error) when it fails."""
    _die_with_parent()
    channel = _Channel(Connection(fd))
    job: RankJob = channel.conn.recv()
    from app.training.embedder import follow_embedder, train_embedder

    try:
        world = _join_world(rank, job)
        device = job.plan.rank_devices[rank]
        if rank == 0:
            outcome = train_embedder(
                job.base_path, job.data, job.params, job.work_dir, _RelayObserver(channel), device, job.base_config,
                on_checkpoint=channel.checkpoint_saved, world=world,
            )  # fmt: skip
            channel.send("done", outcome)
        else:
            follow_embedder(job.base_path, job.params, job.work_dir, device, world)
    except BaseException as exc:  # sent to the launcher, which raises it
        channel.send("error", _portable(exc))
    finally:
        _leave_world()
        channel.conn.close()


def _portable(exc: BaseException) -> BaseException:
    """The error as the launcher can raise it: the engine's stop (even when a library wrapped it), or the
    error itself when it pickles, else a RuntimeError with its text."""
    import pickle

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, TrainingCancelled):
            return seen
        seen = seen.__cause__ or seen.__context__
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _leave_world() -> None:
    with contextlib.suppress(Exception):
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def _die_with_parent() -> None:
    """A rank must not train on when its launcher (the worker) is killed: Linux's PR_SET_PDEATHSIG."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


# ---------------------------------------------------------------- the launcher


@dataclass
class _Rank:
    process: subprocess.Popen[bytes]
    conn: Connection
    open: bool = True


def train_embedder_on_devices(
    base_path: str,
    data: PreparedData,
    params: EmbedderParams,
    work_dir: Path,
    observer: TrainingObserver,
    device: str,
    base_config: EmbedderConfig | None = None,
    on_checkpoint: Callable[[int], None] | None = None,
    threads: int | None = None,
    gather: bool = True,
) -> TrainingOutcome:
    """:func:`~app.training.embedder.train_embedder` on ``params.devices`` devices, one process each;
    ``device``: the worker's device kind (a count of devices means GPUs when it is CUDA).
    ``threads``: torch CPU threads per rank. ``gather`` False: each rank's negatives are its own rows only
    (not what a job does; it shows what gathering changes)."""
    plan = plan_devices(params.devices, device)
    for rank_device in set(plan.rank_devices):  # every rank trains in params.precision: refused before they start
        precision_flags(rank_device, params.precision)
    work_dir.mkdir(parents=True, exist_ok=True)
    job = RankJob(base_path, data, params, work_dir, base_config, plan, threads, gather)
    named = ", ".join(plan.named)
    observer.on_message(f"training on {plan.size} devices ({named}), one process each, DDP {plan.backend}")
    ranks = _start_ranks(plan, threads)
    try:
        for rank in ranks:
            rank.conn.send(job)
        return _supervise(ranks, observer, on_checkpoint)
    finally:
        _end(ranks)


def _start_ranks(plan: DevicePlan, threads: int | None) -> list[_Rank]:
    """Fresh interpreters, not forks: nothing (CUDA, thread pools, a Celery pool process's daemon flag, which
    forbids multiprocessing children) is inherited from the worker. Each gets one end of a pipe."""
    import app

    port = _free_port()
    source = str(Path(app.__file__).resolve().parents[1])  # the ranks import the code this process runs
    ranks = []
    for rank in range(plan.size):
        env = os.environ | _rank_environment(rank, plan, port, threads)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH")) if p)
        ours, theirs = Pipe(duplex=True)
        fd = theirs.fileno()
        process = subprocess.Popen(
            [sys.executable, "-m", "app.training.distributed", str(rank), str(fd)], env=env, pass_fds=[fd]
        )
        theirs.close()
        ranks.append(_Rank(process, ours))
    return ranks


def _rank_environment(rank: int, plan: DevicePlan, port: int, threads: int | None) -> dict[str, str]:
    """The torchrun environment accelerate reads; the GPUs a rank sees (CUDA reads them once, at its start)."""
    env = {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(plan.size),
        "LOCAL_WORLD_SIZE": str(plan.size),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    if plan.visible_gpus is not None:
        gpus = plan.visible_gpus.split(",")
        if inherited := os.environ.get("CUDA_VISIBLE_DEVICES"):  # indexes are within the worker's own GPUs
            gpus = [inherited.split(",")[int(i)] for i in gpus]
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    return env


def _supervise(
    ranks: list[_Rank], observer: TrainingObserver, on_checkpoint: Callable[[int], None] | None
) -> TrainingOutcome:
    """Relay rank 0's reports to ``observer`` until it is done; a rank's error, or a rank dying, ends the run.
    Cancellation and the ranks' health are checked every ``POLL_S``, however busy the pipes are."""
    checked, cancelled = time.monotonic(), False
    while True:
        if time.monotonic() - checked >= POLL_S:
            checked = time.monotonic()
            if not cancelled and observer.should_stop():
                ranks[0].conn.send("cancel")
                cancelled = True
            _raise_if_dead(ranks)
        for r, rank in enumerate(ranks):
            if not rank.open or not rank.conn.poll(POLL_S if r == 0 else 0):
                continue
            try:
                kind, payload = rank.conn.recv()
            except EOFError:  # the rank exited; whether it failed, its exit code tells
                rank.open = False
                continue
            if kind == "done":
                return payload
            if kind == "error":  # a rank that died is the cause of its peers' broken collectives
                if death := _death(ranks, wait_s=DEATH_WAIT_S):
                    raise RuntimeError(death) from payload
                raise payload if r == 0 else RuntimeError(f"rank {r} of the DDP run failed: {payload}")
            if kind == "checkpoint":
                if on_checkpoint is not None:
                    on_checkpoint(*payload)
                rank.conn.send("ack")
            else:
                getattr(observer, f"on_{kind}")(*payload)


def _raise_if_dead(ranks: list[_Rank]) -> None:
    if death := _death(ranks):
        raise RuntimeError(death)


def _death(ranks: list[_Rank], wait_s: float = 0.0) -> str | None:
    """A rank that exited without reporting (killed: out of memory, a signal) leaves the others waiting.
    ``wait_s``: how long to look (a killed process closes its sockets, which its peers see, before it exits)."""
    deadline = time.monotonic() + wait_s
    while True:
        for r, rank in enumerate(ranks):
            code = rank.process.poll()
            if code not in (None, 0) or (r == 0 and code == 0 and not rank.open):
                return f"rank {r} of the DDP run died (exit code {code})"
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.1)


def _end(ranks: list[_Rank], grace_s: float = 10.0) -> None:
    """Wait briefly for the ranks to exit by themselves (after a success they are leaving), then kill them."""
    deadline = time.monotonic() + grace_s
    for rank in ranks:
        with contextlib.suppress(subprocess.TimeoutExpired):
            rank.process.wait(timeout=max(0.0, deadline - time.monotonic()))
    for rank in ranks:
        if rank.process.poll() is None:
            rank.process.kill()
            rank.process.wait(timeout=5)
        rank.conn.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    from app.training.distributed import rank_main as _main  # the module's own name: its classes pickle as such

    _main(int(sys.argv[1]), int(sys.argv[2]))
