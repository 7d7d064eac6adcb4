"""The wire between the proxy's main process and its workers: one socket pair each.

The main process keeps everything that must be counted once: leases, drains, limits,
activity, usage totals, metrics and the webhook. A worker serves the same port and forwards
model requests itself, but asks the main process before each one (``admit``, answered with
nothing or with the refusal to send) and tells it after (``leave``, with the usage record;
no answer). So a key's limits, the idle clock and a drain's "nothing in flight" mean the
same with workers as without.

Messages are JSON, in arrays, one array per line. Main to worker: ``{"hello": ...}`` once
(the per-run key secret, where to relay what the worker does not serve, the preloaded
models' keep_alive rule), ``{"reload": 1}`` when the keys file was read again,
``{"residency": ...}`` when that rule changes, and for each admission in the order asked,
``{"ok": 1}`` or ``{"refused": [status, message, headers, code]}``. Worker to main:
``{"admit": who}``, ``{"leave": name, "record": [...]}``,
``{"count": [metric, label]}`` for the failures a worker counts, and
``{"door": [open, turned_away]}`` for its front door's counts when they change.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ondemand.asgi import compact_json
from ondemand.proxy.app import FAILURES
from ondemand.proxy.auth import Identity
from ondemand.proxy.policy import Residency
from ondemand.proxy.responses import Refusal, auth_refusal
from ondemand.proxy.runkeys import RunKeyClaim
from ondemand.proxy.usage import UsageRecord

if TYPE_CHECKING:
    from ondemand.proxy.app import ProxyApp

log = logging.getLogger("ondemand.proxy.workers")
_PER_LINE = 256  # messages per line at most


class LinkLost(Exception):
    """The main process is gone; a worker cannot admit anything any more."""


def who(identity: Identity) -> list[object]:
    """An identity as the main process rebuilds it: the name, admin, and a run key's claim."""
    entry = identity.entry
    claim = entry.claim if entry is not None else None
    if claim is None:
        return [identity.name, identity.admin]
    models = None if claim.models is None else sorted(claim.models)
    return [identity.name, identity.admin, claim.lease_id, claim.holder, models, claim.expires_at]


def residency_message(residency: Residency | None) -> list[object] | None:
    if residency is None:
        return None
    return [sorted(residency.models), residency.keep_alive]


def read_residency(message: list[Any] | None) -> Residency | None:
    if message is None:
        return None
    models, keep_alive = message
    return Residency(frozenset(str(m) for m in models), keep_alive)


