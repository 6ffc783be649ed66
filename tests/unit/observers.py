"""A TrainingObserver for engine tests: keeps what a run reports, and can stop it at a step."""

from __future__ import annotations


class RecordingObserver:
    def __init__(self, stop_at_step: int | None = None) -> None:
        self.metrics: list[tuple[int, str, float, str]] = []
        self.messages: list[str] = []
        self.stop_at_step = stop_at_step
        self.step = 0

    def on_metric(self, step: int, epoch: float, name: str, value: float, split: str) -> None:
        self.metrics.append((step, name, value, split))

    def on_progress(self, step: int, total_steps: int) -> None:
        self.step = step

    def should_stop(self) -> bool:
        return self.stop_at_step is not None and self.step >= self.stop_at_step

    def on_resume(self, step: int) -> None:
        pass

    def on_message(self, text: str) -> None:
        self.messages.append(text)

    def train(self, name: str) -> dict[int, float]:
        """A training-split series (loss, learning_rate) by step."""
        return {step: value for step, n, value, split in self.metrics if n == name and split == "train"}
