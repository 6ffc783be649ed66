"""Embedder training on several devices of one machine: one process per device, torch DDP.

The sentence-transformers Trainer does the data parallelism itself: each rank is started with the
torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*) and an initialised process group
(gloo on CPU, nccl on CUDA), which accelerate picks up. Every batch of ``batch_size`` rows is split
across the ranks (accelerate's ``split_batches``), and the loss gathers the embeddings of all ranks
(``gather_across_devices``), so the in-batch negatives are the global batch and the loss and gradient
are the single-process ones (tests/unit/test_distributed_training.py).

Rank 0 runs :func:`~app.training.embedder.train_embedder` as a single process would: step 0,
evaluations, the best model, the final test; the other ranks only train. The ranks are processes
spawned fresh (``torch.multiprocessing``'s spawn context, so no CUDA or thread-pool state is inherited
from the worker), and the caller's observer stays in the calling process: rank 0 sends its reports
through a queue and reads cancellation from an event, so the observer and ``on_checkpoint`` need not
cross a process boundary. Hand-written rather than ``torch.distributed.run``: that launcher has no
channel back to the caller for metrics, checkpoints and the result.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from app.retrieval.embedder import EmbedderConfig
from app.training.common import TrainingOutcome
from app.training.data import PreparedData
from app.training.observer import TrainingCancelled, TrainingObserver
from app.training.params import EmbedderParams

# A rank waits in a collective while rank 0 alone evaluates (step 0, every eval_steps): as long as that may
# take. A dead rank is found by the launcher, which ends the others, so a long wait never hangs a job.
COLLECTIVE_TIMEOUT_S = 24 * 3600
POLL_S = 0.5


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
        return [StopTogether()]


class StopTogether(TrainerCallback):
    """Rank 0 decides when training ends (cancellation is read there): every rank stops at the same step,
    else the others would wait forever in the next step's collectives."""

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        import torch
        import torch.distributed as dist

        flag = torch.tensor([int(control.should_training_stop)])
        dist.broadcast(flag, src=0)
        control.should_training_stop = bool(flag.item())


# ---------------------------------------------------------------- inside a rank


@dataclass(frozen=True)
class RankJob:
    """What every rank gets (pickled by the spawn context)."""

    base_path: str
    data: PreparedData
    params: EmbedderParams
    work_dir: Path
    base_config: EmbedderConfig | None
    plan: DevicePlan
    port: int
    threads: int | None
    gather: bool


class _RelayObserver:
    """Rank 0's observer: reports go to the launcher's queue, cancellation comes from its event."""

    def __init__(self, reports: Any, cancel: Any) -> None:
        self.reports, self.cancel = reports, cancel

    def on_metric(self, step: int, epoch: float, name: str, value: float, split: str) -> None:
        self.reports.put(("metric", (step, epoch, name, value, split)))

    def on_progress(self, step: int, total_steps: int) -> None:
        self.reports.put(("progress", (step, total_steps)))

    def should_stop(self) -> bool:
        return self.cancel.is_set()

    def on_resume(self, step: int) -> None:
        self.reports.put(("resume", (step,)))

    def on_message(self, text: str) -> None:
        self.reports.put(("message", (text,)))


def _join_world(rank: int, job: RankJob) -> World:
    """The torchrun environment accelerate reads, then the process group (before the Trainer: rank 0 shares
    its rows through it first)."""
    env = {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(job.plan.size),
        "LOCAL_WORLD_SIZE": str(job.plan.size),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(job.port),
    }
    if job.threads:
        env["OMP_NUM_THREADS"] = str(job.threads)
    if job.plan.visible_gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = job.plan.visible_gpus
    os.environ.update(env)
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


def _rank_main(rank: int, job: RankJob, reports: Any, acks: Any, cancel: Any) -> None:
    """One rank's process. Rank 0 ends by sending ("done", outcome); any rank sends ("error", ...) on failure."""
    from app.training.embedder import follow_embedder, train_embedder

    _die_with_parent()
    try:
        world = _join_world(rank, job)
        device = job.plan.rank_devices[rank]
        if rank == 0:

            def checkpoint_saved(step: int) -> None:  # waits until the launcher has copied it
                reports.put(("checkpoint", (step,)))
                acks.get()

            observer = _RelayObserver(reports, cancel)
            outcome = train_embedder(
                job.base_path, job.data, job.params, job.work_dir, observer, device, job.base_config,
                on_checkpoint=checkpoint_saved, world=world,
            )  # fmt: skip
            reports.put(("done", outcome))
        else:
            follow_embedder(job.base_path, job.params, job.work_dir, device, world)
    except BaseException as exc:  # sent to the launcher, which raises it
        reports.put(("error", (rank, _portable(exc))))
    finally:
        _leave_world()


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
    import torch.multiprocessing as mp

    plan = plan_devices(params.devices, device)
    work_dir.mkdir(parents=True, exist_ok=True)
    job = RankJob(base_path, data, params, work_dir, base_config, plan, _free_port(), threads, gather)
    context = mp.get_context("spawn")
    reports, acks, cancel = context.Queue(), context.Queue(), context.Event()
    ranks = [
        context.Process(target=_rank_main, args=(r, job, reports, acks, cancel), name=f"retune-rank-{r}")
        for r in range(plan.size)
    ]
    named = ", ".join(plan.named)
    observer.on_message(f"training on {plan.size} devices ({named}), one process each, DDP {plan.backend}")
    for rank in ranks:
        rank.start()
    try:
        return _supervise(ranks, reports, acks, cancel, observer, on_checkpoint)
    finally:
        _end(ranks)


def _supervise(
    ranks: list[Any],
    reports: Any,
    acks: Any,
    cancel: Any,
    observer: TrainingObserver,
    on_checkpoint: Callable[[int], None] | None,
) -> TrainingOutcome:
    """Relay rank 0's reports to ``observer`` until it is done; a rank's error, or a rank dying, ends the run."""
    while True:
        try:
            kind, payload = reports.get(timeout=POLL_S)
        except queue.Empty:
            if observer.should_stop():
                cancel.set()
            _raise_if_dead(ranks)
            continue
        if kind == "done":
            return payload
        if kind == "error":
            rank, exc = payload
            raise exc if rank == 0 else RuntimeError(f"rank {rank} of the DDP run failed: {exc}")
        if kind == "checkpoint":
            if on_checkpoint is not None:
                on_checkpoint(*payload)
            acks.put(True)
        else:
            getattr(observer, f"on_{kind}")(*payload)


def _raise_if_dead(ranks: list[Any]) -> None:
    """A rank that exited without reporting (killed: out of memory, a signal) leaves the others waiting."""
    for r, rank in enumerate(ranks):
        if rank.exitcode not in (None, 0):
            raise RuntimeError(f"rank {r} of the DDP run died (exit code {rank.exitcode})")


def _end(ranks: list[Any], grace_s: float = 10.0) -> None:
    """Wait briefly for the ranks to exit by themselves (after a success they are leaving), then kill them."""
    deadline = time.monotonic() + grace_s
    for rank in ranks:
        rank.join(timeout=max(0.0, deadline - time.monotonic()))
    for rank in ranks:
        if rank.is_alive():
            rank.kill()
            rank.join(timeout=5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
