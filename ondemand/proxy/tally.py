"""Per-request usage counted in plain numbers, turned into Prometheus series when scraped.

Each forwarded request adds to one label set's sums: no lock, no per-series object of the
client library, a bucket found by bisection. prometheus_client Counters and Histograms
take a lock and validate on every update, which cost a proxied request ~7 us of ~50 us of
the proxy's own work (docs/benchmarks.md, "Per-request cost"); a scrape, every few
seconds at most, builds the same families from these sums instead.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

# Seconds: from a fast cached answer to a model load on a cold GPU.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class _Histogram:
    __slots__ = ("bounds", "counts", "created", "total")

    def __init__(self, bounds: tuple[float, ...], created: float) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.total = 0.0
        self.created = created

    def observe(self, value: float) -> None:
        # A value equal to a bound belongs to that bound's bucket ("le"), as bisect_left has it.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append((_le(bound), float(running)))
        return out


def _le(bound: float) -> str:
    """A bucket's bound as Prometheus clients write it ("1.0", "+Inf")."""
    return str(floatToGoString(bound))  # type: ignore[no-untyped-call]


class _Series:
    """One (route, status, key, model) label set's sums."""

    __slots__ = ("completion", "created", "prompt", "requests")

    def __init__(self, created: float) -> None:
        self.requests = self.prompt = self.completion = 0
        self.created = created


class UsageTally:
    """``ondemand_requests``, ``ondemand_tokens`` and the two latency histograms."""

    def __init__(self) -> None:
        self._series: dict[tuple[str, int, str, str], _Series] = {}
        self._ttft: dict[tuple[str, str], _Histogram] = {}
        self._duration: dict[tuple[str, str], _Histogram] = {}

    def add(
        self,
        labels: tuple[str, int, str, str],
        prompt: int | None,
        completion: int | None,
        ttft_seconds: float | None,
        duration_seconds: float,
    ) -> None:
        """One request under ``labels`` (route, status, key, model)."""
        timing = (labels[0], labels[3])
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = _Series(time.time())
            # Both histograms appear with their label set, a request without a first
            # byte included (all zeros), as prometheus_client's children did.
            self._histogram(self._ttft, timing, TTFT_BUCKETS)
        series.requests += 1
        if prompt:
            series.prompt += prompt
        if completion:
            series.completion += completion
        if ttft_seconds is not None:
            self._histogram(self._ttft, timing, TTFT_BUCKETS).observe(ttft_seconds)
        self._histogram(self._duration, timing, DURATION_BUCKETS).observe(duration_seconds)

    @staticmethod
    def _histogram(
        into: dict[tuple[str, str], _Histogram], labels: tuple[str, str], bounds: tuple[float, ...]
    ) -> _Histogram:
        found = into.get(labels)
        if found is None:
            found = into[labels] = _Histogram(bounds, time.time())
        return found

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "ondemand_requests", "Requests forwarded to Ollama, by outcome.",
            labels=["route", "status", "key", "model"],
        )  # fmt: skip
        tokens = CounterMetricFamily(
            "ondemand_tokens", "Tokens processed, by direction (prompt or completion).",
            labels=["direction", "key", "model"],
        )  # fmt: skip
        per_key: dict[tuple[str, str], list[float]] = {}  # prompt, completion, created
        for (route, status, key, model), series in self._series.items():
            requests.add_metric([route, str(status), key, model], series.requests,
                                created=series.created)  # fmt: skip
            sums = per_key.setdefault((key, model), [0, 0, series.created])
            sums[0] += series.prompt
            sums[1] += series.completion
            sums[2] = min(sums[2], series.created)
        for (key, model), (prompt, completion, created) in per_key.items():
            tokens.add_metric(["prompt", key, model], prompt, created=created)
            tokens.add_metric(["completion", key, model], completion, created=created)
        yield requests
        yield tokens
        yield _histogram_family(
            "ondemand_time_to_first_byte_seconds",
            "Time from the request to the first byte of the response body.",
            self._ttft,
        )
        yield _histogram_family(
            "ondemand_request_duration_seconds",
            "Time from the request to the end of the answer.",
            self._duration,
        )


def _histogram_family(
    name: str, documentation: str, histograms: dict[tuple[str, str], _Histogram]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=["route", "model"])
    for (route, model), histogram in histograms.items():
        family.add_metric([route, model], histogram.buckets(), histogram.total)
        family.add_sample(f"{name}_created", {"route": route, "model": model}, histogram.created)
    return family
