"""The model cache bucket on OVH: the emulated AI Deploy copies a volume's bucket in at each
start and never back, unless a data sync pushes it; ``up`` pushes what it pulled, ``down``
lets the push finish, and the next cold start finds the models in the bucket."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from ondemand.lifecycle import DownResult, down
from ondemand.sandbox.server import SandboxServer
from tests.clirun import run
from tests.cloud import FAST_APPS, Ovh, StartSandbox, use_ovh_cli, wait
from tests.jobs import lifecycle_of

MODEL = "qwen3:0.6b"
VOLUME = "ollama-cache@s3-gra/models:/workspace/ollama:rw"
# Nothing is in the emulated Ollama's store unless the model store brings it.
EMPTY_STORE = {**FAST_APPS, "OLLAMA_EMULATOR_MODELS": ""}


@pytest.fixture
def cloud(
    start_sandbox: StartSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[SandboxServer, Ovh]:
    running, api = start_sandbox(app_env=EMPTY_STORE)
    use_ovh_cli(running, monkeypatch, tmp_path, ONDEMAND_MODELS=MODEL, OLLAMA_VOLUME=VOLUME)
    return running, api


def _bucket(running: SandboxServer) -> Path:
    # The user's alias, in the user's case.
    return running.sandbox.ovh.engine.datastores / "s3-gra" / "ollama-cache" / "models"


def _serve_log(running: SandboxServer) -> str:
    [app] = running.sandbox.apps()
    return Path(app["log"]).read_text()


def _status(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code, out, err = run(["--json", "status"], capsys)
    assert code == 0, err
    report: dict[str, Any] = json.loads(out)
    return report


def test_second_cold_start_finds_the_models_pushed_to_the_bucket(
    cloud: tuple[SandboxServer, Ovh], capsys: pytest.CaptureFixture[str]
) -> None:
    running, _ = cloud
    code, _, err = run(["up"], capsys)
    assert code == 0, err
    assert f"{MODEL} pulled in this run: pushing the model store to ollama-cache@s3-gra" in err
    report = _status(capsys)
    assert report["cache_sync"]["to"] == "ollama-cache@s3-gra/models"
    assert report["cache_sync"]["state"] in ("QUEUED", "RUNNING", "DONE")
    [model] = report["server"]["server"]["models"]
    assert model["cached"] is False

    code, _, err = run(["down"], capsys)  # lets a push under way end before it stops
    assert code == 0, err
    assert list(_bucket(running).rglob("0.6b")), "the push left the model in the bucket"
    assert _status(capsys)["cache_sync"]["state"] == "DONE"

    code, _, err = run(["up"], capsys)
    assert code == 0, err
    assert "pulled in this run" not in err  # nothing new: nothing to push
    [model] = _status(capsys)["server"]["server"]["models"]
    assert model["cached"] is True
    assert f"{MODEL} is in the model cache: not pulled" in _serve_log(running)
    run(["down"], capsys)


def test_without_a_push_the_next_start_pulls_again(
    cloud: tuple[SandboxServer, Ovh], capsys: pytest.CaptureFixture[str]
) -> None:
    """What the platform does on its own: the app's writes stay in its run."""
    running, api = cloud
    # 'start' (unlike 'up') pushes nothing.
    for command in ("deploy", "start"):
        code, _, err = run([command], capsys)
        assert code == 0, err
    [app] = api.http.get("/v1/app").json()["items"]
    api.wait(app["id"], "RUNNING")
    models = Path(running.sandbox.apps()[0]["models"])
    wait(lambda: list(models.rglob("0.6b")), bool)  # pulled into the app's volume
    api.http.put(f"/v1/app/{app['id']}/stop")
    api.wait(app["id"], "STOPPED")
    assert not list(_bucket(running).rglob("*")), "nothing was pushed, nothing is in the bucket"
    assert not models.exists(), "the run's volume went with it"
    api.http.put(f"/v1/app/{app['id']}/start")
    api.wait(app["id"], "RUNNING")
    wait(lambda: _serve_log(running).count(f"pulling {MODEL}"), lambda pulls: pulls >= 2)


def test_down_waits_for_a_push_under_way_so_the_stop_does_not_interrupt_it(
    cloud: tuple[SandboxServer, Ovh], capsys: pytest.CaptureFixture[str]
) -> None:
    running, api = cloud
    hold = running.sandbox.ovh.engine.syncs.hold = threading.Event()
    try:
        code, _, err = run(["up"], capsys)
        assert code == 0, err
        said: list[str] = []
        results: list[DownResult] = []

        def stop() -> None:
            with lifecycle_of(dict(os.environ)) as (resolved, provider):
                results.append(down(resolved, provider, force=True, progress=said.append))

        stopping = threading.Thread(target=stop)
        stopping.start()
        wait(
            lambda: said, lambda lines: any("waiting for the model cache push" in s for s in lines)
        )
        [app] = api.http.get("/v1/app").json()["items"]
        assert app["status"]["state"] == "RUNNING", "down stopped before the push ended"
        hold.set()
        stopping.join(timeout=60)
        [result] = results
    finally:
        hold.set()
    assert "model cache pushed to ollama-cache@s3-gra/models" in result.message
    assert list(_bucket(running).rglob("0.6b")), "the push was not interrupted"
    api.wait(app["id"], "STOPPED")
