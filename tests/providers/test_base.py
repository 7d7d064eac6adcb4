"""The provider contract's shared pieces: the status vocabulary, the registry, the one wait."""

from __future__ import annotations

import pytest

from ondemand.errors import ReadyTimeoutError, UsageError
from ondemand.providers import PROVIDER_NAMES, provider_class
from ondemand.providers.base import Status, map_status, wait_until

# The shape every provider module declares: vendor state -> Status.
OVH_LIKE = {
    "QUEUED": Status.PENDING,
    "INITIALIZING": Status.STARTING,
    "RUNNING": Status.RUNNING,
    "STOPPING": Status.STOPPING,
    "STOPPED": Status.STOPPED,
}


@pytest.mark.parametrize(
    ("vendor", "expected"),
    [
        ("RUNNING", Status.RUNNING),
        ("running ", Status.RUNNING),
        ("SCALING_TO_THE_MOON", Status.UNKNOWN),
        (None, Status.UNKNOWN),
    ],
)
def test_vendor_states_map_and_unknown_ones_never_raise(
    vendor: str | None, expected: Status
) -> None:
    assert map_status(OVH_LIKE, vendor) is expected


def test_only_known_idle_states_count_as_not_billing() -> None:
    assert {s for s in Status if not s.billable} == {Status.ABSENT, Status.STOPPED, Status.FAILED}
    assert Status.UNKNOWN.billable  # doubt counts as billing, so nothing is reported free


def test_registry_knows_every_interface_provider() -> None:
    assert set(PROVIDER_NAMES) == {"local", "ovh", "runpod", "runpod-pod", "sandbox"}
    with pytest.raises(UsageError, match="unknown provider 'azure'"):
        provider_class("azure")
    for name in PROVIDER_NAMES:
        assert provider_class(name).name == name


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_wait_until_returns_as_soon_as_done_and_reports_progress() -> None:
    clock = FakeClock()
    states = iter(["PENDING", "PENDING", "RUNNING"])
    seen: list[tuple[str, float]] = []
    result = wait_until(
        lambda: next(states),
        lambda s: s == "RUNNING",
        timeout=60,
        what="the app to run",
        on_poll=lambda s, elapsed: seen.append((s, elapsed)),
        clock=clock,
        sleep=clock.sleep,
    )
    assert result == "RUNNING"
    assert [s for s, _ in seen] == ["PENDING", "PENDING", "RUNNING"]
    assert clock.sleeps == [2.0, 3.0]  # backs off


def test_wait_until_never_sleeps_past_the_deadline_and_names_what_it_waited_for() -> None:
    clock = FakeClock()
    with pytest.raises(ReadyTimeoutError) as info:
        wait_until(
            lambda: "QUEUED",
            lambda s: False,
            timeout=10,
            what="the app to run",
            clock=clock,
            sleep=clock.sleep,
        )
    assert clock.now == pytest.approx(10)
    assert sum(clock.sleeps) == pytest.approx(10)
    assert info.value.exit_code == 6
    assert "waiting for the app to run" in str(info.value)
    assert "QUEUED" in str(info.value)
