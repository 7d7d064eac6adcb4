"""Injected failures of the emulated clouds: users rehearse the paths that real clouds take
only on a bad day (rate limits, 5xx, slow starts, no capacity, a create that half-worked).

One ``FaultSet`` per emulated API (``ovh``, ``runpod``), configured with JSON: at start-up
through ``ONDEMAND_SANDBOX_FAULTS`` and at run time through ``POST /_sandbox/faults`` (both
take the same document, keyed by API)::

    {"ovh": {
        "http": [{"route": "POST /v1/app", "status": 429, "times": 2, "retry_after": 3},
                 {"route": "GET /v1/app*", "status": 503},
                 {"route": "PUT /v1/app/*/start", "status": 500, "message": "boom"}],
        "slow": {"multiplier": 5, "seconds": {"QUEUED": 2, "SCALING": 10}},
        "no_capacity": 1,
        "created_then_500": 1},
     "runpod": {
        "http": [{"route": "POST /v2/serverless", "status": 429}],
        "slow": {"seconds": {"PROVISIONING": 5}},
        "throttled": 1, "crash": 1, "zero_gpus": 1, "created_then_500": 1}}

Kinds every API has:

- ``http``: the next ``times`` (default 1) requests whose route matches answer ``status``
  (default 503; any 400-599) with the API's error body (``message`` defaults to the usual
  text for the status). ``route`` is ``"METHOD PATH"`` or just ``PATH`` (any method); the
  path is the API's own (``/v1/app``, not ``/ovh/v1/app``) and ``*`` matches any
  characters, ``/`` included. 429 answers carry ``Retry-After`` (``retry_after`` seconds,
  default 1); other statuses carry it only when it is given.
- ``slow``: transitions take ``multiplier`` times longer, or the given ``seconds`` per state
  (OVH: ``QUEUED``, ``INITIALIZING``, ``STOPPING``, ``DELETING``, and ``SCALING``, a minimum
  on top of the wait for the readiness probe; RunPod: a pod's ``PROVISIONING`` and
  ``STARTING``, a worker's ``INITIALIZING``, before its server starts). Stays until
  cleared.
- ``created_then_500``: the next N creates store the resource (it starts as usual) but
  answer 500, as when a request times out behind a gateway after the platform accepted it.

OVH's own: ``no_capacity``, the next N starts (a create starts the app too) end ``FAILED``
with ``info.code`` ``APP_FAILED`` and a no-GPU/quota message, without running anything;
``platform_error``, the next N starts end ``ERROR`` (a failure on OVH's side, after which
OVH's troubleshooting guide says to redeploy), without running anything.

RunPod's own (see ``ondemand.sandbox.runpod``): ``throttled``, the next N serverless workers
never get a GPU (THROTTLED, nothing runs); ``crash``, the next N workers' servers exit at
once, again and again (UNHEALTHY, a crash loop); ``zero_gpus``, the next N pod starts from
EXITED are refused because the pod's machine has no free GPU; ``no_capacity``, the next N
pod creates answer 400 because the GPU and data-center combination cannot be placed;
``insufficient_balance``, the next N pod creates answer 402; ``pool_forbidden``, the next N
pod creates answer 403 (the key or account may not use that GPU); ``flashboot_rename``, the
next N endpoints created with FlashBoot get " -fb" appended to their name, as RunPod's
backend has done.

``POST`` adds to what is configured (rules are appended, counts added, ``slow`` replaced);
``GET`` shows what is left; ``DELETE`` clears everything.
"""

from __future__ import annotations

import fnmatch
import http
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

TIMED_STATES = ("QUEUED", "INITIALIZING", "SCALING", "STOPPING", "DELETING")
"""The OVH emulator's timed states."""


@dataclass(frozen=True, slots=True)
class Kinds:
    """What one API's fault set accepts: its counted faults and its timed states."""

    counters: tuple[str, ...]
    states: tuple[str, ...]


