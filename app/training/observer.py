"""The narrow interface between the training engine and whoever runs it."""

from __future__ import annotations

from typing import Protocol

from app.core.cancellation import TrainingCancelled

__all__ = ["TrainingCancelled", "TrainingObserver", "stop_if_asked"]


class TrainingObserver(Protocol):
    def on_metric(self, step: int, epoch: float, name: str, value: float, split: str) -> None:
        """A loss, an evaluation metric or a health figure, stored as it happens."""

    def on_progress(self, step: int, total_steps: int) -> None: ...

    def should_stop(self) -> bool:
        """Polled every step, between chunks of an evaluation and between phases: True once the user asked to cancel."""
        ...

    def on_resume(self, step: int) -> None:
        """Training continues from a checkpoint at ``step``: drop anything recorded after it."""

    def on_message(self, text: str) -> None:
        """A human-readable note for the job (e.g. 'model not better than base')."""


def stop_if_asked(observer: TrainingObserver, stage: str) -> None:
    """Between two phases of a job (loading, evaluating, training): stop there once the user asked to cancel."""
    if observer.should_stop():
        raise TrainingCancelled(f"cancelled after {stage}")
