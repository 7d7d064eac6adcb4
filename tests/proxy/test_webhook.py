"""The usage-record webhook sender, against a real receiver on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from ondemand import __version__
from ondemand.asgi import Receive, Scope, Send, read_body, send_json
from ondemand.errors import ConfigError
from ondemand.processes import free_port
from ondemand.proxy import webhook
from ondemand.proxy.webhook import WebhookSender, WebhookSettings
from ondemand.serving import BackgroundServer

KEY = "whk_secret_0123456789abcdef"
URL_ENV = "USER_MODEL_METRICS_WEBHOOK_URL"
KEY_ENV = "USER_MODEL_METRICS_WEBHOOK_API_KEY"


@dataclass
class Reply:
    status: int = 200
    headers: tuple[tuple[bytes, bytes], ...] = ()
    delay: float = 0.0  # hold the answer back this long, or until the client gives up


@dataclass
class Hit:
    at: float
    headers: dict[str, str]
    body: dict[str, Any]
    status: int
    peer: tuple[str, int] | None = None  # the sender's address: which connection it used


@dataclass
class Receiver:
    """ASGI webhook receiver: answers ``replies`` in order, then ``then`` forever."""

    replies: list[Reply] = field(default_factory=list)
    then: Reply = field(default_factory=Reply)
    hits: list[Hit] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        reply = self.replies.pop(0) if self.replies else self.then
        peer = scope.get("client")
        self.hits.append(Hit(time.monotonic(), headers, json.loads(body), reply.status, peer))
        if reply.delay:
            # Returns when the client hangs up, so the server can stop without waiting.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(reply.delay):
                    while (await receive())["type"] != "http.disconnect":
                        pass
        await send_json(send, reply.status, {"ok": reply.status < 300}, reply.headers)

    def ids(self) -> list[str]:
        """Request ids of the records the receiver accepted, in order."""
        accepted = (hit for hit in self.hits if hit.status < 300)
        return [record["request_id"] for hit in accepted for record in hit.body["records"]]


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[Receiver, str]]:
    app = Receiver()
    with BackgroundServer(app) as background:
        yield app, background.url + "/usage"


@pytest.fixture
def receiver(server: tuple[Receiver, str]) -> tuple[Receiver, str]:
    """The module's receiver, reset: every test stops its senders, so none is left posting."""
    app, url = server
    app.replies, app.then, app.hits = [], Reply(), []
    return app, url


def records(n: int, start: int = 0) -> list[dict[str, object]]:
    return [
        {
            "ts": 1_700_000_000.0 + i, "request_id": f"req-{i}", "key_name": "alice",
            "model": "llama3.2:1b", "route": "/api/chat", "method": "POST", "status": 200,
            "prompt_tokens": 12, "completion_tokens": 34, "duration_ms": 56.7, "ttft_ms": 8.9,
        }
        for i in range(start, start + n)
    ]  # fmt: skip


