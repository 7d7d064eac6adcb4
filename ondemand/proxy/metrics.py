"""Prometheus metrics of one proxy, on a registry of its own (``GET /metrics``, admin key).

Label values come from bounded sets: routes from the route table, key names from the
configuration, and model names only for requests Ollama served (a client that invents
model names gets 404s, counted under "other", not a new series each).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ondemand.frontdoor import TURNED_AWAY, DoorCounts
from ondemand.modelnames import canonical
from ondemand.proxy.tally import UsageTally
from ondemand.proxy.usage import UsageRecord

CONTENT_TYPE = CONTENT_TYPE_LATEST.encode()
MAX_MODEL_LABELS = 64


class _FrontDoor:
    """The front door's own counts (ondemand/frontdoor.py), read when scraped."""

    def __init__(self, counts: DoorCounts) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        turned = CounterMetricFamily(
            "ondemand_front_door_turned_away",
            "Connections closed or refused before a request reached the proxy, by reason.",
            labels=["reason"],
        )
        for refused in TURNED_AWAY:
            turned.add_metric([refused.reason], self.counts.turned_away_everywhere(refused.reason))
        yield turned
        yield GaugeMetricFamily(
            "ondemand_connections_open",
            "Client connections open now, idle ones included.",
            value=self.counts.open_everywhere(),
        )


class Metrics:
    def __init__(
        self,
        inflight: Callable[[], float],
        last_request: Callable[[], float | None],
        door: DoorCounts | None = None,
    ) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        if door is not None:
            registry.register(_FrontDoor(door))
        self._models: set[str] = set()
        # Per-request usage: plain sums, made into series when scraped (tally.py).
        self.usage = UsageTally()
        registry.register(self.usage)
        self.rate_limited = Counter(
            "ondemand_rate_limited", "Requests answered 429, by key and limit.",
            ["key", "limit"], registry=registry,
        )  # fmt: skip
        self.auth_failures = Counter(
            "ondemand_auth_failures", "Requests refused for their credentials.",
            ["reason"], registry=registry,
        )  # fmt: skip
        self.upstream_errors = Counter(
            "ondemand_upstream_errors", "Ollama unreachable or cut off mid-answer.",
            ["kind"], registry=registry,
        )  # fmt: skip
        self.webhook = Counter(
            "ondemand_webhook_events", "Usage webhook: records sent and dropped, batches, retries.",
            ["event"], registry=registry,
        )  # fmt: skip
        Gauge(
            "ondemand_requests_in_flight", "Requests being forwarded now.", registry=registry
        ).set_function(inflight)
        Gauge(
            "ondemand_last_request_timestamp_seconds",
            "When the last real request (not /ping, /metrics, /ondemand/*) arrived or ended.",
            registry=registry,
        ).set_function(lambda: last_request() or 0.0)

    def _model_label(self, record: UsageRecord) -> str:
        if record.model is None:
            return ""
        name = canonical(record.model)
        if name in self._models:
            return name
        if record.status < 400 and len(self._models) < MAX_MODEL_LABELS:
            self._models.add(name)
            return name
        return "other"

    def observe(self, record: UsageRecord, route: str) -> None:
        labels = (route, record.status, record.key_name, self._model_label(record))
        ttft = record.ttft_ms
        self.usage.add(
            labels, record.prompt_tokens, record.completion_tokens,
            None if ttft is None else ttft / 1000, record.duration_ms / 1000,
        )  # fmt: skip

    def webhook_event(self, name: str, count: int) -> None:
        self.webhook.labels(name).inc(count)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
