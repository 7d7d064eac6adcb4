"""Error answers shaped like the API family the client speaks.

Native ``/api/*`` clients (the ollama library) read ``{"error": "..."}``; ``/v1`` clients (the
OpenAI SDKs) read ``{"error": {"message", "type", "param", "code"}}``. Both carry an ``error``
key, so a client of either family gets a message it can show.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ondemand.asgi import Send, send_json

_OPENAI_TYPE = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "not_found_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


AUTH_MESSAGES = {
    "missing": "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
    "malformed": "malformed credentials: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
    "invalid": "invalid API key",
}
_WWW_AUTHENTICATE = ((b"www-authenticate", b'Bearer realm="ollama-ondemand"'),)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is not forwarded, as the error answer to give instead."""

    status: int
    message: str
    headers: tuple[tuple[bytes, bytes], ...] = ()
    code: str | None = None

    async def send(self, send: Send, family: str) -> None:
        await send_error(send, family, self.status, self.message, code=self.code,
                         headers=self.headers)  # fmt: skip


def auth_refusal(reason: str) -> Refusal:
    """401 for credentials that are missing, malformed or invalid (``AuthFailure.reason``)."""
    return Refusal(401, AUTH_MESSAGES[reason], _WWW_AUTHENTICATE, "invalid_api_key")


def error_body(family: str, status: int, message: str, code: str | None = None) -> object:
    if family == "openai":
        return {
            "error": {
                "message": message,
                "type": _OPENAI_TYPE.get(status, "api_error"),
                "param": None,
                "code": code,
            }
        }
    return {"error": message}


async def send_error(
    send: Send,
    family: str,
    status: int,
    message: str,
    *,
    code: str | None = None,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    await send_json(send, status, error_body(family, status, message, code), headers)


def family_of(path: bytes) -> str:
    return "openai" if path.startswith(b"/v1/") else "native"
