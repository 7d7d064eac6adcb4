"""RunPod's prices: serverless workers per second (flex), pods from their own list, each
with its source and date; a job's share of a serverless bill includes the idle timeout
after its last request, which RunPod bills too."""

from __future__ import annotations

import json

import pytest

from ondemand.providers.costs import PRICE_LISTS, price
from tests.clirun import run
from tests.providers.test_runpod import Cloud, cloud  # noqa: F401 (the fixture)


@pytest.mark.parametrize(
    ("gpu", "per_second"),
    [("L4", 0.00019), ("RTX 4090", 0.00031), ("L40S", 0.00053), ("A100", 0.00076),
     ("H100", 0.00116)],
)  # fmt: skip
def test_serverless_is_priced_per_second_and_pods_apart(gpu: str, per_second: float) -> None:
    assert price("runpod", gpu, 1, {}) == pytest.approx(per_second * 3600)
    assert price("runpod", gpu, 2, {}) == pytest.approx(per_second * 7200)
    pod = price("runpod-pod", gpu, 1, {})
    assert pod is not None
    assert pod != pytest.approx(per_second * 3600)
    for name in ("runpod", "runpod-pod"):
        assert PRICE_LISTS[name].source
        assert PRICE_LISTS[name].as_of


def test_a_jobs_share_counts_the_idle_timeout_its_worker_still_bills(
    cloud: Cloud,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ONDEMAND_RUNPOD_IDLE_TIMEOUT", "120")
    code, out, err = run(["up"], capsys)
    assert code == 0, err
    lease = dict(line.split("=", 1) for line in out.splitlines())["ONDEMAND_LEASE_ID"]
    code, out, err = run(["--json", "down", "--lease", lease], capsys)
    assert code == 0, err
    share = json.loads(out)["share"]
    assert share["seconds"] >= 120
    assert share["currency"] == "USD"
    assert share["amount"] == pytest.approx(share["seconds"] * 0.00019, abs=1e-3)
    assert run(["down", "--force"], capsys)[0] == 0
