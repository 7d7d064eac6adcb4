"""The lease routes (admin key):

- ``GET /ondemand/leases`` -> 200 ``{"leases": [...]}``
- ``POST /ondemand/leases {"holder", "ttl_seconds"}`` -> 201 the lease
- ``POST /ondemand/leases/<id>/renew {"ttl_seconds"}`` -> 200 the lease, 404 when gone
- ``DELETE /ondemand/leases/<id>`` -> 200 ``{"released", "remaining"}``

A lease is ``{id, holder, acquired_at, expires_at, expires_in_seconds}``. Releasing a lease
that is already gone (expired, or released twice) is not an error: a cleanup retried must
succeed, and ``remaining`` is what the caller decides on.
"""

from __future__ import annotations

import json
import re

from ondemand.asgi import BodyTooLarge, ClientDisconnected, Receive, Send, read_body, send_json
from ondemand.proxy.leases import LeaseBook, LeaseError

BODY_LIMIT = 16 * 1024
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
                lease = book.acquire(body.get("holder"), body.get("ttl_seconds"))
            except LeaseError as exc:
                await send_json(send, 400, {"error": str(exc)})
                return
            await send_json(send, 201, lease.view(book.clock()))
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
        released, remaining = book.release(lease_id)
        await send_json(send, 200, {"released": released, "remaining": remaining})
    else:
        await send_json(send, 405, {"error": f"{method} is not allowed: use DELETE"})


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
    except ValueError:
        body = None
    if not isinstance(body, dict):
        await send_json(send, 400, {"error": "send a JSON object"})
        return None
    return body
