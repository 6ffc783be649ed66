"""Errors a user can fix, one type per failure; the API maps each to one HTTP status."""

from __future__ import annotations


class RetuneError(Exception):
    """Base of user-facing errors. ``status_code`` is the HTTP answer for it."""

    status_code = 400
    headers: dict[str, str] | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFoundError(RetuneError):
    status_code = 404

    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"{kind} '{ident}' not found")


class InvalidRequestError(RetuneError):
    """A request that is well-formed JSON but asks for something impossible."""

    status_code = 422


class ConflictError(RetuneError):
    """The resource exists but is not in a state that allows the operation."""

    status_code = 409


class UntrainedHeadError(RetuneError):
    """A reranker whose classification head was never trained: its scores would be random."""

    status_code = 422


class ServiceUnavailableError(RetuneError):
    status_code = 503


class CalibrationMissingError(RetuneError):
    """A score threshold asked of a model without a fitted calibration: its scores are no probability."""

    status_code = 422

    def __init__(self, model_id: str, reason: str) -> None:
        super().__init__(
            f"model '{model_id}' has no calibrated score, so a threshold on it would filter on an arbitrary "
            f"number ({reason}). Search without 'threshold', or use a model whose job fitted a calibration."
        )
        self.model_id = model_id
        self.reason = reason


class ModelUploadError(RetuneError):
    """An uploaded model archive that Retune will not register (not a model folder, unsafe, or the wrong kind)."""

    status_code = 422


class WrongModelKindError(RetuneError):
    """A model named where another kind is needed (an embedder given to a rerank route, or the reverse)."""

    status_code = 422


class TokenIdsInputError(RetuneError):
    """Pre-tokenised input (lists of token ids): Retune tokenises with the model's own tokenizer."""

    status_code = 400


class InputTooLargeError(RetuneError):
    """More inputs, or longer texts, than the configured bounds allow."""

    status_code = 413


class JobTooLargeError(RetuneError):
    """A job whose expected peak memory exceeds all the memory the workers have (app/services/memory_guard.py)."""

    status_code = 422


class ServerBusyError(RetuneError):
    """A model's batcher already holds its bound of queued texts (RETUNE_BATCH_MAX_QUEUED_TEXTS): retry later."""

    status_code = 429

    def __init__(self, message: str, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after_seconds)}
