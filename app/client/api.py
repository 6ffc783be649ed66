"""A thin httpx wrapper: bearer auth, the API's `detail` as the error message, list pages followed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx


class ApiError(Exception):
    """The service answered with an error (its `detail` is the message) or could not be reached."""

    def __init__(self, message: str, status_code: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.body = body

    def __str__(self) -> str:
        return f"{self.message} (HTTP {self.status_code})" if self.status_code else self.message


def error_message(body: Any, fallback: str) -> str:
    """The API's `detail`: a sentence, or FastAPI's list of validation problems (each `loc: msg`)."""
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for item in detail:
            loc = ".".join(str(p) for p in item.get("loc", []) if p != "body") if isinstance(item, dict) else ""
            msg = item.get("msg", item) if isinstance(item, dict) else item
            parts.append(f"{loc}: {msg}" if loc else str(msg))
        return "; ".join(parts)
    return fallback


class ApiClient:
    def __init__(self, url: str, key: str | None, timeout: float = 120.0) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiError(f"cannot reach {self.url}: {exc}") from exc
        self.raise_for_error(response)
        return response

    @staticmethod
    def raise_for_error(response: httpx.Response) -> None:
        if response.is_success:
            return
        try:
            body = response.json()
        except ValueError:
            body = response.text
        message = error_message(body, response.reason_phrase or "error")
        if response.status_code in (404, 405) and message in ("Not Found", "Method Not Allowed"):
            # FastAPI's words for a route the service does not have (not for a missing resource, which names it)
            message = f"this service has no {response.request.method} {response.request.url.path} ({message})"
        raise ApiError(message, response.status_code, body)

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        return None if response.status_code == 204 or not response.content else response.json()

    def list_all(self, path: str, params: dict[str, Any] | None = None) -> list[Any]:
        """Every item of a list endpoint, following RFC 8288 `Link: rel="next"` pages where the service sends them."""
        items: list[Any] = []
        response = self.request("GET", path, params=params)
        while True:
            items.extend(response.json())
            next_link = response.links.get("next", {}).get("url")
            if not next_link:
                return items
            response = self.request("GET", next_link)

    @contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        try:
            with self.http.stream(method, path, **kwargs) as response:
                if not response.is_success:
                    response.read()
                    self.raise_for_error(response)
                yield response
        except httpx.TransportError as exc:
            raise ApiError(f"cannot reach {self.url}: {exc}") from exc
