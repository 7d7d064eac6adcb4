"""The usage series on /metrics, read back with Prometheus' own text parser."""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families

from ondemand.proxy.metrics import Metrics
from ondemand.proxy.usage import UsageRecord


def _record(route: str, status: int, key: str, **fields: object) -> UsageRecord:
    values: dict[str, object] = {
        "ts": time.time(), "request_id": "r", "key_name": key, "model": "llama3.2:1b",
        "route": route, "method": "POST", "status": status, "prompt_tokens": None,
        "completion_tokens": None, "duration_ms": 1.0, "ttft_ms": None, **fields,
    }  # fmt: skip
    return UsageRecord(**values)  # type: ignore[arg-type]


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.exposition().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_requests_tokens_and_latencies_add_up_per_label_set() -> None:
    metrics = Metrics(inflight=lambda: 0, last_request=lambda: None)
    # A TTFT equal to a bucket's bound counts in that bucket ("le"); one above all of them
    # only in +Inf; tokens add up per key and model whatever the route and status.
    metrics.observe(_record("/api/chat", 200, "ci", prompt_tokens=9, completion_tokens=50,
                            ttft_ms=10.0, duration_ms=50.0), "/api/chat")  # fmt: skip
    metrics.observe(_record("/api/chat", 200, "ci", prompt_tokens=1, completion_tokens=2,
                            ttft_ms=400_000.0, duration_ms=700_000.0), "/api/chat")  # fmt: skip
    metrics.observe(_record("/api/generate", 500, "ci", prompt_tokens=5), "/api/generate")
    metrics.observe(_record("/api/chat", 200, "other-key"), "/api/chat")
    got = _samples(metrics)
    chat = (("model", "llama3.2:1b"), ("route", "/api/chat"))

    def requests(route: str, status: str, key: str) -> float:
        labels = {"key": key, "model": "llama3.2:1b", "route": route, "status": status}
        return got[("ondemand_requests_total", tuple(sorted(labels.items())))]

    assert requests("/api/chat", "200", "ci") == 2
    assert requests("/api/generate", "500", "ci") == 1
    assert requests("/api/chat", "200", "other-key") == 1
    ci = (("key", "ci"), ("model", "llama3.2:1b"))
    assert got[("ondemand_tokens_total", (("direction", "prompt"), *ci))] == 15
    assert got[("ondemand_tokens_total", (("direction", "completion"), *ci))] == 52
    other = (("key", "other-key"), ("model", "llama3.2:1b"))
    assert got[("ondemand_tokens_total", (("direction", "prompt"), *other))] == 0

    def bucket(name: str, le: str) -> float:
        return got[(f"{name}_bucket", tuple(sorted({"le": le, **dict(chat)}.items())))]

    ttft = "ondemand_time_to_first_byte_seconds"
    assert bucket(ttft, "0.01") == 1
    assert bucket(ttft, "300.0") == 1
    assert bucket(ttft, "+Inf") == 2
    assert got[(f"{ttft}_count", chat)] == 2
    assert got[(f"{ttft}_sum", chat)] == 400.01
    duration = "ondemand_request_duration_seconds"
    assert bucket(duration, "0.05") == 2  # 50 ms and the 1 ms of the request without a TTFT
    assert bucket(duration, "600.0") == 2
    assert bucket(duration, "+Inf") == 3
    assert got[(f"{duration}_count", chat)] == 3
    # A route whose requests had no first byte still has its (empty) TTFT histogram.
    generate = (("model", "llama3.2:1b"), ("route", "/api/generate"))
    assert got[(f"{ttft}_count", generate)] == 0
