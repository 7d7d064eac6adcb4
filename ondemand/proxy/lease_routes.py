"""The lease routes (admin key):

- ``GET /ondemand/leases`` -> 200 ``{"leases": [...]}``
- ``POST /ondemand/leases {"holder", "ttl_seconds", "id"?}`` -> 201 the lease (``id``: the
  client's, the same on every replica; a live lease of that id is renewed)
- ``POST /ondemand/leases/<id>/renew {"ttl_seconds"}`` -> 200 the lease, 404 when gone
- ``DELETE /ondemand/leases/<id>`` -> 200 ``{"released", "remaining", "lease"?}`` (the lease
  as it was, with ``held_seconds``, when it was live)
- ``POST /ondemand/drain {"release"?, "holder"?, "idle_seconds"?, "ttl_seconds"?,
  "inflight"?}`` -> 200 the decision ``{"draining", "released", "remaining", "holders",
  "leases", "inflight", ...}``; ``release`` is a lease id or a list of them, and
  ``"inflight": "wait"`` drains with requests still in flight (the caller waits for them)
- ``GET /ondemand/drain`` -> 200 ``{"draining": {...} | null, "inflight"}``; ``DELETE``
  calls it off
- ``POST /ondemand/models {"models": [...]}`` -> 202 the models' state: pull and warm them
  on the running server (``ondemand serve`` only; elsewhere 404)

``POST /ondemand/leases`` may ask for a per-run key with ``"key": true`` or
``"key": {"models": [...]}``: the answer carries it once, and it works until the lease ends.
While the server drains, it answers 409 ``{"error", "draining": true}``.

A lease is ``{id, holder, acquired_at, expires_at, expires_in_seconds}``. Releasing a lease
that is already gone (expired, or released twice) is not an error: a cleanup retried must
succeed, and ``remaining`` is what the caller decides on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping

from ondemand.asgi import BodyTooLarge, ClientDisconnected, Receive, Send, read_body, send_json
from ondemand.proxy.leases import Draining, LeaseBook, LeaseError

# In-flight requests and the time of the last one (or of the start), for the drain decision.
ActivityNow = Callable[[], tuple[int, float]]
# Pull and warm more models on the running server; answers their state.
AddModels = Callable[[list[str]], Awaitable[Mapping[str, object]]]

BODY_LIMIT = 16 * 1024
MAX_MODELS = 64
_ONE = re.compile(r"/ondemand/leases/(?P<id>[A-Za-z0-9_-]{1,64})(?P<renew>/renew)?")


async def lease_route(
    book: LeaseBook, method: str, path: str, receive: Receive, send: Send
) -> None:
    if path == "/ondemand/leases":
        if method in ("GET", "HEAD"):
            await send_json(send, 200, {"leases": book.view()})
        elif method == "POST":
            body = await _json_body(receive, send)
            if body is None:
                return
            try:
                lease, key = book.acquire(
                    body.get("holder"), body.get("ttl_seconds"), body.get("key"), body.get("id")
                )
            except Draining as exc:
                await send_json(send, 409, {"error": str(exc), "draining": True})
                return
            except LeaseError as exc:
                await send_json(send, 400, {"error": str(exc)})
                return
            view = lease.view(book.clock())
            if key is not None:
                view["key"] = key
            await send_json(send, 201, view)
        else:
            await send_json(send, 405, {"error": f"{method} is not allowed: use GET or POST"})
        return
    found = _ONE.fullmatch(path)
    if found is None:
        await send_json(send, 404, {"error": f"no such route: {method} {path}"})
        return
    lease_id = found["id"]
    if found["renew"]:
        if method != "POST":
            await send_json(send, 405, {"error": f"{method} is not allowed: use POST"})
            return
        body = await _json_body(receive, send)
        if body is None:
            return
        try:
            renewed = book.renew(lease_id, body.get("ttl_seconds"))
        except LeaseError as exc:
            await send_json(send, 400, {"error": str(exc)})
            return
        if renewed is None:
            await send_json(send, 404, {"error": f"no live lease {lease_id}: it expired or "
                                        "was released; take a new one"})  # fmt: skip
            return
        await send_json(send, 200, renewed.view(book.clock()))
    elif method == "DELETE":
        gone, remaining = book.release(lease_id)
        answer: dict[str, object] = {"released": gone is not None, "remaining": remaining}
        if gone is not None:
            answer["lease"] = gone
        await send_json(send, 200, answer)
    else:
        await send_json(send, 405, {"error": f"{method} is not allowed: use DELETE"})


async def drain_route(
    book: LeaseBook, method: str, activity: ActivityNow, receive: Receive, send: Send
) -> None:
    if method in ("GET", "HEAD"):
        inflight, _ = activity()
        await send_json(send, 200, {"draining": book.drain_view(), "inflight": inflight})
    elif method == "DELETE":
        await send_json(send, 200, {"cancelled": book.cancel_drain(), "draining": None})
    elif method == "POST":
        body = await _json_body(receive, send)
        if body is None:
            return
        release, holder, idle = body.get("release"), body.get("holder"), body.get("idle_seconds")
        ids = [release] if isinstance(release, str) else release
        if ids is not None and not (
            isinstance(ids, list) and len(ids) <= 100 and all(isinstance(x, str) for x in ids)
        ):
            await send_json(send, 400, {"error": "release: give a lease id or a list of them"})
            return
        wait = body.get("inflight")
        if wait not in (None, "wait"):
            await send_json(send, 400, {"error": 'inflight: give "wait" or leave it out'})
            return
        if holder is not None and not isinstance(holder, str):
            await send_json(send, 400, {"error": "holder: give the holder's name"})
            return
        if idle is not None and (isinstance(idle, bool) or not isinstance(idle, int | float)):
            await send_json(send, 400, {"error": "idle_seconds: give a number of seconds"})
            return
        inflight, last = activity()
        reason = (
            "idle, no live lease"
            if idle is not None
            else "no live lease"
            if wait == "wait"
            else "no live lease, nothing in flight"
        )
        try:
            decision = book.drain(
                release=ids or (),
                holder=holder,
                inflight=inflight,
                last_activity=last,
                idle_seconds=None if idle is None else float(idle),
                ttl_seconds=body.get("ttl_seconds", 900),
                reason=str(body.get("reason") or reason)[:200],
                wait_inflight=wait == "wait",
            )
        except LeaseError as exc:
            await send_json(send, 400, {"error": str(exc)})
            return
        await send_json(send, 200, decision.view())
    else:
        await send_json(send, 405, {"error": f"{method} is not allowed: use GET, POST or DELETE"})


async def models_route(
    add_models: AddModels | None, method: str, receive: Receive, send: Send
) -> None:
    if add_models is None:
        await send_json(send, 404, {"error": "no such route: this server does not manage its "
                                    "models (it is not 'ondemand serve')"})  # fmt: skip
        return
    if method != "POST":
        await send_json(send, 405, {"error": f"{method} is not allowed: use POST"})
        return
    body = await _json_body(receive, send)
    if body is None:
        return
    models = body.get("models")
    if not (
        isinstance(models, list)
        and 0 < len(models) <= MAX_MODELS
        and all(isinstance(m, str) and m.strip() and len(m) <= 200 for m in models)
    ):
        await send_json(send, 400, {"error": f"models: give 1 to {MAX_MODELS} model names"})
        return
    await send_json(send, 202, dict(await add_models([m.strip() for m in models])))


async def _json_body(receive: Receive, send: Send) -> dict[str, object] | None:
    """The request's JSON object, or None after answering 400/413."""
    try:
        raw = await read_body(receive, limit=BODY_LIMIT, idle_timeout=30)
    except BodyTooLarge:
        await send_json(send, 413, {"error": f"the body is over {BODY_LIMIT} bytes"})
        return None
    except (ClientDisconnected, TimeoutError):
        return None
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, RecursionError):
        body = None
    if not isinstance(body, dict):
        await send_json(send, 400, {"error": "send a JSON object"})
        return None
    return body
