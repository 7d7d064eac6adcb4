"""The AI API's HTTP surface: routes, Bearer tokens, error bodies, list queries, faults."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from ondemand.asgi import header, send_json, serve_lifespan
from ondemand.sandbox.http import Answer, Dialect, FrontEnd, Headers, HttpError, Request, Route
from ondemand.sandbox.ovh import validate
from ondemand.sandbox.ovh.datasync import create_datasync
from ondemand.sandbox.ovh.engine import OvhEngine
from ondemand.sandbox.ovh.flavors import FLAVORS
from ondemand.sandbox.ovh.machine import ApiError
from ondemand.sandbox.ovh.model import STATES, AppRecord, parse_iso
from ondemand.sandbox.vendor.openapi import OVHAI, document

if TYPE_CHECKING:
    from ondemand.asgi import Receive, Scope, Send
    from ondemand.sandbox.faults import FaultSet

OPERATOR, READ = "operator", "read"
_SORTS: dict[str, Callable[[AppRecord], Any]] = {
    "createdAt": lambda r: r.created_at,
    "updatedAt": lambda r: r.updated_at,
    "name": lambda r: r.name,
    "spec.name": lambda r: r.name,
    "id": lambda r: r.id,
    "status.state": lambda r: r.state,
    "status.lastTransitionDate": lambda r: r.last_transition,
}


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.one(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"query parameter {name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ApiError(400, f"query parameter {name} must be between {low} and {high}")
    return value


def _selector(raw: str) -> list[tuple[str, str, bool]]:
    """``k=v``, ``k==v``, ``k!=v``, comma-separated (all must hold)."""
    terms: list[tuple[str, str, bool]] = []
    for term in filter(None, (t.strip() for t in raw.split(","))):
        match = re.fullmatch(r"([^=!\s]+)\s*(==|=|!=)\s*([^=!,\s]*)", term)
        if match is None:
            raise ApiError(400, f"invalid labelSelector {raw!r}: expected key=value[,key=value]")
        terms.append((match[1], match[3], match[2] != "!="))
    return terms


async def list_apps(engine: OvhEngine, request: Request) -> Answer:
    page = _int_param(request, "page", 1, 1, 1_000_000)
    size = _int_param(request, "size", 100, 1, 1000)
    states = [s for value in request.query.get("statusState", []) for s in value.split(",") if s]
    for state in states:
        if state not in STATES:
            raise ApiError(400, f"invalid statusState {state!r}: one of {', '.join(STATES)}")
    terms = _selector(request.one("labelSelector") or "")
    after = _int_param(request, "updatedAfter", 0, 0, 1 << 40)
    before = _int_param(request, "updatedBefore", 1 << 40, 0, 1 << 40)
    sort = request.one("sort") or "createdAt"
    if sort not in _SORTS:
        raise ApiError(400, f"invalid sort {sort!r}: one of {', '.join(_SORTS)}")
    order = (request.one("order") or "asc").lower()
    if order not in ("asc", "desc"):
        raise ApiError(400, f"invalid order {order!r}: asc or desc")

    def keep(record: AppRecord) -> bool:
        if states and record.state not in states:
            return False
        stamp = parse_iso(record.updated_at).timestamp()
        if not after <= stamp <= before:
            return False
        return all((record.labels.get(k) == v) == eq for k, v, eq in terms)

    records = sorted(filter(keep, engine.apps.values()), key=_SORTS[sort], reverse=order == "desc")
    total = len(records)
    pages = max(1, -(-total // size))
    items = [r.to_api() for r in records[(page - 1) * size : page * size]]
    links: dict[str, str] = {}
    if page < pages:
        query = {k: v for k, v in request.query.items() if k != "page"}
        query["page"] = [str(page + 1)]
        links["next"] = f"{request.base}{request.path}?{urlencode(query, doseq=True)}"
    metadata = {"currentPage": page, "pageCount": pages, "total": total, "links": links}
    return 200, {"items": items, "metadata": metadata}


async def create_app(engine: OvhEngine, request: Request) -> Answer:
    try:
        spec = validate.app_spec(request.json())
    except validate.Invalid as exc:
        raise ApiError(400, str(exc)) from None
    record = engine.create(spec)
    if engine.faults.take_created_then_500():
        raise ApiError(500, "Internal server error")
    return 200, record.to_api()


async def get_app(engine: OvhEngine, request: Request) -> Answer:
    return 200, engine.find(request.params["id"]).to_api()


async def update_app(engine: OvhEngine, request: Request) -> Answer:
    engine.find(request.params["id"])
    try:
        patch = validate.update_input(request.json())
    except validate.Invalid as exc:
        raise ApiError(400, str(exc)) from None
    return 200, engine.update(request.params["id"], patch).to_api()


async def delete_app(engine: OvhEngine, request: Request) -> Answer:
    raw = (request.one("force") or "false").lower()
    if raw not in ("true", "false"):
        raise ApiError(400, f"query parameter force must be true or false, got {raw!r}")
    engine.delete(request.params["id"], force=raw == "true")
    return 204, None


async def start_app(engine: OvhEngine, request: Request) -> Answer:
    engine.start(request.params["id"])
    return 204, None


async def stop_app(engine: OvhEngine, request: Request) -> Answer:
    engine.stop(request.params["id"])
    return 204, None


async def set_label(engine: OvhEngine, request: Request) -> Answer:
    engine.find(request.params["id"])
    try:
        data = validate.obj(request.json(), "the request body")
        validate.keys(data, {"name", "value"}, "the label")
        name = validate.label_key(data.get("name"), "name")
        value = data.get("value")
        if value is not None:
            value = validate.label_value(value, "value")
    except validate.Invalid as exc:
        raise ApiError(400, str(exc)) from None
    engine.set_label(request.params["id"], name, value)
    return 204, None


async def set_scaling(engine: OvhEngine, request: Request) -> Answer:
    engine.find(request.params["id"])
    try:
        strategy = validate.scaling_strategy(request.json(), "the scaling strategy")
    except validate.Invalid as exc:
        raise ApiError(400, str(exc)) from None
    engine.set_scaling(request.params["id"], strategy)
    return 204, None


async def set_image(engine: OvhEngine, request: Request) -> Answer:
    engine.find(request.params["id"])
    try:
        data = validate.obj(request.json(), "the request body")
        validate.keys(data, {"url"}, "the image update")
        url = validate.text(data.get("url"), "url")
    except validate.Invalid as exc:
        raise ApiError(400, str(exc)) from None
    engine.set_image(request.params["id"], url)
    return 200, "Image updated"


async def app_log(engine: OvhEngine, request: Request) -> Answer:
    tail = request.one("tail")
    lines = _int_param(request, "tail", 100, 1, 100_000) if tail is not None else None
    raw = request.one("replica")
    replica = _int_param(request, "replica", 0, 0, 1000) if raw not in (None, "") else None
    return 200, engine.log_text(request.params["id"], lines, replica)


async def me(engine: OvhEngine, request: Request) -> Answer:
    return 200, {"name": engine.user, "tenant": "sandbox", "tokenKind": "app", "role": request.role}


async def flavors(_engine: OvhEngine, _request: Request) -> Answer:
    return 200, [flavor.to_json() for flavor in FLAVORS.values()]


async def flavor(_engine: OvhEngine, request: Request) -> Answer:
    found = FLAVORS.get(request.params["id"])
    if found is None:
        raise ApiError(404, f"flavor {request.params['id']} not found")
    return 200, found.to_json()


ROUTES: list[Route[OvhEngine]] = [
    Route("/v1/app", GET=list_apps, POST=create_app),
    Route("/v1/app/{id}", GET=get_app, PUT=update_app, DELETE=delete_app),
    Route("/v1/app/{id}/start", PUT=start_app),
    Route("/v1/app/{id}/stop", PUT=stop_app),
    Route("/v1/app/{id}/label", PUT=set_label),
    Route("/v1/app/{id}/scalingstrategy", PUT=set_scaling),
    Route("/v1/app/{id}/image", PUT=set_image),
    Route("/v1/app/{id}/log", GET=app_log),
    Route("/v1/app/{id}/datasync", POST=create_datasync),
    Route("/v1/me", GET=me),
    Route("/v1/capabilities/flavor", GET=flavors),
    Route("/v1/capabilities/flavor/{id}", GET=flavor),
]


async def _render(send: Send, error: HttpError, headers: Headers) -> None:
    # The SDK's Error model: {"message": ...} (ovhai/models/error.py).
    await send_json(send, error.status, {"message": error.text}, headers)


def _translate(exc: Exception) -> HttpError | None:
    return HttpError(exc.status, exc.message) if isinstance(exc, ApiError) else None


def _bearer(scope: Scope) -> str | None:
    raw = header(scope, b"authorization")
    if raw is None:
        return None
    scheme, _, token = raw.decode("latin-1").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


class OvhApi:
    """The ASGI app of the emulated AI API. Tokens: ``operator`` manages apps; ``read``
    only reads (GET); anything else is a 401."""

    def __init__(
        self, engine: OvhEngine, faults: FaultSet, *, operator_token: str, read_token: str
    ) -> None:
        self.engine = engine
        self.faults = faults
        self.front = FrontEnd(
            engine,
            ROUTES,
            Dialect(
                roles={operator_token: OPERATOR, read_token: READ},
                render=_render,
                # The AI API answers a refused body with 400 {"message"} (the SDK documents
                # no 422); its published shape is the SDK-derived document.
                document=document(OVHAI),
                invalid_status=400,
                unauthorized=lambda _key: (
                    "missing or invalid token: send 'Authorization: Bearer <AI token>'"
                ),
                read_only_text=(
                    "this token has the read role: it can read apps but not manage them "
                    "(an operator token can)"
                ),
                not_allowed_text=lambda method, allowed: (
                    f"{method} is not allowed here ({', '.join(allowed)})"
                ),
                key=_bearer,
                translate=_translate,
            ),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            # Mounted alone (not in the sandbox), it resumes its apps at start-up and
            # stops their processes at shutdown.
            await serve_lifespan(receive, send, self.engine.begin, self.engine.aclose)
            return
        if scope["type"] != "http":
            return
        self.engine.begin()
        method: str = scope["method"]
        path: str = scope["path"].rstrip("/") or "/"
        fault = self.faults.take_http(method, path)
        if fault is not None:
            retry = fault.retry_after_header
            headers = [(b"retry-after", retry.encode())] if retry is not None else []
            await send_json(send, fault.status, {"message": fault.text}, headers)
            return
        await self.front(scope, receive, send, path, str(scope.get("root_path", "")))
