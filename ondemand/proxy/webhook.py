"""Usage records to USER_MODEL_METRICS_WEBHOOK_URL, in batches, off the request path.

``submit`` only appends to a bounded queue: a slow or dead webhook never slows or fails a
request. One task sends, retries and, on shutdown, flushes; every record is counted once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote, urlsplit

from ondemand import __version__
from ondemand.envvalues import Env
from ondemand.errors import ConfigError
from ondemand.proxy.upstream import UpstreamBroken, UpstreamUnavailable

if TYPE_CHECKING:
    from ondemand.proxy.upstream_http import HttpUpstream

log = logging.getLogger("ondemand.proxy.webhook")

SOURCE = "ollama-ondemand"
BACKOFF_FIRST = 0.5
# Neither backoff nor Retry-After parks the sender longer: the queue behind it is bounded.
MAX_DELAY = 30.0

Record = Mapping[str, object]
Outcome = Literal["sent", "retry", "fatal"]
_COUNTERS = ("produced", "sent", "dropped_queue_full", "dropped_delivery", "dropped_shutdown",
             "batches_sent", "batches_failed", "retries")  # fmt: skip
_EVENTS = {"batches_sent": "batch_sent", "batches_failed": "batch_failed", "retries": "retry"}


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _host(url: str) -> str:
    """Host and port only, for logs: user info and query strings may carry credentials."""
    return url.partition("://")[2].split("/", 1)[0].split("?", 1)[0].rpartition("@")[2]


def _backoff(attempt: int) -> float:
    delay = min(BACKOFF_FIRST * 2.0**attempt, MAX_DELAY)
    # Jitter keeps replicas that failed together from retrying in lockstep.
    return delay + random.uniform(0, delay / 10)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header; the HTTP-date form falls back to the backoff."""
    try:
        seconds = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return min(max(seconds, 0.0), MAX_DELAY) if math.isfinite(seconds) else None


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    url: str
    api_key: str | None = field(default=None, repr=False)
    batch_size: int = 100
    interval: float = 5.0  # a partial batch is sent at most this many seconds late
    timeout: float = 5.0  # per POST
    retries: int = 3  # attempts after the first
    queue_size: int = 10_000

    def __post_init__(self) -> None:
        counts_ok = min(self.batch_size, self.queue_size, self.retries + 1) >= 1
        if not (counts_ok and self.interval > 0 and self.timeout > 0):
            raise ValueError(f"invalid {self!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WebhookSettings | None:
        """None when USER_MODEL_METRICS_WEBHOOK_URL is unset or empty: no webhook."""
        url = env.get("USER_MODEL_METRICS_WEBHOOK_URL", "").strip()
        if not url:
            return None
        scheme, host = url.partition("://")[0].lower(), _host(url)
        if scheme not in ("http", "https") or not host or host.startswith(":"):
            raise ConfigError(
                "USER_MODEL_METRICS_WEBHOOK_URL must be an http:// or https:// URL with a host,"
                f" got scheme {scheme!r} and host {host!r}"
            )
        read = Env(env)
        return cls(
            url=url,
            api_key=read.secret("USER_MODEL_METRICS_WEBHOOK_API_KEY"),
            batch_size=read.count("ONDEMAND_WEBHOOK_BATCH_SIZE", 100),
            interval=read.seconds("ONDEMAND_WEBHOOK_INTERVAL", 5.0),
            timeout=read.seconds("ONDEMAND_WEBHOOK_TIMEOUT", 5.0),
            retries=read.count("ONDEMAND_WEBHOOK_RETRIES", 3, minimum=0),
            queue_size=read.count("ONDEMAND_WEBHOOK_QUEUE", 10_000),
        )


class WebhookSender:
    """Posts usage records to the metrics webhook from one task; use it in the loop's thread."""

    def __init__(
        self, settings: WebhookSettings, *, on_event: Callable[[str, int], None] | None = None
    ) -> None:
        self.settings = settings
        self._on_event = on_event
        # A batch larger than the queue could never fill up and would always wait.
        self._batch_size = min(settings.batch_size, settings.queue_size)
        self._queue: deque[tuple[float, Record]] = deque()
        self._in_flight: list[Record] = []
        self._n = dict.fromkeys(_COUNTERS, 0)
        self._wake = asyncio.Event()  # the queue became non-empty, or holds a full batch
        self._stopping = asyncio.Event()
        self._closed = self._failing = False
        self._last_error = ""
        self._logged_statuses: set[int] = set()
        self._where = _host(settings.url)
        agent = f"{SOURCE}/{__version__}".encode()
        self._headers = [(b"content-type", b"application/json"), (b"user-agent", agent)]
        parts = urlsplit(settings.url)
        if settings.api_key:
            self._headers.append((b"authorization", f"Bearer {settings.api_key}".encode()))
        elif parts.username is not None:
            # Credentials in the URL (https://user:pass@host/...) go as Basic auth, as
            # HTTP clients send them; never into the Host header or a log line.
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            self._headers.append((b"authorization", b"Basic " + base64.b64encode(pair)))
        self._origin = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
        self._path, self._query = parts.path or "/", parts.query.encode("latin-1")
        self._client: HttpUpstream | None = None
        self._task: asyncio.Task[None] | None = None

    def submit(self, record: Record) -> None:
        """Queue a record (kept as is, not copied); O(1), never waits, never raises."""
        self._n["produced"] += 1
        if self._closed:
            self._add("dropped_shutdown", 1)
            return
        queue = self._queue
        if len(queue) >= self.settings.queue_size:
            # The newest records say most about current usage; the oldest go first.
            queue.popleft()
            self._add("dropped_queue_full", 1)
        queue.append((time.monotonic(), record))
        if len(queue) in (1, self._batch_size):
            self._wake.set()

    async def start(self) -> None:
        if self._closed:
            raise RuntimeError("a stopped WebhookSender cannot be started again")
        if self._task is None:
            # The proxy's own HTTP client (upstream_http.py): kept-alive connections, one
            # write per batch, TLS verified; no redirects are followed.
            from ondemand.proxy.upstream_http import HttpUpstream

            self._client = HttpUpstream(
                self._origin, connect_timeout=self.settings.timeout, peer="the webhook"
            )
            self._task = asyncio.create_task(self._run(), name="ondemand-webhook")

    async def stop(self, flush_timeout: float = 10.0) -> None:
        """Send what is queued within ``flush_timeout``, then close; the rest is dropped."""
        self._stopping.set()
        self._wake.set()
        task = self._task
        try:
            if task is not None:
                await asyncio.wait({task}, timeout=flush_timeout)
        finally:
            if task is not None:
                task.cancel()  # a no-op when the flush has finished
                await asyncio.wait({task})
            self._closed = True
            unsent = len(self._queue) + len(self._in_flight)
            self._queue.clear()
            self._in_flight = []
            if unsent:
                log.warning("metrics webhook: %d records unsent at shutdown, dropped", unsent)
                self._add("dropped_shutdown", unsent)
            if self._client is not None:
                await self._client.aclose()
                self._client = None

    def stats(self) -> dict[str, int]:
        n = self._n
        dropped = n["dropped_queue_full"] + n["dropped_delivery"] + n["dropped_shutdown"]
        return {**n, "pending": len(self._queue) + len(self._in_flight), "dropped": dropped}

    def _add(self, counter: str, count: int) -> None:
        self._n[counter] += count
        if self._on_event is not None:
            name = _EVENTS.get(counter, counter)
            try:
                self._on_event(name, count)
            except Exception:
                # Metrics about metrics must not cost a request or a batch.
                log.debug("on_event(%r) failed", name, exc_info=True)

    async def _run(self) -> None:
        while True:
            await self._ready()
            if not self._queue:
                return  # stopping, and nothing is left
            count = min(len(self._queue), self._batch_size)
            self._in_flight = [self._queue.popleft()[1] for _ in range(count)]
            try:
                await self._deliver(self._in_flight)
            except Exception:
                log.exception("metrics webhook: unexpected failure, batch dropped")
                self._finish(sent=False)

    async def _ready(self) -> None:
        """Return when a batch is due: full, old enough, or shutdown is flushing."""
        while not self._stopping.is_set() and len(self._queue) < self._batch_size:
            oldest = self._queue[0][0] if self._queue else None
            delay = None if oldest is None else oldest + self.settings.interval - time.monotonic()
            if delay is not None and delay <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def _deliver(self, batch: list[Record]) -> None:
        records = json.dumps([dict(r) for r in batch], separators=(",", ":"), default=str)
        retries = self.settings.retries
        for attempt in range(retries + 1):
            if attempt:
                self._add("retries", 1)
            outcome, retry_after = await self._post(records)
            if outcome == "sent":
                self._finish(sent=True)
                return
            log.debug("metrics webhook attempt failed: %s", self._last_error)
            # Once shutdown has begun, a batch gets one more attempt at most.
            if outcome == "fatal" or attempt == retries or self._stopping.is_set():
                break
            delay = retry_after if retry_after is not None else _backoff(attempt)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
        if outcome == "retry" and not self._failing:
            # Once per outage, not per batch; recovery is logged in _finish.
            self._failing = True
            msg = "metrics webhook %s failed (%s); batches are dropped after %d attempts"
            log.warning(msg, self._where, self._last_error, retries + 1)
        self._finish(sent=False)

    async def _post(self, records: str) -> tuple[Outcome, float | None]:
        assert self._client is not None
        body = f'{{"source":"{SOURCE}","sent_at":{time.time()!r},"records":{records}}}'
        try:
            async with asyncio.timeout(self.settings.timeout):
                response = await self._client.send(
                    "POST", self._path, self._query, self._headers, body.encode()
                )
                try:
                    async for _ in response.chunks():
                        pass  # read whole, so the connection can carry the next batch
                finally:
                    await response.aclose()
        except TimeoutError:
            self._last_error = f"no answer within {self.settings.timeout:g} s"
            return "retry", None
        except (UpstreamUnavailable, UpstreamBroken) as exc:
            self._last_error = str(exc)  # names the webhook's host, or what it did
            return "retry", None
        except OSError as exc:
            self._last_error = f"{type(exc).__name__} {exc}".strip()
            return "retry", None
        status = response.status
        retry_after = next(
            (v.decode("latin-1") for n, v in response.headers if n == b"retry-after"), None
        )
        self._last_error = f"HTTP {status} {_phrase(status)}".strip()
        if 200 <= status < 300:
            return "sent", None
        if status == 429 or status >= 500:
            return "retry", _retry_after(retry_after)
        # Once per status: a wrong URL or key must not log an error for every batch.
        if status not in self._logged_statuses:
            self._logged_statuses.add(status)
            msg = "metrics webhook %s answered %s; batches it refuses are dropped, not retried"
            log.error(msg, self._where, self._last_error)
        return "fatal", None

    def _finish(self, *, sent: bool) -> None:
        count, self._in_flight = len(self._in_flight), []
        self._add("sent" if sent else "dropped_delivery", count)
        self._add("batches_sent" if sent else "batches_failed", 1)
        if sent and self._failing:
            self._failing = False
            log.info("metrics webhook %s accepts batches again", self._where)
