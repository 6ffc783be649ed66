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


class JobTooLargeError(RetuneError):
    """A job whose expected peak memory exceeds all the memory the workers have (app/services/memory_guard.py)."""

    status_code = 422
