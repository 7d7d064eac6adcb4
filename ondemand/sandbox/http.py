"""The emulated control planes' HTTP front end, shared by RunPod's REST v2 and OVH's AI API.

One order for every request: authenticate → route (404) → method (405) → role (403) → read
the body (413) → validate it against the vendor's published document → dispatch. What differs
between the two vendors is data: the route table, the key check, the error body, the status of
a validation failure (RunPod 422, OVH 400), the messages. A ``Dialect`` carries those.

Routes are declarative, one line each: ``Route("/v2/pods/{id}", GET=get_pod, ...)``; the
template is also the key of the operation in the vendored OpenAPI document.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import parse_qs

from ondemand.asgi import BodyTooLarge, ClientDisconnected, read_body, send_json, send_text

if TYPE_CHECKING:
    from ondemand.asgi import Receive, Scope, Send
    from ondemand.sandbox.vendor.openapi import Document

Headers = list[tuple[bytes, bytes]]
E = TypeVar("E")
_BODY_LIMIT = 1 << 20


class HttpError(Exception):
    """A refused request: status, the text for the error body, and the validation failures."""

    def __init__(
        self, status: int, text: str, errors: Sequence[str] = (), headers: Headers | None = None
    ) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.errors = list(errors)
        self.headers = headers or []


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, str]
    query: dict[str, list[str]]
    body: bytes
    role: str
    base: str
    """The URL this API is mounted at (what stands in for the platform's hosts)."""

    def json(self) -> Any:
        if not self.body.strip():
            raise HttpError(400, "a JSON request body is required")
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise HttpError(400, f"the request body is not valid JSON: {exc}") from None

    def one(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None

    def listed(self, name: str) -> list[str]:
        return [v for raw in self.query.get(name, []) for v in raw.split(",") if v]


Answer = tuple[int, Any]
Handler = Callable[[E, Request], Awaitable[Answer]]


class Route(Generic[E]):
    """A path template (``{name}`` matches one segment) and its handlers by method."""

    def __init__(self, template: str, **methods: Handler[E]) -> None:
        self.template = template
        self.methods = methods
        pattern = re.sub(r"{(\w+)}", r"(?P<\1>[^/]+)", template)
        self.pattern = re.compile(pattern)


@dataclass
class Dialect:
    """What one vendor's API answers differently."""

    roles: dict[str, str]
    """Key → role; a role in ``read_only`` may only GET."""
    render: Callable[[Send, HttpError, Headers], Awaitable[None]]
    """Sends an error body in the vendor's shape."""
    document: Document | None
    invalid_status: int
    unauthorized: Callable[[str | None], str]
    """The 401 text for a missing (None) or unknown key."""
    read_only_text: str
    not_allowed_text: Callable[[str, Sequence[str]], str]
    read_only: frozenset[str] = frozenset({"read"})
    key: Callable[[Scope], str | None] = field(default=lambda _scope: None)
    """The caller's key from the request (Bearer token)."""
    headers: Callable[[str], Headers] = field(default=lambda _key: [])
    """Headers on every authenticated answer, given the caller's key (RunPod's rate
    headers); raising an HttpError refuses the call before it is routed (a rate limit's
    429)."""
    translate: Callable[[Exception], HttpError | None] = field(default=lambda _exc: None)
    """The HttpError for an exception the engine raises in its own type, else None."""


class FrontEnd(Generic[E]):
    """The ASGI-side of one emulated API: ``await front(scope, receive, send, path, base)``."""

    def __init__(self, engine: E, routes: Sequence[Route[E]], dialect: Dialect) -> None:
        self.engine = engine
        self.routes = routes
        self.dialect = dialect
        self.refused: list[str] = []
        """Every request the vendor's document refused (``METHOD path: failures``)."""

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, path: str, base: str
    ) -> None:
        dialect = self.dialect
        method: str = scope["method"]
        key = dialect.key(scope)
        role = dialect.roles.get(key) if key is not None else None
        if role is None:
            await dialect.render(send, HttpError(401, dialect.unauthorized(key)), [])
            return
        try:
            headers = dialect.headers(key or "")
        except HttpError as exc:  # a rate limit refusing the call, say (429)
            await dialect.render(send, exc, exc.headers)
            return
        try:
            found = await self._request(scope, receive, method, path, role, base)
            if found is None:
                return
            handler, request = found
            status, payload = await handler(self.engine, request)
        except Exception as exc:
            refusal = exc if isinstance(exc, HttpError) else dialect.translate(exc)
            if refusal is None:
                raise
            await dialect.render(send, refusal, [*refusal.headers, *headers])
            return
        if status == 204:
            # No Content-Length or Content-Type: a 204 has no body to describe.
            await send({"type": "http.response.start", "status": 204, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
        elif isinstance(payload, str):
            await send_text(send, status, payload, headers)
        else:
            await send_json(send, status, payload, headers)

    def _match(self, method: str, path: str) -> tuple[Route[E], dict[str, str]]:
        for route in self.routes:
            found = route.pattern.fullmatch(path)
            if found is not None:
                if method not in route.methods:
                    allowed = sorted(route.methods)
                    allow = (b"allow", ", ".join(allowed).encode())
                    text = self.dialect.not_allowed_text(method, allowed)
                    raise HttpError(405, text, headers=[allow])
                return route, found.groupdict()
        raise HttpError(404, f"no such route: {method} {path}")

    async def _request(
        self, scope: Scope, receive: Receive, method: str, path: str, role: str, base: str
    ) -> tuple[Handler[E], Request] | None:
        route, params = self._match(method, path)
        if role in self.dialect.read_only and method != "GET":
            raise HttpError(403, self.dialect.read_only_text)
        try:
            body = await read_body(receive, limit=_BODY_LIMIT)
        except BodyTooLarge:
            raise HttpError(413, "request body too large") from None
        except ClientDisconnected:
            return None
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        request = Request(method, path, params, query, body, role, base)
        self._validate(route, request)
        return route.methods[method], request

    def _validate(self, route: Route[E], request: Request) -> None:
        """Refuse what the vendor's published document refuses, as the vendor does."""
        document = self.dialect.document
        operation = document.operation(request.method, route.template) if document else None
        if document is None or operation is None:
            return
        has_body = operation.body is not None and bool(request.body.strip())
        body = request.json() if has_body else None
        failures = document.check(
            request.method, route.template, request.params, request.query, body,
            has_body=has_body,
        )  # fmt: skip
        if failures:
            self.refused.append(f"{request.method} {request.path}: {'; '.join(failures)}")
            text = "request validation failed: " + "; ".join(failures)
            raise HttpError(self.dialect.invalid_status, text, failures)