class Events:
    """An on_event callback that keeps what it was told."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def __call__(self, name: str, count: int) -> None:
        self.calls.append((name, count))

    def totals(self) -> Counter[str]:
        totals: Counter[str] = Counter()
        for name, count in self.calls:
            totals[name] += count
        return totals


@contextlib.asynccontextmanager
async def running(
    target: WebhookSettings | WebhookSender, on_event: Callable[[str, int], None] | None = None
) -> AsyncIterator[WebhookSender]:
    """A started sender, stopped at the end even when the test fails."""
    sender = (
        target if isinstance(target, WebhookSender) else WebhookSender(target, on_event=on_event)
    )
    await sender.start()
    try:
        yield sender
    finally:
        await sender.stop(flush_timeout=2.0)


async def eventually(check: Callable[[], bool], within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def balanced(stats: dict[str, int]) -> None:
    assert stats["produced"] == stats["sent"] + stats["dropped"] + stats["pending"], stats
    reasons = ("dropped_queue_full", "dropped_delivery", "dropped_shutdown")
    assert stats["dropped"] == sum(stats[r] for r in reasons), stats


def key_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    assert caplog.records, "the test should have produced log records to check"
    for record in caplog.records:
        assert KEY not in record.getMessage()
        assert KEY not in (record.exc_text or "")


@pytest.mark.anyio
async def test_a_full_batch_goes_at_once(receiver: tuple[Receiver, str]) -> None:
    app, url = receiver
    async with running(WebhookSettings(url, batch_size=5, interval=30)) as sender:
        started = time.monotonic()
        for record in records(12):
            sender.submit(record)
        await eventually(lambda: len(app.hits) == 2)
        assert time.monotonic() - started < 1.0
        assert [len(hit.body["records"]) for hit in app.hits] == [5, 5]
        await asyncio.sleep(0.2)
        assert len(app.hits) == 2, "a partial batch waits for the interval"
        stats = sender.stats()
        assert (stats["sent"], stats["pending"], stats["batches_sent"]) == (10, 2, 2)
        balanced(stats)
    assert "authorization" not in app.hits[0].headers


@pytest.mark.anyio
async def test_credentials_in_the_url_go_as_basic_auth_and_nowhere_else(
    receiver: tuple[Receiver, str], caplog: pytest.LogCaptureFixture
) -> None:
    import base64

    app, url = receiver
    app.replies = [Reply(status=503)]  # a failure, so that the host is logged once
    with_user = url.replace("http://", "http://alice:s%40cret@")
    async with running(WebhookSettings(with_user, batch_size=1, retries=1)) as sender:
        sender.submit(records(1)[0])
        await eventually(lambda: len(app.hits) == 2)
    expected = "Basic " + base64.b64encode(b"alice:s@cret").decode()
    assert [hit.headers["authorization"] for hit in app.hits] == [expected, expected]
    assert "alice" not in app.hits[0].headers["host"]
    assert not any("s%40cret" in r.getMessage() or "s@cret" in r.getMessage()
                   for r in caplog.records)  # fmt: skip


@pytest.mark.anyio
async def test_batches_share_one_kept_alive_connection(receiver: tuple[Receiver, str]) -> None:
    # A busy proxy sends a batch every few requests: a connection (and a TLS handshake)
    # per batch would cost it more than the batch does.
    app, url = receiver
    async with running(WebhookSettings(url, batch_size=5, interval=30)) as sender:
        for batch in range(4):
            for record in records(5, start=5 * batch):
                sender.submit(record)
            sent = batch + 1
            await eventually(lambda: len(app.hits) == sent)  # noqa: B023 - awaited right here
    assert len({hit.peer for hit in app.hits}) == 1
    assert app.ids() == [f"req-{i}" for i in range(20)]


@pytest.mark.anyio
async def test_a_partial_batch_goes_when_its_oldest_record_has_waited_the_interval(
    receiver: tuple[Receiver, str],
) -> None:
    app, url = receiver
    first, second, third = records(3)
    async with running(WebhookSettings(url, batch_size=100, interval=0.2)) as sender:
        started = time.monotonic()
        sender.submit(first)
        await asyncio.sleep(0.1)
        sender.submit(second)
        await eventually(lambda: len(app.hits) == 1)
        assert 0.19 <= app.hits[0].at - started < 0.6
        assert app.hits[0].body["records"] == [first, second]
        await asyncio.sleep(0.3)
        assert len(app.hits) == 1, "an empty queue sends nothing"
        started = time.monotonic()
        sender.submit(third)
        await eventually(lambda: len(app.hits) == 2)
        assert 0.19 <= app.hits[1].at - started < 0.6


@pytest.mark.anyio
async def test_payload_and_headers(receiver: tuple[Receiver, str]) -> None:
    app, url = receiver
    sent = records(2)
    settings = WebhookSettings(url, api_key=KEY, batch_size=2)
    before = time.time()
    async with running(settings) as sender:
        for record in sent:
            sender.submit(record)
        await eventually(lambda: len(app.hits) == 1)
    body, headers = app.hits[0].body, app.hits[0].headers
    assert set(body) == {"source", "sent_at", "records"}
    assert body["source"] == "ollama-ondemand"
    assert before <= body["sent_at"] <= time.time()
    assert body["records"] == sent
    assert headers["authorization"] == f"Bearer {KEY}"
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == f"ollama-ondemand/{__version__}"
    assert KEY not in repr(settings)


@pytest.mark.anyio
async def test_retries_with_backoff_then_success(receiver: tuple[Receiver, str]) -> None:
    app, url = receiver
    app.replies = [Reply(500), Reply(503)]
    events = Events()
    async with running(WebhookSettings(url, batch_size=1, retries=3), events) as sender:
        sender.submit(records(1)[0])
        await eventually(lambda: sender.stats()["sent"] == 1)
        stats = sender.stats()
    assert len(app.hits) == 3
    first, second = (b.at - a.at for a, b in zip(app.hits, app.hits[1:], strict=False))
    assert 0.49 <= first < 0.9
    assert 0.99 <= second < 1.5
    assert [hit.body["records"] for hit in app.hits] == [records(1)] * 3
    assert app.hits[0].body["sent_at"] < app.hits[2].body["sent_at"]
    assert (stats["retries"], stats["batches_sent"], stats["batches_failed"]) == (2, 1, 0)
    assert events.calls == [("retry", 1), ("retry", 1), ("sent", 1), ("batch_sent", 1)]


@pytest.mark.anyio
async def test_429_retry_after_is_honoured(receiver: tuple[Receiver, str]) -> None:
    app, url = receiver
    app.replies = [Reply(429, headers=((b"retry-after", b"1"),))]
    async with running(WebhookSettings(url, batch_size=1, retries=1)) as sender:
        sender.submit(records(1)[0])
        await eventually(lambda: sender.stats()["sent"] == 1)
    # The backoff alone would have waited about 0.5 s.
    assert 0.99 <= app.hits[1].at - app.hits[0].at < 1.5


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("2", 2.0), ("0.25", 0.25), ("-3", 0.0), ("3600", 30.0), ("soon", None), (None, None),
     ("Wed, 21 Oct 2015 07:28:00 GMT", None), ("nan", None)],
)  # fmt: skip
def test_retry_after_is_read_as_capped_seconds(header: str | None, seconds: float | None) -> None:
    assert webhook._retry_after(header) == seconds


@pytest.mark.anyio
async def test_400_is_not_retried_and_logged_once(
    receiver: tuple[Receiver, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app, url = receiver
    app.then = Reply(400)
    events = Events()
    settings = WebhookSettings(url + "?token=in-the-query", api_key=KEY, batch_size=1, retries=3)
    async with running(settings, events) as sender:
        for record in records(5):
            sender.submit(record)
        await eventually(lambda: sender.stats()["dropped_delivery"] == 5)
        stats = sender.stats()
    assert len(app.hits) == 5
    assert (stats["retries"], stats["batches_failed"], stats["sent"]) == (0, 5, 0)
    assert events.totals() == {"dropped_delivery": 5, "batch_failed": 5}
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].name == "ondemand.proxy.webhook"
    assert "400" in errors[0].getMessage()
    assert "in-the-query" not in caplog.text
    key_not_logged(caplog)


@pytest.mark.anyio
async def test_a_redirect_is_not_followed(receiver: tuple[Receiver, str]) -> None:
    app, url = receiver
    app.replies = [Reply(307, headers=((b"location", b"http://elsewhere.invalid/"),))]
    async with running(WebhookSettings(url, api_key=KEY, batch_size=1)) as sender:
        sender.submit(records(1)[0])
        await eventually(lambda: sender.stats()["dropped_delivery"] == 1)
    assert len(app.hits) == 1
    assert sender.stats()["retries"] == 0


@pytest.mark.anyio
async def test_timeout_then_retry(receiver: tuple[Receiver, str]) -> None:
    app, url = receiver
    app.replies = [Reply(200, delay=3.0)]
    async with running(WebhookSettings(url, batch_size=1, timeout=0.2, retries=1)) as sender:
        sender.submit(records(1)[0])
        await eventually(lambda: sender.stats()["sent"] == 1)
        stats = sender.stats()
    assert len(app.hits) == 2
    assert 0.69 <= app.hits[1].at - app.hits[0].at < 1.5  # the timeout, then the backoff
    assert (stats["retries"], stats["batches_sent"], stats["dropped"]) == (1, 1, 0)


@pytest.mark.anyio
async def test_dead_webhook_never_slows_submit(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"http://127.0.0.1:{free_port()}/usage"
    many = records(10_000)
    async with running(WebhookSettings(url, api_key=KEY, batch_size=100, retries=3)) as sender:
        started = time.perf_counter()
        for record in many:
            sender.submit(record)
        # Far below one network attempt per record (10 000 of them): nothing waits on I/O.
        assert time.perf_counter() - started < 0.5
        for _ in range(20):  # the first batch fails and backs off meanwhile
            balanced(sender.stats())
            await asyncio.sleep(0.01)
        assert sender.stats()["pending"] == 10_000
        started = time.monotonic()
        await sender.stop(flush_timeout=1.0)
        assert time.monotonic() - started < 1.5
    stats = sender.stats()
    balanced(stats)
    assert (stats["produced"], stats["dropped"], stats["sent"], stats["pending"]) == (
        10_000, 10_000, 0, 0
    )  # fmt: skip
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "failed" in warnings[0].getMessage()
    key_not_logged(caplog)


@pytest.mark.anyio
async def test_stop_returns_within_the_flush_timeout_when_the_webhook_hangs(
    receiver: tuple[Receiver, str],
) -> None:
    app, url = receiver
    app.then = Reply(200, delay=5.0)
    async with running(WebhookSettings(url, batch_size=10, timeout=5.0, retries=0)) as sender:
        for record in records(25):
            sender.submit(record)
        await eventually(lambda: len(app.hits) == 1)
        started = time.monotonic()
        await sender.stop(flush_timeout=0.3)
        assert 0.29 <= time.monotonic() - started < 0.8
    stats = sender.stats()
    assert (stats["sent"], stats["pending"], stats["dropped_shutdown"]) == (0, 0, 25)
    balanced(stats)


@pytest.mark.anyio
async def test_stop_flushes_the_remainder(receiver: tuple[Receiver, str]) -> None:
    app, url = receiver
    async with running(WebhookSettings(url, batch_size=10, interval=30)) as sender:
        for record in records(25):
            sender.submit(record)
        await eventually(lambda: len(app.hits) == 2)
        started = time.monotonic()
        await sender.stop()
        assert time.monotonic() - started < 1.0
    assert [len(hit.body["records"]) for hit in app.hits] == [10, 10, 5]
    assert app.ids() == [f"req-{i}" for i in range(25)]
    stats = sender.stats()
    assert (stats["sent"], stats["pending"], stats["dropped"]) == (25, 0, 0)


@pytest.mark.anyio
async def test_stop_cuts_a_backoff_short_for_one_last_attempt(
    receiver: tuple[Receiver, str],
) -> None:
    app, url = receiver
    app.replies = [Reply(503)]
    async with running(WebhookSettings(url, batch_size=1, retries=3)) as sender:
        sender.submit(records(1)[0])
        await eventually(lambda: len(app.hits) == 1)
        started = time.monotonic()
        await sender.stop()
        assert time.monotonic() - started < 0.4
    assert len(app.hits) == 2
    assert sender.stats()["sent"] == 1


@pytest.mark.anyio
async def test_a_full_queue_drops_the_oldest(receiver: tuple[Receiver, str]) -> None:
    app, url = receiver
    events = Events()
    sender = WebhookSender(WebhookSettings(url, interval=30, queue_size=5), on_event=events)
    for record in records(8):  # not started: nothing leaves the queue yet
        sender.submit(record)
    stats = sender.stats()
    assert (stats["pending"], stats["dropped_queue_full"], stats["dropped"]) == (5, 3, 3)
    assert events.calls == [("dropped_queue_full", 1)] * 3
    balanced(stats)
    async with running(sender):
        pass
    assert app.ids() == [f"req-{i}" for i in range(3, 8)]
    assert sender.stats()["sent"] == 5


@pytest.mark.anyio
async def test_every_record_is_accounted_for(receiver: tuple[Receiver, str]) -> None:
    app, url = receiver
    app.replies = [Reply(500), Reply(400), Reply(200), Reply(500), Reply(500)]
    events = Events()
    settings = WebhookSettings(url, batch_size=5, interval=0.05, retries=1, queue_size=20)
    async with running(settings, events) as sender:
        for burst in range(10):
            for record in records(10, start=burst * 10):
                sender.submit(record)
                balanced(sender.stats())
            await asyncio.sleep(0.02)
            balanced(sender.stats())
    stats = sender.stats()
    balanced(stats)
    assert (stats["produced"], stats["pending"]) == (100, 0)
    assert stats["dropped_queue_full"] > 0
    assert stats["dropped_delivery"] > 0
    assert stats["sent"] == len(app.ids()) > 0
    totals = events.totals()
    for counter, event in [
        ("sent", "sent"), ("dropped_queue_full", "dropped_queue_full"),
        ("dropped_delivery", "dropped_delivery"), ("dropped_shutdown", "dropped_shutdown"),
        ("batches_sent", "batch_sent"), ("batches_failed", "batch_failed"), ("retries", "retry"),
    ]:  # fmt: skip
        assert totals[event] == stats[counter], counter


@pytest.mark.anyio
async def test_submit_never_raises(receiver: tuple[Receiver, str]) -> None:
    _, url = receiver

    def broken(name: str, count: int) -> None:
        raise RuntimeError("metrics backend down")

    sender = WebhookSender(WebhookSettings(url, queue_size=1), on_event=broken)
    sender.submit(records(1)[0])
    sender.submit(records(1)[0])  # overflow: the failing callback is not the caller's problem
    await sender.stop()  # never started: what is queued is dropped
    sender.submit(records(1)[0])  # after stop
    stats = sender.stats()
    assert (stats["dropped_queue_full"], stats["dropped_shutdown"], stats["pending"]) == (1, 2, 0)
    balanced(stats)
    with pytest.raises(RuntimeError, match="stopped"):
        await sender.start()


@pytest.mark.parametrize(
    "changes",
    [{"batch_size": 0}, {"queue_size": 0}, {"retries": -1}, {"interval": 0.0}, {"timeout": -1.0}],
)
def test_settings_reject_values_that_cannot_work(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="invalid"):
        WebhookSettings("http://127.0.0.1:9/usage", **changes)


def test_from_env_without_url_is_none() -> None:
    assert WebhookSettings.from_env({}) is None
    assert WebhookSettings.from_env({URL_ENV: "  "}) is None


def test_from_env_defaults_and_values() -> None:
    assert WebhookSettings.from_env({URL_ENV: "https://m.example/u"}) == WebhookSettings(
        "https://m.example/u"
    )
    env = {
        URL_ENV: " http://10.0.0.5:9000/usage?tenant=a ",
        KEY_ENV: KEY,
        "ONDEMAND_WEBHOOK_BATCH_SIZE": "50",
        "ONDEMAND_WEBHOOK_INTERVAL": "0.5s",
        "ONDEMAND_WEBHOOK_TIMEOUT": "2",
        "ONDEMAND_WEBHOOK_RETRIES": "0",
        "ONDEMAND_WEBHOOK_QUEUE": "500",
    }
    settings = WebhookSettings.from_env(env)
    assert settings == WebhookSettings(
        "http://10.0.0.5:9000/usage?tenant=a", KEY, 50, 0.5, 2.0, 0, 500
    )
    assert KEY not in repr(settings)
    # A key that is only whitespace is a mistake, not "no key": refused, never echoed.
    with pytest.raises(ConfigError, match=KEY_ENV):
        WebhookSettings.from_env({URL_ENV: "https://m.example/u", KEY_ENV: " \n"})
    assert WebhookSettings.from_env({URL_ENV: "https://m.example/u", KEY_ENV: ""}) == (
        WebhookSettings("https://m.example/u")
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (URL_ENV, "ftp://user:secret@m.example/u?token=secret"),
        (URL_ENV, "m.example/usage"),
        (URL_ENV, "http://"),
        (URL_ENV, "https://:8080/usage"),
        ("ONDEMAND_WEBHOOK_BATCH_SIZE", "0"),
        ("ONDEMAND_WEBHOOK_BATCH_SIZE", "ten"),
        ("ONDEMAND_WEBHOOK_INTERVAL", "0"),
        ("ONDEMAND_WEBHOOK_INTERVAL", "-1"),
        ("ONDEMAND_WEBHOOK_INTERVAL", "nan"),
        ("ONDEMAND_WEBHOOK_TIMEOUT", "soon"),
        ("ONDEMAND_WEBHOOK_TIMEOUT", "inf"),
        ("ONDEMAND_WEBHOOK_RETRIES", "-1"),
        ("ONDEMAND_WEBHOOK_RETRIES", "1.5"),
        ("ONDEMAND_WEBHOOK_QUEUE", "0"),
    ],
)
def test_from_env_rejects_bad_values(name: str, value: str) -> None:
    env = {URL_ENV: "https://m.example/usage", name: value}
    with pytest.raises(ConfigError) as error:
        WebhookSettings.from_env(env)
    assert name in str(error.value)
    assert "secret" not in str(error.value)


SENDS_WITHOUT_AIOHTTP = """
import asyncio, sys
sys.modules["aiohttp"] = None  # any import of it now fails
from ondemand.proxy.app import ProxyApp
from ondemand.proxy.webhook import WebhookSender, WebhookSettings

async def main():
    sender = WebhookSender(WebhookSettings(sys.argv[1], batch_size=1))
    await sender.start()
    sender.submit({"request_id": "without-aiohttp"})
    await sender.stop()
    assert sender.stats()["sent"] == 1, sender.stats()

asyncio.run(main())
"""


def test_the_server_needs_no_aiohttp(server: tuple[Receiver, str]) -> None:
    # The image installs the server extra only; aiohttp is a development dependency.
    import subprocess
    import sys

    app, url = server
    app.hits = []
    done = subprocess.run([sys.executable, "-c", SENDS_WITHOUT_AIOHTTP, url],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert app.ids() == ["without-aiohttp"]