KINDS = {
    "ovh": Kinds(("no_capacity", "created_then_500", "platform_error"), TIMED_STATES),
    "runpod": Kinds(
        (
            "created_then_500",
            "throttled",
            "crash",
            "zero_gpus",
            "no_capacity",
            "insufficient_balance",
            "pool_forbidden",
            "flashboot_rename",
        ),
        ("PROVISIONING", "STARTING", "INITIALIZING"),
    ),
}
_MESSAGES = {
    429: "Too many requests, please retry later",
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service unavailable, please retry later",
    504: "Gateway timeout",
}
_HTTP_KEYS = {"route", "status", "times", "message", "retry_after"}


def default_message(status: int) -> str:
    if status in _MESSAGES:
        return _MESSAGES[status]
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _whole(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be a whole number ≥ {minimum}, got {value!r}")
    return value


def _seconds(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{name} must be a number of seconds ≥ 0, got {value!r}")
    return float(value)


@dataclass
class HttpFault:
    route: str
    status: int = 503
    times: int = 1
    message: str | None = None
    retry_after: float | None = None

    def __post_init__(self) -> None:
        method, sep, path = self.route.strip().partition(" ")
        if not sep:
            method, path = "*", method
        self._method = method.strip().upper() or "*"
        self._path = path.strip()
        if not self._path.startswith(("/", "*")):
            raise ValueError(f"route {self.route!r}: expected 'METHOD /path' or '/path'")

    @classmethod
    def from_json(cls, data: object) -> HttpFault:
        if not isinstance(data, dict):
            raise ValueError("each http fault must be an object with at least a 'route'")
        unknown = set(data) - _HTTP_KEYS
        if unknown:
            raise ValueError(f"unknown http fault field(s): {', '.join(sorted(unknown))}")
        route = data.get("route")
        if not isinstance(route, str) or not route.strip():
            raise ValueError("an http fault needs a 'route' such as 'POST /v1/app'")
        status = data.get("status", 503)
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            raise ValueError(f"status must be an HTTP error status (400-599), got {status!r}")
        message = data.get("message")
        if message is not None and not isinstance(message, str):
            raise ValueError("message must be a string")
        retry = data.get("retry_after")
        return cls(
            route=route,
            status=status,
            times=_whole(data.get("times", 1), "times", 1),
            message=message,
            retry_after=None if retry is None else _seconds(retry, "retry_after"),
        )

    def matches(self, method: str, path: str) -> bool:
        if self._method != "*" and self._method != method.upper():
            return False
        return fnmatch.fnmatchcase(path, self._path)

    @property
    def text(self) -> str:
        return self.message if self.message is not None else default_message(self.status)

    @property
    def retry_after_header(self) -> str | None:
        seconds = self.retry_after
        if seconds is None and self.status == 429:
            seconds = 1
        if seconds is None:
            return None
        return str(max(0, round(seconds)))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"route": self.route, "status": self.status, "times": self.times}
        if self.message is not None:
            out["message"] = self.message
        if self.retry_after is not None:
            out["retry_after"] = self.retry_after
        return out


@dataclass
class Slow:
    multiplier: float = 1.0
    seconds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: object, states: tuple[str, ...] = TIMED_STATES) -> Slow:
        if not isinstance(data, dict):
            raise ValueError("slow must be an object: {'multiplier': n, 'seconds': {STATE: s}}")
        unknown = set(data) - {"multiplier", "seconds"}
        if unknown:
            raise ValueError(f"unknown slow field(s): {', '.join(sorted(unknown))}")
        seconds = data.get("seconds", {})
        if not isinstance(seconds, dict):
            raise ValueError("slow.seconds must be an object such as {'QUEUED': 2}")
        parsed: dict[str, float] = {}
        for state, value in seconds.items():
            if state not in states:
                raise ValueError(f"slow.seconds: {state!r} is not one of {', '.join(states)}")
            parsed[state] = _seconds(value, f"slow.seconds.{state}")
        return cls(_seconds(data.get("multiplier", 1.0), "slow.multiplier"), parsed)

    def to_json(self) -> dict[str, Any]:
        return {"multiplier": self.multiplier, "seconds": dict(self.seconds)}


