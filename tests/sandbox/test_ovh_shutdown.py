"""Closing the sandbox in the middle of an app's stop: every socket the OVH emulator opened
(the readiness probes' connections, the balancer's listener, its connections both ways) is
closed by the time the sandbox has closed, and no app process is left."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ondemand.processes import free_port, port_free
from ondemand.sandbox.ovh.balancer import Balancer
from ondemand.sandbox.server import sandbox_server
from ondemand.serving import BackgroundServer
from tests.cloud import FAST_APPS, Launched, Ovh, wait
from tests.sandbox.test_ovh_balancer import Backend
from tests.sandbox.test_ovh_replicas import AUTH, KEY, listed, until_available, warm

# 20 tokens a second for 200 tokens: stopped, the replica that streams drains for its
# ONDEMAND_DRAIN_TIMEOUT (5 s), so the app's stop is under way for seconds.
PACED = {**FAST_APPS, "OLLAMA_EMULATOR_TOKENS_PER_SECOND": "20"}
CHAT = {
    "model": "llama3.2",
    "messages": [{"role": "user", "content": "hi"}],
    "options": {"num_predict": 200},
}


def _resource_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


def _close_while_stopping(state_dir: Path, launched: Launched, mp: pytest.MonkeyPatch) -> None:
    """A two-replica app streams an answer through its balancer; the app is stopped, and
    the sandbox closes while that stop drains the stream."""
    with (
        httpx.Client(headers=AUTH, timeout=30, trust_env=False) as http,
        contextlib.ExitStack() as stack,
    ):
        options = {"transition_seconds": 0.05, "probe_period": 0.2, "stop_grace": 10.0}
        running = stack.enter_context(sandbox_server(state_dir, app_env=PACED, **options))
        launched.spy_on(running.sandbox, mp)
        client = stack.enter_context(contextlib.closing(Ovh(running)))
        app = client.create(name="multi", envVars=KEY, scalingStrategy={"fixed": {"replicas": 2}})
        until_available(client, app["id"], 2)
        warm(running, app["id"], 2)
        with http.stream("POST", app["status"]["url"] + "/api/chat", json=CHAT) as answer:
            assert answer.status_code == 200
            next(answer.iter_lines())  # a replica streams
            assert client.http.put(f"/v1/app/{app['id']}/stop").status_code == 204
            # The stop has taken the replicas out of the app (its close began), not ended.
            wait(
                lambda: listed(running, app["id"]),
                lambda seen: seen["state"] == "STOPPING" and seen["replicas"] == [],
            )
            stack.close()  # the sandbox, while the stream is still open
        assert running.sandbox.runner.processes == {}


def test_closing_the_sandbox_while_an_app_stops_leaves_no_socket_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shutdown cuts the stop short, and must still close what the app's replicas held:
    before, the half-done stop left the probes' client (its keep-alive connections to each
    replica) and the balancer open until the garbage collector found them."""
    gc.collect()  # what earlier tests left is theirs
    launched = Launched()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        _close_while_stopping(tmp_path / "sandbox", launched, monkeypatch)
        gc.collect()  # the sandbox's objects are all garbage now: any left open warns
    assert _resource_warnings(caught) == []
    launched.assert_all_gone()


@pytest.fixture
def streaming() -> Iterator[tuple[Backend, int]]:
    app = Backend()
    with BackgroundServer(app) as server:
        yield app, server.port


def test_a_balancer_whose_close_is_cancelled_still_lets_go_of_everything(
    streaming: tuple[Backend, int],
) -> None:
    """Cancelled while its grace waits for a stream, ``close`` ends that request at once
    (the replica sees its client go) and closes the rest before the cancellation goes on,
    rather than leave the request forwarding with nothing left to stop it."""
    app, live = streaming
    port = free_port()

    async def scenario() -> None:
        balancer = Balancer(lambda: [(0, live)], grace=30)
        balancer.listen(port)
        async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
            url = f"http://127.0.0.1:{port}/stream"
            async with http.stream("GET", url) as stream:
                chunks = stream.aiter_raw()
                assert (await anext(chunks)).startswith(b"tick")
                closing = asyncio.ensure_future(balancer.close())
                # Its listener closed: the server's graceful stop now waits for the stream.
                # (Polled: nothing signals it.)
                while not port_free(port):  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
                assert not closing.done()
                closing.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await closing
                with pytest.raises(httpx.RemoteProtocolError):  # the stream was cut
                    async for _ in chunks:
                        pass
        assert balancer.closed
        await balancer.close()  # again: nothing left to wait for

    gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        asyncio.run(scenario())
        gc.collect()
    assert app.disconnected.wait(10)  # the balancer's connection to the replica closed
    assert _resource_warnings(caught) == []


@pytest.mark.parametrize("when", ["running", "stopping"])
def test_the_blocking_kill_closes_the_sockets_too_while_the_loop_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """``Sandbox.close`` falls back on the engine's blocking ``kill`` when waiting for its
    ``aclose`` timed out; the loop still runs then, so the groups' clients and balancers
    are closed on it, whether the app was up or a stop of it under way."""
    gc.collect()
    launched = Launched()

    def scenario() -> None:
        options = {"transition_seconds": 0.05, "probe_period": 0.2, "stop_grace": 10.0}
        with sandbox_server(tmp_path / "sandbox", app_env=FAST_APPS, **options) as running:
            launched.spy_on(running.sandbox, monkeypatch)
            with contextlib.closing(Ovh(running)) as client:
                app = client.create(
                    name="multi", envVars=KEY, scalingStrategy={"fixed": {"replicas": 2}}
                )
                until_available(client, app["id"], 2)
                warm(running, app["id"], 2)
                if when == "stopping":
                    assert client.http.put(f"/v1/app/{app['id']}/stop").status_code == 204
                    wait(
                        lambda: listed(running, app["id"]),
                        lambda seen: seen["state"] == "STOPPING" and seen["replicas"] == [],
                    )
            running.sandbox.ovh.engine.kill()
            assert running.sandbox.runner.processes == {}

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        scenario()
        gc.collect()
    assert _resource_warnings(caught) == []
    launched.assert_all_gone()
