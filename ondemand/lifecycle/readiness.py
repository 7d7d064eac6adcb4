"""Waiting for a deployment to be ready: the provider's view (allocated, running) and the
server's own (``/ping``: starting, warming, ready; ``/ondemand/status``: each model).

One ``ReadyWait`` follows one start: it remembers what it has seen (when the server first
answered, whether it was ever alive, the URL it showed), prints each change once, and
takes the job's lease as soon as the server answers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ondemand.errors import ConfigError, OndemandError, ProviderError, UnhealthyError
from ondemand.leasing import Restart
from ondemand.providers.base import Deployment, Status, wait_until

if TYPE_CHECKING:
    from ondemand.leasing import LeaseTaker
    from ondemand.lifecycle.deployment import Progress
    from ondemand.providers.base import Provider

# Told the deployment as soon as its URL is known, before any wait (Actions outputs).
Announce = Callable[[Deployment], None]
# Only our server answers /ping with these; anything else came from a gateway in front.
SERVER_PINGS = frozenset({200, 204, 503})


def no_announce(_: Deployment) -> None:
    pass


@dataclass
class Readiness:
    """What the server says about itself while the lifecycle waits for it."""

    ping: int | None = None  # None: not answering yet
    status: dict[str, Any] = field(default_factory=dict)  # /ondemand/status, when a key is known
    ping_status: str | None = None  # the "status" word of /ping's own answer

    @property
    def failed(self) -> bool:
        """The server itself says a model cannot be made ready (not a gateway's 503)."""
        return self.ping == 503 and "failed" in (self.ping_status, self.server.get("phase"))

    @property
    def server(self) -> dict[str, Any]:
        server = self.status.get("server")
        return server if isinstance(server, dict) else {}

    def __str__(self) -> str:
        if self.ping is None:
            return "the server is not answering yet"
        phase = self.server.get("phase") or {200: "ready", 204: "starting"}.get(self.ping, "")
        return f"/ping {self.ping} ({phase})" if phase else f"/ping {self.ping}"


def read_readiness(
    url: str, api_key: str | None, headers: Mapping[str, str] | None = None
) -> Readiness:
    import httpx

    try:
        answer = httpx.get(url + "/ping", headers=dict(headers or {}), timeout=5)
    except httpx.HTTPError:
        return Readiness()
    ping = answer.status_code
    try:
        word = answer.json().get("status") if answer.content else None
    except (ValueError, AttributeError):
        word = None
    status: dict[str, Any] = {}
    # A gateway in front (RunPod's holds each request until a worker is ready) answers
    # other codes; asking it for the status too would only wait again.
    if api_key and ping in SERVER_PINGS:
        try:
            response = httpx.get(
                url + "/ondemand/status",
                headers={**(headers or {}), "X-API-Key": api_key},
                timeout=5,
            )
            if response.status_code == 200:
                status = response.json()
        except (httpx.HTTPError, ValueError):
            pass
    return Readiness(ping, status, word if isinstance(word, str) else None)


def describe_models(server: Mapping[str, Any]) -> list[str]:
    lines = []
    for model in server.get("models") or []:
        phase = model.get("phase")
        text = f"{model.get('name')}: {phase}"
        if phase == "pulling" and model.get("progress") is not None:
            text += f" {round(float(model['progress']) * 100)}%"
        if phase == "warm" and model.get("on_gpu") is not None:
            text += " (GPU)" if model["on_gpu"] else " (CPU)"
        if model.get("error"):
            text += f": {model['error']}"
        lines.append(text)
    return lines


@dataclass
class Waiting:
    """One look at a deployment on its way to ready: the provider's view and the server's."""

    provider: str
    deployment: Deployment
    readiness: Readiness

    def lines(self) -> list[str]:
        state = self.deployment.vendor_state or self.deployment.status.value
        head = f"{self.provider}: {state}"
        if self.deployment.detail:
            head += f" ({self.deployment.detail})"
        if self.deployment.status is not Status.RUNNING:
            return [head]
        return [head, str(self.readiness), *describe_models(self.readiness.server)]

    def __str__(self) -> str:
        return "; ".join(self.lines())


class Reporter:
    """Prints what changed while waiting, once each, not the same line every poll."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.seen: set[str] = set()

    def __call__(self, state: Waiting, elapsed: float) -> None:
        for line in state.lines():
            if line not in self.seen:
                self.seen.add(line)
                self.progress(f"  [{elapsed:5.1f}s] {line}")


class ReadyWait:
    """Polls one starting deployment until ``/ping`` is 200 and the lease is settled."""

    def __init__(
        self,
        provider: Provider,
        name: str,
        *,
        api_key: str | None,
        progress: Progress,
        announce: Announce,
        announced: bool,
        taker: LeaseTaker | None,
    ) -> None:
        self.provider = provider
        self.name = name
        self.api_key = api_key
        self.progress = progress
        self.announce = announce
        self.announced = announced
        self.taker = taker
        self.reporter = Reporter(progress)
        self.front_door = provider.gateway_headers()
        self.began = time.monotonic()
        self.first_answer: float | None = None  # when the server first answered /ping
        self.seen_alive = False
        self.shown_url = False

    def wait(self, timeout: float) -> Waiting:
        return wait_until(
            self.probe,
            self.done,
            timeout=timeout,
            what=f"{self.name} to be ready",
            # Fast at first (a local or cached start is ready within a second or two), and
            # never more than a second apart, so 'up' returns soon after the server is ready.
            interval=0.1,
            max_interval=1.0,
            on_poll=self.reporter,
        )

    def done(self, result: Waiting) -> bool:
        return result.readiness.ping == 200 and (self.taker is None or self.taker.settled)

    def probe(self) -> Waiting:
        provider, name = self.provider, self.name
        state = provider.status(name)
        if state.status in (Status.PENDING, Status.STARTING, Status.RUNNING):
            self.seen_alive = True
        if self.taker is not None and self._stopped_under_us(state):
            raise Restart(f"it went {state.vendor_state or state.status.value} while starting")
        if state.status in (Status.STOPPED, Status.FAILED, Status.ABSENT):
            raise server_died(provider, state)
        if state.url and not self.shown_url:
            self.shown_url = True
            self.progress(f"url: {state.url} (waiting until it is ready)")
            if not self.announced:
                self.announce(state)
        # Before the provider reports it running, whatever answers at the URL (a gateway's
        # 503, nothing) says nothing about the server.
        running = state.status is Status.RUNNING and state.url
        ready = (
            read_readiness(state.url, self.api_key, self.front_door)
            if running and state.url
            else Readiness()
        )
        problem = provider.readiness_problem(state, ready.ping)
        if problem is not None:
            raise problem
        if ready.ping is not None and self.first_answer is None:
            self.first_answer = time.monotonic()
        if ready.failed:
            raise unhealthy(name, ready)
        if self.taker is not None and state.url and ready.ping in SERVER_PINGS:
            # As soon as the server answers, even while it warms: from then on no other
            # job's cleanup can stop it under this one.
            self.taker.attempt(state)
        return Waiting(provider.name, state, ready)

    def _stopped_under_us(self, state: Deployment) -> bool:
        """A clean stop while 'up' waits: another job's cleanup won (it drained first)."""
        if state.status is Status.STOPPING:
            return True
        # A local server that stops on its own has crashed; elsewhere a crash is FAILED.
        clean = self.provider.name != "local" or (
            self.taker is not None and self.taker.saw_draining
        )
        return state.status is Status.STOPPED and self.seen_alive and clean


def server_died(provider: Provider, state: Deployment) -> Exception:
    if state.status is Status.FAILED:
        failure = provider.explain_failure(state)
        if failure is not None:
            return failure
    return _failure_from_log(provider, state)


def _failure_from_log(provider: Provider, state: Deployment) -> OndemandError:
    tail = provider.log_tail(state) or ""
    error_line = next(
        (
            line[len("error: ") :]
            for line in reversed(tail.splitlines())
            if line.startswith("error:")
        ),
        None,
    )
    if error_line:
        return ConfigError(
            f"the server stopped during start-up: {error_line}",
            hint=provider.log_hint(state),
        )
    return ProviderError(
        f"the server stopped during start-up ({state.status.value})",
        cause=("its log ends with:\n" + tail) if tail else state.detail,
        hint=provider.log_hint(state),
    )


def unhealthy(name: str, ready: Readiness) -> UnhealthyError:
    problems = ready.server.get("problems") or []
    return UnhealthyError(
        f"{name} is unhealthy: " + ("; ".join(problems) if problems else str(ready)),
        cause="a model could not be pulled or loaded, or landed on the CPU while a GPU was "
        "required",
        hint="fix the model list or the GPU type, then run 'ondemand up' again "
        "('ondemand status' shows each model)",
    )