class _Lines(asyncio.Protocol):
    """JSON lines in both directions over one stream socket. Messages written in one turn of
    the event loop leave together, as one array per line: a burst's admissions and its
    streams' ends cost the link one write and one decode, not one per request."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._outgoing: list[object] = []
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        last = data.rfind(b"\n")  # only the new bytes are searched: a long line stays linear
        if last < 0:
            self._buffer += data
            return
        end = len(self._buffer) + last
        self._buffer += data
        lines = bytes(self._buffer[:end]).split(b"\n")
        del self._buffer[: end + 1]
        for line in lines:
            try:
                messages = json.loads(line)
            except ValueError:
                log.error("link message not understood: not JSON")
                continue
            for message in messages:
                try:
                    self.received(message)
                except Exception:  # one bad message must not end the link for every request
                    log.exception("link message not understood")

    def received(self, message: Any) -> None:
        raise NotImplementedError

    def write(self, message: object) -> None:
        if not self._outgoing:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outgoing.append(message)

    def _flush(self) -> None:
        messages, self._outgoing = self._outgoing, []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(
                b"".join(
                    compact_json(messages[i : i + _PER_LINE]) + b"\n"
                    for i in range(0, len(messages), _PER_LINE)
                )
            )

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002
        if not self.closed.done():
            self.closed.set_result(None)


class MainSide(_Lines):
    """The main process's end of one worker's link: it admits and counts for the worker."""

    def __init__(self, app: ProxyApp) -> None:
        super().__init__()
        self.app = app
        self.held: Counter[str] = Counter()  # admitted, not yet left: freed if the worker dies
        self.admitted = 0

    def received(self, message: Any) -> None:
        if "admit" in message:
            self._admit(message["admit"])
        elif "leave" in message:
            name, fields = str(message["leave"]), message["record"]
            if self.held[name] > 0:
                self.held[name] -= 1
                record = None if fields is None else UsageRecord(*fields)
                self.app.leave(Identity(name, False), record)
        elif "count" in message:
            metric, label = message["count"]
            if metric in FAILURES:  # a failure the main process's /metrics counts
                self.app.count_failure(metric, str(label))
        elif "door" in message:
            open_, turned = message["door"]
            self.app.door.elsewhere[self] = (int(open_), Counter(turned))

    def _admit(self, who: list[Any]) -> None:
        # Every admission is answered, in order: the worker pairs answers with questions.
        try:
            identity = self._identity(who)
            refused = identity if isinstance(identity, Refusal) else self.app.admit_now(identity)
        except Exception:
            log.exception("admission for a worker failed")
            refused = Refusal(500, "the proxy could not admit this request")
        if refused is None:
            assert isinstance(identity, Identity)
            self.held[identity.name] += 1
            self.admitted += 1
            self.write({"ok": 1})
            return
        headers = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in refused.headers]
        self.write({"refused": [refused.status, refused.message, headers, refused.code]})

    def _identity(self, who: list[Any]) -> Identity | Refusal:
        name, admin = str(who[0]), bool(who[1])
        if len(who) > 2:
            lease_id, holder, models, expires_at = who[2:6]
            allowed = None if models is None else frozenset(str(m) for m in models)
            claim = RunKeyClaim(str(lease_id), str(holder), allowed, float(expires_at))
            entry = self.app.leases.claim_entry(claim)
            if entry is None:  # released since the worker read the key
                return auth_refusal("invalid")
            return Identity(entry.name, entry.admin, entry)
        entry = next((e for e in self.app.keys.entries if e.name == name), None)
        return Identity(name, admin, entry)

    def connection_lost(self, exc: Exception | None) -> None:
        # A worker that died mid-request never says "leave": its slots are not held forever.
        for name, count in self.held.items():
            for _ in range(count):
                self.app.leave(Identity(name, False), None)
        self.held.clear()
        # Its connections are gone; what its door turned away stays counted.
        _, turned = self.app.door.elsewhere.pop(self, (0, Counter()))
        self.app.door.turned_away.update(turned)
        super().connection_lost(exc)


class WorkerSide(_Lines):
    """A worker's end: asks the main process before forwarding, tells it after. The main
    process answers admissions in the order they were asked."""

    def __init__(self, control: Callable[[dict[str, Any]], None]) -> None:
        super().__init__()
        # What the main process says unasked (hello, reload, residency); the worker's app
        # takes it over once it exists.
        self.control = control
        self._waiting: deque[asyncio.Future[Refusal | None]] = deque()

    def received(self, message: Any) -> None:
        if "hello" in message or "reload" in message or "residency" in message:
            self.control(message)
            return
        if not self._waiting:
            return
        waiting = self._waiting.popleft()
        refused = message.get("refused")
        if refused is None:
            result = None
        else:
            status, text, headers, code = refused
            pairs = tuple((n.encode("latin-1"), v.encode("latin-1")) for n, v in headers)
            result = Refusal(int(status), str(text), pairs, code)
        if not waiting.done():  # the request may have been cancelled meanwhile
            waiting.set_result(result)

    async def admit(self, identity: Identity) -> Refusal | None:
        """None: forward it (and ``leave`` after); else the refusal to send. Raises
        ``LinkLost`` when the main process is gone."""
        if self.closed.done():
            raise LinkLost
        waiting: asyncio.Future[Refusal | None] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiting)
        self.write({"admit": who(identity)})
        try:
            return await asyncio.shield(waiting)
        except asyncio.CancelledError:
            # Admitted or not, the answer still comes: a late "ok" must be given back.
            waiting.add_done_callback(lambda f: self._give_back(f, identity))
            raise

    def _give_back(self, waiting: asyncio.Future[Refusal | None], identity: Identity) -> None:
        if not waiting.cancelled() and waiting.exception() is None and waiting.result() is None:
            self.leave(identity, None)

    def leave(self, identity: Identity, record: UsageRecord | None) -> None:
        fields = None if record is None else [getattr(record, n) for n in UsageRecord.__slots__]
        self.write({"leave": identity.name, "record": fields})

    def count(self, metric: str, label: str) -> None:
        self.write({"count": [metric, label]})

    def connection_lost(self, exc: Exception | None) -> None:
        for waiting in self._waiting:
            if not waiting.done():
                waiting.set_exception(LinkLost())
        self._waiting.clear()
        super().connection_lost(exc)
