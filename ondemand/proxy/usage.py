"""One record per forwarded request, and the running totals per key that status shows."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass


@dataclass(slots=True)
class UsageRecord:
    ts: float  # when the request arrived (Unix time)
    request_id: str
    key_name: str
    model: str | None
    route: str
    method: str
    status: int  # 499: the client went away first
    prompt_tokens: int | None
    completion_tokens: int | None
    duration_ms: float
    ttft_ms: float | None  # until the first byte of the response body

    def to_json(self) -> dict[str, object]:
        # Field by field: dataclasses.asdict deep-copies every value, a third of the cost of
        # metering a small request, for fields that are all immutable already.
        return {
            "ts": self.ts,
            "request_id": self.request_id,
            "key_name": self.key_name,
            "model": self.model,
            "route": self.route,
            "method": self.method,
            "status": self.status,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "duration_ms": round(self.duration_ms, 3),
            "ttft_ms": None if self.ttft_ms is None else round(self.ttft_ms, 3),
        }


@dataclass(slots=True)
class KeyTotals:
    requests: int = 0
    errors: int = 0
    rate_limited: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, record: UsageRecord) -> None:
        self.requests += 1
        if record.status >= 400:
            self.errors += 1
        self.prompt_tokens += record.prompt_tokens or 0
        self.completion_tokens += record.completion_tokens or 0


class Ledger:
    """Usage totals per key name, for /ondemand/status."""

    def __init__(self) -> None:
        self.keys: defaultdict[str, KeyTotals] = defaultdict(KeyTotals)

    def add(self, record: UsageRecord) -> None:
        self.keys[record.key_name].add(record)

    def rate_limited(self, key_name: str) -> None:
        self.keys[key_name].rate_limited += 1

    def view(self, key_name: str | None = None) -> dict[str, dict[str, int]]:
        if key_name is not None:
            return {key_name: asdict(self.keys.get(key_name, KeyTotals()))}
        return {name: asdict(totals) for name, totals in sorted(self.keys.items())}
