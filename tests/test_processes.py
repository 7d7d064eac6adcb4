"""The child-process helper that the demo, benchmarks and local provider rely on."""

from __future__ import annotations

import sys

import httpx
import pytest

from ondemand.processes import ProcessFailed, free_port, running


def test_runs_until_the_block_ends_then_stops_the_child() -> None:
    port = free_port()
    args = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    with running(args, ready_url=f"http://127.0.0.1:{port}/") as proc:
        assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 200
    assert proc.returncode is not None
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/")


def test_a_child_that_dies_is_reported_with_its_stderr() -> None:
    args = [sys.executable, "-c", "import sys; sys.exit('cannot bind: port taken')"]
    with (
        pytest.raises(ProcessFailed, match="exited:\ncannot bind: port taken"),
        running(args, ready_url=f"http://127.0.0.1:{free_port()}/", timeout=10),
    ):
        pass


def test_a_child_that_never_answers_times_out_and_is_stopped() -> None:
    args = [sys.executable, "-c", "import time; time.sleep(60)"]
    with (
        pytest.raises(ProcessFailed, match="did not answer in time"),
        running(args, ready_url=f"http://127.0.0.1:{free_port()}/", timeout=0.5),
    ):
        pass