class FaultSet:
    """The faults of one emulated API. Thread-safe: tests change it from their own thread
    while the server's event loop consumes it."""

    def __init__(self, api: str = "ovh") -> None:
        self.api = api
        self.kinds = KINDS[api]
        self._lock = threading.Lock()
        self.http: list[HttpFault] = []
        self.slow = Slow()
        self.counts = dict.fromkeys(self.kinds.counters, 0)

    @property
    def no_capacity(self) -> int:
        return self.counts.get("no_capacity", 0)

    @property
    def created_then_500(self) -> int:
        return self.counts.get("created_then_500", 0)

    def add(self, data: Mapping[str, Any]) -> None:
        """Add a JSON fault document (see the module docstring); ValueError if invalid."""
        known = {"http", "slow", *self.kinds.counters}
        unknown = set(data) - known
        if unknown:
            raise ValueError(
                f"unknown fault kind(s): {', '.join(sorted(unknown))} "
                f"(known: {', '.join(sorted(known))})"
            )
        rules = data.get("http", [])
        if not isinstance(rules, list):
            raise ValueError("http must be a list of {'route', 'status', 'times'} objects")
        parsed = [HttpFault.from_json(rule) for rule in rules]
        slow = Slow.from_json(data["slow"], self.kinds.states) if "slow" in data else None
        counts = {name: _whole(data.get(name, 0), name, 0) for name in self.kinds.counters}
        with self._lock:
            self.http.extend(parsed)
            if slow is not None:
                self.slow = slow
            for name, count in counts.items():
                self.counts[name] += count

    def clear(self) -> None:
        with self._lock:
            self.http.clear()
            self.slow = Slow()
            self.counts = dict.fromkeys(self.kinds.counters, 0)

    def take_http(self, method: str, path: str) -> HttpFault | None:
        """Use up one answer of the first rule that matches."""
        with self._lock:
            for rule in self.http:
                if rule.matches(method, path):
                    rule.times -= 1
                    if rule.times <= 0:
                        self.http.remove(rule)
                    return rule
        return None

    def take(self, name: str) -> bool:
        """Use up one of the counted fault ``name``; False when none is armed."""
        with self._lock:
            if self.counts.get(name, 0) > 0:
                self.counts[name] -= 1
                return True
            return False

    def take_no_capacity(self) -> bool:
        return self.take("no_capacity")

    def take_platform_error(self) -> bool:
        return self.take("platform_error")

    def take_created_then_500(self) -> bool:
        return self.take("created_then_500")

    def duration(self, state: str, base: float) -> float:
        with self._lock:
            explicit = self.slow.seconds.get(state)
            return explicit if explicit is not None else base * self.slow.multiplier

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {
                "http": [rule.to_json() for rule in self.http],
                "slow": self.slow.to_json(),
                **self.counts,
            }


class SandboxFaults:
    """The fault sets of every emulated API, keyed by the API's name (its mount)."""

    def __init__(self, apis: tuple[str, ...]) -> None:
        self.sets = {name: FaultSet(name) for name in apis}

    def __getitem__(self, api: str) -> FaultSet:
        return self.sets[api]

    def add(self, document: object) -> None:
        """Validate the whole document first, so an invalid one changes nothing."""
        if isinstance(document, str | bytes):
            try:
                document = json.loads(document or "{}")
            except ValueError as exc:
                raise ValueError(f"faults are not valid JSON: {exc}") from None
        if not isinstance(document, dict):
            raise ValueError('faults must be a JSON object keyed by API, e.g. {"ovh": {...}}')
        for api, data in document.items():
            if api not in self.sets:
                known = ", ".join(sorted(self.sets))
                raise ValueError(f"unknown API {api!r} in faults (known: {known})")
            if not isinstance(data, dict):
                raise ValueError(f"faults for {api!r} must be an object")
            FaultSet(api).add(data)
        for api, data in document.items():
            self.sets[api].add(data)

    def clear(self) -> None:
        for faults in self.sets.values():
            faults.clear()

    def to_json(self) -> dict[str, Any]:
        return {name: faults.to_json() for name, faults in self.sets.items()}
