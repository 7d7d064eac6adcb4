"""REST v2 errors: RFC 9457 ``application/problem+json`` bodies, as the spec defines them.

``{"title": <status phrase>, "status": <code>, "detail": <text>}``, plus ``errors`` (one
string per validation failure) on a 422. The data planes (gateway, health, pod proxy) are
not REST v2 and answer ``{"error": <text>}`` instead.
"""

from __future__ import annotations

import http
import json
from collections.abc import Iterable, Sequence

from ondemand.asgi import Send, send_bytes
from ondemand.sandbox.http import HttpError

PROBLEM_TYPE = b"application/problem+json"


class ApiError(HttpError):
    """A refused request: raised by the handlers, rendered as a problem by the API."""

    @property
    def detail(self) -> str:
        return self.text


class Invalid(ApiError):
    """The body does not match the schema (a 422, as the spec's validator answers)."""

    def __init__(self, where: str, problem: str) -> None:
        message = f"{where}: {problem}"
        super().__init__(422, f"request validation failed: {message}", [message])


async def render(send: Send, error: HttpError, headers: Iterable[tuple[bytes, bytes]]) -> None:
    """The front end's error renderer: a problem body."""
    await send_problem(send, error.status, error.text, error.errors, headers)


def title(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem(status: int, detail: str, errors: Sequence[str] = ()) -> dict[str, object]:
    body: dict[str, object] = {"title": title(status), "status": status, "detail": detail}
    if errors:
        body["errors"] = list(errors)
    return body


async def send_problem(
    send: Send,
    status: int,
    detail: str,
    errors: Sequence[str] = (),
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    body = json.dumps(problem(status, detail, errors), separators=(",", ":")).encode()
    await send_bytes(send, status, body, PROBLEM_TYPE, headers)
