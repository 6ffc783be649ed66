"""A transformers TrainerCallback that reports loss, polls cancellation and evaluates on schedule."""

from __future__ import annotations

from collections.abc import Callable

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from app.training.observer import TrainingObserver


class ObserverCallback(TrainerCallback):
    def __init__(
        self,
        observer: TrainingObserver,
        evaluate: Callable[[int, float], None],
        eval_steps: int | None,
    ) -> None:
        self.observer = observer
        self.evaluate = evaluate
        self.eval_steps = eval_steps
        self.last_evaluated_step = -1
        self.cancelled = False
        self.stop_requested = False  # set by an evaluation that wants the run to end (e.g. a collapse)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **kw):
        for name in ("loss", "learning_rate"):
            if logs and name in logs:
                self.observer.on_metric(state.global_step, float(state.epoch or 0.0), name, float(logs[name]), "train")

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw):
        self.observer.on_progress(state.global_step, state.max_steps)
        if state.global_step >= state.max_steps:
            control.should_log = True  # the last step's loss, however short the job (logging_steps or not)
        if self.observer.should_stop():
            self.cancelled = True
            control.should_training_stop = True
            return
        if self.eval_steps and state.global_step % self.eval_steps == 0 and state.global_step < state.max_steps:
            self.evaluate(state.global_step, float(state.epoch or 0.0))
            self.last_evaluated_step = state.global_step
            if self.stop_requested:
                control.should_training_stop = True


class CheckpointSaved(TrainerCallback):
    """Calls ``on_saved(step)`` once the Trainer wrote checkpoint ``step`` (after that step's evaluation and
    Retune's run state were saved), so whoever runs the engine can copy the work dir somewhere durable."""

    def __init__(self, on_saved: Callable[[int], None]) -> None:
        self.on_saved = on_saved

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw):
        self.on_saved(state.global_step)


class BestModel:
    """Keeps the best evaluated training state on disk; the base model's score is the bar to beat."""

    def __init__(self, metric: str, save: Callable[[], None]) -> None:
        self.metric = metric
        self.save = save
        self.base_value: float | None = None
        self.best_value: float | None = None
        self.best_step: int | None = None

    def offer(self, step: int, metrics: dict[str, float]) -> None:
        value = metrics[self.metric]
        if step == 0:
            self.base_value = value
            return
        if self.best_value is None or value > self.best_value:
            self.best_value, self.best_step = value, step
            self.save()

    @property
    def better_than_base(self) -> bool:
        return self.best_value is not None and self.base_value is not None and self.best_value > self.base_value
