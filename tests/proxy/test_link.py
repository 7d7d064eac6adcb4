"""The link between the proxy's main process and a worker, over a real socket pair.

What the main process counts for a worker must come back to zero whatever the worker does:
a request cancelled while it waits to be admitted, a worker that dies holding slots.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from ondemand.errors import ConfigError
from ondemand.proxy import ProxyApp, ProxySettings
from ondemand.proxy.auth import Identity
from ondemand.proxy.link import LinkLost, MainSide, WorkerSide, residency_message
from ondemand.proxy.policy import Residency
from ondemand.proxy.responses import Refusal
from ondemand.proxy.usage import UsageRecord
from ondemand.proxy.worker import WorkerApp
from tests.conftest import ADMIN_KEY, USER_KEY

pytestmark = pytest.mark.anyio


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not condition():  # noqa: ASYNC110 - counts moved by messages on the socket
            await asyncio.sleep(0.005)


@pytest.fixture
async def linked(tmp_path: Path) -> AsyncIterator[tuple[ProxyApp, MainSide, WorkerSide]]:
    keys = tmp_path / "keys.yml"
    keys.write_text(json.dumps([{"name": "ci", "key": USER_KEY, "max_concurrency": 2}]))
    env = {"ONDEMAND_KEYS_FILE": str(keys), "ONDEMAND_ADMIN_KEY": ADMIN_KEY}
    app = ProxyApp(ProxySettings.from_env(env))
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    _, main = await loop.connect_accepted_socket(lambda: MainSide(app), ours)
    _, worker = await loop.connect_accepted_socket(lambda: WorkerSide(lambda _: None), theirs)
    yield app, main, worker
    main.close()
    worker.close()


def _ci(app: ProxyApp) -> Identity:
    return app.keys.authenticate([(b"authorization", f"Bearer {USER_KEY}".encode())])


def _record(name: str) -> UsageRecord:
    return UsageRecord(1.0, "r1", name, "llama3.2", "/api/chat", "POST", 200, 3, 5, 12.5, 4.0)


async def test_admission_is_counted_in_the_main_process_and_leaving_records_usage(
    linked: tuple[ProxyApp, MainSide, WorkerSide],
) -> None:
    app, _, worker = linked
    ci = _ci(app)
    assert await worker.admit(ci) is None
    assert await worker.admit(ci) is None
    assert app.limits.inflight == 2
    refused = await worker.admit(ci)
    assert isinstance(refused, Refusal)
    assert refused.status == 429
    assert refused.message == "this key allows 2 requests at once"
    assert dict(refused.headers)[b"retry-after"] == b"1"
    worker.leave(ci, _record("ci"))
    worker.leave(ci, None)  # a request that never got an answer to record
    await _until(lambda: app.limits.inflight == 0)
    totals = app.ledger.view()["ci"]
    assert (totals["requests"], totals["completion_tokens"], totals["rate_limited"]) == (1, 5, 1)
    assert app.activity.total == 2


async def test_a_request_cancelled_while_waiting_gives_its_slot_back(
    linked: tuple[ProxyApp, MainSide, WorkerSide],
) -> None:
    app, _, worker = linked
    waiting = asyncio.ensure_future(worker.admit(_ci(app)))
    await asyncio.sleep(0)  # asked, not yet answered
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await _until(lambda: app.activity.total == 1)  # the main process admitted it...
    await _until(lambda: app.limits.inflight == 0)  # ...and the late "yes" was given back


async def test_a_worker_that_dies_holding_slots_frees_them(
    linked: tuple[ProxyApp, MainSide, WorkerSide],
) -> None:
    app, main, worker = linked
    assert await worker.admit(_ci(app)) is None
    assert await worker.admit(_ci(app)) is None
    assert app.limits.inflight == 2
    worker.close()
    await main.closed
    assert app.limits.inflight == 0
    with pytest.raises(LinkLost):
        await worker.admit(_ci(app))


async def test_a_run_key_released_in_the_main_process_is_refused_to_a_worker(
    linked: tuple[ProxyApp, MainSide, WorkerSide],
) -> None:
    app, _, worker = linked
    lease, key = app.leases.acquire("org/repo/1/job/1", 600, run_key=True)
    assert key is not None
    # The worker holds an empty lease book: it reads the key's claim, the main process
    # says whether its lease still lives.
    holder = app.keys.authenticate([(b"x-api-key", key.encode())], app.leases.run_key)
    assert await worker.admit(holder) is None
    worker.leave(holder, None)
    app.leases.release(lease.id)
    refused = await worker.admit(holder)
    assert isinstance(refused, Refusal)
    assert (refused.status, refused.message, refused.code) == (401, "invalid API key",
                                                               "invalid_api_key")  # fmt: skip
    await _until(lambda: app.limits.inflight == 0)


async def test_a_message_it_cannot_read_does_not_end_the_link(
    linked: tuple[ProxyApp, MainSide, WorkerSide], caplog: pytest.LogCaptureFixture
) -> None:
    app, _, worker = linked
    assert worker.transport is not None
    worker.transport.write(b'not json\n[{"count": ["no_such_metric", "x"]}, 7]\n')
    assert await worker.admit(_ci(app)) is None
    assert "link message not understood" in caplog.text
    assert app.limits.inflight == 1


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("0", "ONDEMAND_PROXY_WORKERS"),
        ("two", "ONDEMAND_PROXY_WORKERS"),
        ("65", "ONDEMAND_PROXY_WORKERS must be at most 64, got 65"),
    ],
)
def test_a_worker_count_out_of_range_stops_the_server_with_its_name(value: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        ProxySettings.from_env({"ONDEMAND_ADMIN_KEY": ADMIN_KEY, "ONDEMAND_PROXY_WORKERS": value})
    settings = ProxySettings.from_env(
        {"ONDEMAND_ADMIN_KEY": ADMIN_KEY, "ONDEMAND_PROXY_WORKERS": "64"}
    )
    assert settings.workers == 64


async def test_what_the_main_process_says_unasked_reaches_the_workers_app(
    linked: tuple[ProxyApp, MainSide, WorkerSide], tmp_path: Path
) -> None:
    app, main, worker = linked
    hello = {"run_key_secret": "00" * 32, "relay": str(tmp_path / "main.sock"), "residency": None}
    settings = app.settings
    hand = WorkerApp(settings, worker, hello)
    assert hand.residency() is None
    main.write({"residency": residency_message(Residency(frozenset({"llama3.2:latest"}), -1))})
    await _until(lambda: hand.residency() is not None)
    assert hand.residency() == Residency(frozenset({"llama3.2:latest"}), -1)
    # The keys file loses its key: a reload the main process passes on drops it at once.
    keys = Path(settings.env["ONDEMAND_KEYS_FILE"])
    other = json.dumps([{"name": "other", "key": "odk_other_0123456789abcdef"}])
    await asyncio.to_thread(keys.write_text, other)
    assert set(hand.keys.names()) == {"ci", "admin"}
    main.write({"reload": 1})
    await _until(lambda: set(hand.keys.names()) == {"other", "admin"})
