"""One HTTP client per vendor API: timeouts always set, retries where they are safe, and
failures turned into ondemand's errors at this boundary.

429 and 5xx answers and transport errors are retried with exponential backoff and jitter
(a ``Retry-After`` is honoured), within a time budget; other 4xx answers are not retried.
A request that may have taken effect although it failed (a create answering 500) is not
retried here: the provider checks what happened first.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import tenacity

from ondemand import __version__

log = logging.getLogger("ondemand.providers")

RETRYABLE = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 60.0


class ApiError(Exception):
    """The vendor answered with an error status (after any retries)."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after


class ApiUnreachable(Exception):
    """The vendor API could not be reached (after any retries)."""


def retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("retry-after")
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(raw) if raw else None
        if parsed is None:
            return None
        seconds = parsed.timestamp() - time.time()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class ApiClient:
    """A vendor API at ``base_url`` with a bearer token."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        error_message: Callable[[httpx.Response], str],
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
        retry_budget: float = 60.0,
        deadline: float | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._error_message = error_message
        self.retry_budget = retry_budget
        # A command's own deadline (time.monotonic()): no retry sleeps past it, whatever the
        # budget of the one request says.
        self.deadline = deadline
        self.calls = 0  # requests sent, retries included (benchmarks count them)
        # Public for event hooks: tests and debugging see exactly what was sent.
        self.http = httpx.Client(
            base_url=self.base_url,
            headers={
                "Authorization": f"Bearer {token}",
                "User-Agent": f"ollama-ondemand/{__version__}",
                "Accept": "application/json",
            },
            timeout=httpx.Timeout(timeout, connect=10.0),
            transport=transport,
            follow_redirects=False,  # a redirect must not carry the token elsewhere
            trust_env=False,
        )

    def close(self) -> None:
        self.http.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        self.calls += 1
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiUnreachable(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code >= 400:
            raise ApiError(
                response.status_code, self._error_message(response), retry_after(response)
            )
        return response

    def request(
        self,
        method: str,
        path: str,
        *,
        json: object = None,
        params: Mapping[str, Any] | None = None,
        retry: bool = True,
    ) -> httpx.Response:
        """Send one request; with ``retry``, retry what is safe to retry within the budget."""
        kwargs: dict[str, Any] = {"params": params}
        if json is not None:
            kwargs["json"] = json
        if not retry:
            return self._send(method, path, **kwargs)
        response: httpx.Response = self.retrying()(self._send, method, path, **kwargs)
        return response

    def retrying(self) -> Any:
        """The retry policy, for callers that need to retry a step of their own."""

        def wait(state: tenacity.RetryCallState) -> float:
            outcome = state.outcome
            exc = outcome.exception() if outcome is not None else None
            if isinstance(exc, ApiError) and exc.retry_after is not None:
                return exc.retry_after
            return backoff(state)

        backoff = tenacity.wait_exponential(multiplier=0.5, max=10.0) + tenacity.wait_random(0, 0.5)
        return tenacity.Retrying(
            retry=tenacity.retry_if_exception(_retryable),
            wait=wait,
            stop=tenacity.stop_before_delay(self.retry_budget) | _StopAt(self.deadline),
            before_sleep=_log_retry,
            reraise=True,
        )


class _StopAt(tenacity.stop.stop_base):
    """Stop before a sleep would end past ``deadline`` (a time.monotonic() value)."""

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        if self.deadline is None:
            return False
        return time.monotonic() + (retry_state.upcoming_sleep or 0.0) >= self.deadline


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, ApiUnreachable) or (
        isinstance(exc, ApiError) and exc.status in RETRYABLE
    )


def _log_retry(state: Any) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    seconds = state.next_action.sleep if state.next_action is not None else 0
    log.warning("provider API: %s; retrying in %.1fs", exc, seconds)
