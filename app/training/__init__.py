"""Fine-tuning engine: bi-encoders and cross-encoder rerankers. No HTTP, no SQL.

Progress, metrics and cancellation flow through a :class:`~app.training.observer.TrainingObserver`,
so the caller (the job runner) decides where they are stored.
"""
