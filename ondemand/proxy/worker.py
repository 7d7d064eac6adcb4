"""A worker process of the proxy (``ONDEMAND_PROXY_WORKERS`` > 1): more cores for bursts.

A worker accepts connections on a listener of its own on the proxy's address (bound by the
main process, handed down by descriptor) and forwards model requests to Ollama itself:
authentication, policy, the body, the streamed answer and its metering all run here. What
must be counted once is the main process's (ondemand/proxy/link.py): each forwarded
request is admitted there first and reported there when done. Everything else (``/ping``,
``/ondemand/*``, ``/metrics``, a path the proxy does not forward) is relayed to the main
process whole, so health, status, leases and drains have one answer whichever process a
client reaches.

    python -m ondemand.proxy.worker --listen-fd N --link-fd M

Started by the main process (ondemand/proxy/workers.py), never by hand: it needs the link's
first message to know the per-run key secret and where to relay.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
from collections.abc import Mapping
from typing import Any

from ondemand.asgi import (
    BodyTooLarge,
    ClientDisconnected,
    Receive,
    Scope,
    Send,
    read_body,
    send_json,
)
from ondemand.proxy.app import Failure, ProxyApp
from ondemand.proxy.auth import Identity
from ondemand.proxy.lease_routes import BODY_LIMIT
from ondemand.proxy.leases import LeaseBook
from ondemand.proxy.link import LinkLost, WorkerSide, read_residency
from ondemand.proxy.responses import Refusal, send_error
from ondemand.proxy.routes import BadPath, resolve
from ondemand.proxy.runkeys import RunKeys
from ondemand.proxy.settings import ProxySettings
from ondemand.proxy.upstream import HOP_BY_HOP, UpstreamBroken, UpstreamUnavailable
from ondemand.proxy.upstream_http import HttpUpstream
from ondemand.proxy.usage import UsageRecord

log = logging.getLogger("ondemand.proxy.workers")
_NOT_RELAYED = HOP_BY_HOP | {b"host", b"content-length"}
_MAIN_GONE = "the proxy's main process is not answering; retry shortly"
DOOR_BEAT = 1.0  # seconds between looks at the front door's counts


class WorkerApp(ProxyApp):
    """The proxy as a worker serves it: forwarding here, counting in the main process."""

    def __init__(self, settings: ProxySettings, link: WorkerSide, hello: Mapping[str, Any]):
        super().__init__(settings)
        self.link = link
        self.webhook = None  # the main process sends every record
        self.leases = LeaseBook(self.clock, RunKeys(bytes.fromhex(str(hello["run_key_secret"]))))
        self.residency = lambda: self.shared_residency
        self.shared_residency = read_residency(hello.get("residency"))
        link.control = self.control
        self.main = HttpUpstream(
            "http://ondemand-main", unix_socket=str(hello["relay"]), peer="the proxy's main process"
        )

    # -- admission, in the main process ------------------------------------------------

    async def admit(self, identity: Identity) -> Refusal | None:
        try:
            return await self.link.admit(identity)
        except LinkLost:
            return Refusal(503, _MAIN_GONE, ((b"retry-after", b"1"),))

    def leave(self, identity: Identity, record: UsageRecord | None) -> None:
        self.link.leave(identity, record)

    def control(self, message: dict[str, Any]) -> None:
        """What the main process says unasked: the keys file was read again, the
        preloaded models' keep_alive rule changed."""
        if "reload" in message:
            self.reload_keys()
        elif "residency" in message:
            self.shared_residency = read_residency(message["residency"])

    def count_failure(self, metric: Failure, label: str) -> None:
        self.link.count(metric, label)  # the main process's /metrics shows the total

    # -- what the main process answers ---------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        try:
            forwarded = raw_path != b"/ping" and resolve(raw_path) is not None
        except BadPath:
            forwarded = False
        if forwarded:
            await super()._http(scope, receive, send)
        else:
            await self.relay(scope, receive, send)

    async def relay(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        # What the main process answers itself reads at most BODY_LIMIT: a worker holds no
        # more for it, as the main process would not.
        try:
            body = await read_body(receive, BODY_LIMIT, self.settings.body_timeout)
        except ClientDisconnected:
            return
        except TimeoutError:
            await send_error(send, "native", 408, "timed out reading the request body")
            return
        except BodyTooLarge:
            await send_json(send, 413, {"error": f"the body is over {BODY_LIMIT} bytes"})
            return
        headers = [(n, v) for n, v in scope["headers"] if n not in _NOT_RELAYED]
        try:
            response = await self.main.send(
                scope["method"], raw_path.decode("latin-1"), scope.get("query_string", b""),
                headers, body,
            )  # fmt: skip
        except UpstreamUnavailable as exc:
            log.warning("relay to the main process failed: %s", exc)
            await send_error(send, "native", 503, _MAIN_GONE, headers=[(b"retry-after", b"1")])
            return
        try:
            out = [(n, v) for n, v in response.headers if n not in HOP_BY_HOP]
            await send({"type": "http.response.start", "status": response.status,
                        "headers": out})  # fmt: skip
            try:
                async for chunk in response.chunks():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except UpstreamBroken:
                pass  # the client sees its answer end short, as the main process ended it
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()

    async def startup(self) -> None:
        await super().startup()
        self._background.append(asyncio.ensure_future(self._end_with_main()))
        self._background.append(asyncio.ensure_future(self._report_door()))

    async def _report_door(self) -> None:
        """The front door's counts, for the main process's /metrics, when they change."""
        reported: tuple[int, dict[str, int]] = (0, {})
        while True:
            await asyncio.sleep(DOOR_BEAT)
            now = (self.door.open, dict(self.door.turned_away))
            if now != reported:
                reported = now
                self.link.write({"door": list(now)})

    async def shutdown(self) -> None:
        await super().shutdown()
        await self.main.aclose()

    async def _end_with_main(self) -> None:
        await self.link.closed
        log.warning("the proxy's main process is gone; this worker stops")
        os.kill(os.getpid(), signal.SIGTERM)


async def _connect(link_fd: int) -> tuple[WorkerSide, dict[str, Any]]:
    """The link, and the main process's first message."""
    loop = asyncio.get_running_loop()
    hello: asyncio.Future[dict[str, Any]] = loop.create_future()

    def greeted(message: dict[str, Any]) -> None:
        if "hello" in message and not hello.done():
            hello.set_result(message["hello"])

    sock = socket.socket(fileno=link_fd)
    _, link = await loop.connect_accepted_socket(lambda: WorkerSide(greeted), sock)
    return link, await hello


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ondemand.proxy.worker")
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--link-fd", type=int, required=True)
    parser.add_argument("--grace", type=float, default=10.0)
    args = parser.parse_args(argv)
    from ondemand.proxy.logs import configure_logging
    from ondemand.serving import run_loop, serve_sockets

    settings = ProxySettings.from_env(os.environ)
    configure_logging(settings.log_level, json_lines=settings.log_json)
    listener = socket.socket(fileno=args.listen_fd)

    async def serve() -> None:
        link, hello = await _connect(args.link_fd)
        app = WorkerApp(settings, link, hello)
        await serve_sockets(app, [listener], lifespan="on", limits=settings.door,
                            counts=app.door, graceful_timeout=args.grace)  # fmt: skip

    run_loop(serve())


if __name__ == "__main__":
    main()
