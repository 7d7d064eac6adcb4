"""Estimated spend: how long compute has been billed, times a price per GPU-hour.

The built-in prices are list prices with their source and date, and will drift: set
``prices:`` in ondemand.yml (GPU model -> price per GPU per hour) to your own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True, slots=True)
class PriceList:
    """One provider's prices per GPU per hour, in its billing currency, and where they
    come from."""

    source: str
    as_of: str
    per_hour: Mapping[str, float]


# RunPod bills serverless workers per second, from a worker's start until it has fully
# stopped: cold start, model load and the idle timeout after the last request included.
# Flex (scale-to-zero) workers, USD per second, from runpod/docs
# snippets/serverless-gpu-pricing-table.mdx at fed16bc (L4 and RTX 4090 share their pools'
# prices: AMPERE_24, ADA_24 "PRO").
_RUNPOD_FLEX_PER_SECOND = {
    "L4": 0.00019, "RTX A5000": 0.00019, "RTX 3090": 0.00019, "RTX 4090": 0.00031,
    "RTX A6000": 0.00034, "A40": 0.00034, "L40": 0.00053, "L40S": 0.00053,
    "RTX 6000 Ada": 0.00053, "A100": 0.00076, "H100": 0.00116, "RTX PRO 6000": 0.00111,
    "H200": 0.00155, "B200": 0.00240,
}  # fmt: skip

PRICE_LISTS: dict[str, PriceList] = {
    "ovh": PriceList(
        source="OVHcloud AI Deploy public price list, per GPU per hour",
        as_of="2026",
        per_hour={"L4": 0.95, "L40S": 1.80, "V100S": 1.93, "A100": 3.07, "H100": 3.50},
    ),
    "runpod": PriceList(
        source="runpod/docs snippets/serverless-gpu-pricing-table.mdx @fed16bc "
        "(serverless flex workers, USD per second x 3600)",
        as_of="2026-12",
        per_hour={gpu: round(usd * 3600, 4) for gpu, usd in _RUNPOD_FLEX_PER_SECOND.items()},
    ),
    # Pods are priced apart from serverless: Secure Cloud on-demand, USD per GPU per hour.
    "runpod-pod": PriceList(
        source="RunPod Secure Cloud on-demand pod prices (RunPod's pricing page)",
        as_of="2026",
        per_hour={
            "L4": 0.43,
            "A40": 0.40,
            "L40S": 0.86,
            "A100": 1.64,
            "H100": 2.69,
            "RTX 4090": 0.69,
            "RTX A6000": 0.49,
        },
    ),
}
# Per GPU per hour, in the provider's billing currency.
DEFAULT_PRICES: dict[str, dict[str, float]] = {
    name: dict(prices.per_hour) for name, prices in PRICE_LISTS.items()
}
CURRENCY = {"ovh": "EUR", "sandbox": "EUR", "runpod": "USD", "runpod-pod": "USD", "local": ""}


@dataclass(frozen=True, slots=True)
class Estimate:
    seconds: float
    hourly: float | None  # None: no price known for this GPU
    currency: str

    @property
    def amount(self) -> float | None:
        return None if self.hourly is None else round(self.hourly * self.seconds / 3600, 4)

    def describe(self) -> str:
        minutes = self.seconds / 60
        if self.hourly is None:
            return f"billed {minutes:.0f} min (no price known: set prices: in ondemand.yml)"
        if self.hourly == 0:
            return f"running {minutes:.0f} min (no GPU bill)"
        return (
            f"billed {minutes:.0f} min x {self.hourly:.2f} {self.currency}/h "
            f"= about {self.amount:.2f} {self.currency}"
        )


def price(provider: str, gpu: str, gpu_count: int, overrides: Mapping[str, float]) -> float | None:
    """Price per hour for ``gpu_count`` GPUs of model ``gpu``; 0 for the local machine."""
    if provider == "local":
        return 0.0
    table = {**DEFAULT_PRICES.get("ovh" if provider == "sandbox" else provider, {})}
    table.update(overrides)
    wanted = gpu.upper().replace("TESLA-", "").replace("-80GB", "").replace("-40GB", "")
    for name, hourly in table.items():
        if name.upper() == wanted or name.upper() == gpu.upper():
            return hourly * gpu_count
    return None


def estimate(
    provider: str,
    running_since: datetime | None,
    gpu: str,
    gpu_count: int,
    overrides: Mapping[str, float],
    now: datetime | None = None,
) -> Estimate:
    now = now or datetime.now(UTC)
    seconds = max(0.0, (now - running_since).total_seconds()) if running_since else 0.0
    return for_seconds(provider, seconds, gpu, gpu_count, overrides)


def for_seconds(
    provider: str, seconds: float, gpu: str, gpu_count: int, overrides: Mapping[str, float]
) -> Estimate:
    """The cost of ``seconds`` of compute (a run's share: how long its lease was held)."""
    return Estimate(seconds, price(provider, gpu, gpu_count, overrides), CURRENCY.get(provider, ""))
