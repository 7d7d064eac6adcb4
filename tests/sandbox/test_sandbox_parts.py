"""The sandbox's pieces without a server: model stores, logs, billing, the state file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ondemand.sandbox.apps import BANNER, log_tail
from ondemand.sandbox.ovh.datasync import bucket_dir
from ondemand.sandbox.ovh.edits import models_dir
from ondemand.sandbox.ovh.model import AppRecord
from ondemand.sandbox.server import create_sandbox
from ondemand.sandbox.statefile import read_json, write_json_atomic


def _spec(env: dict[str, str], volumes: list[dict[str, object]]) -> dict[str, object]:
    return {"envVars": [{"name": k, "value": v} for k, v in env.items()], "volumes": volumes}


def test_models_live_in_the_app_or_in_its_copy_of_the_mounted_datastore(tmp_path: Path) -> None:
    app_dir, stores = tmp_path / "app", tmp_path / "stores"
    store = {"alias": "s3-gra", "container": "models", "prefix": "ollama/"}
    volume: dict[str, object] = {"mountPath": "/workspace", "permission": "RW", "dataStore": store}
    assert models_dir(_spec({}, [volume]), app_dir) == app_dir / "models"
    on_volume = _spec({"OLLAMA_MODELS": "/workspace/cache"}, [volume])
    assert models_dir(on_volume, app_dir) == app_dir / "volumes/0/cache"
    elsewhere = _spec({"OLLAMA_MODELS": "/var/lib/ollama"}, [volume])
    assert models_dir(elsewhere, app_dir) == app_dir / "models"
    # The bucket behind the copy keeps the alias's case: s3-gra is not S3-GRA.
    assert bucket_dir(volume, stores) == stores / "s3-gra/models/ollama"
    bad = {"alias": "..", "container": "../../etc", "prefix": "../x"}
    hostile: dict[str, object] = {"mountPath": "/m", "permission": "RW", "dataStore": bad}
    path = models_dir(_spec({"OLLAMA_MODELS": "/m/../.."}, [hostile]), app_dir)
    assert path.is_relative_to(app_dir)
    assert ".." not in path.parts
    bucket = bucket_dir(hostile, stores)
    assert bucket is not None
    assert bucket.is_relative_to(stores)
    assert ".." not in bucket.parts


def test_log_tail_is_the_latest_run_only(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    log.write_text(
        f"{BANNER} one\nold line\n{BANNER} two\n" + "".join(f"l{i}\n" for i in range(30))
    )
    assert log_tail(log, lines=3) == "l27\nl28\nl29"
    assert "old line" not in log_tail(log, lines=100)
    assert log_tail(tmp_path / "missing.log") == ""


def test_billed_time_counts_scaling_and_running_only() -> None:
    record = AppRecord(id="a", spec={}, user="u", port=1, created_at="", updated_at="")
    record.history = [
        {"state": "QUEUED", "date": "2026-01-01T00:00:00.000Z"},
        {"state": "INITIALIZING", "date": "2026-01-01T00:00:10.000Z"},
        {"state": "SCALING", "date": "2026-01-01T00:00:20.000Z"},
        {"state": "RUNNING", "date": "2026-01-01T00:00:30.000Z"},
        {"state": "STOPPING", "date": "2026-01-01T00:01:30.000Z"},
        {"state": "STOPPED", "date": "2026-01-01T00:01:40.000Z"},
    ]
    assert record.billed_seconds() == 70.0


def test_state_file_is_replaced_whole_and_a_corrupt_one_is_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "ovh" / "apps.json"
    write_json_atomic(path, {"apps": [1]})
    assert read_json(path) == {"apps": [1]}
    assert [p.name for p in path.parent.iterdir()] == ["apps.json"]
    path.write_text("{half")
    assert read_json(path) is None
    assert not path.exists()
    assert any(p.name.startswith("apps.json.corrupt-") for p in path.parent.iterdir())
    path.write_text(json.dumps([1, 2]))
    assert read_json(path) is None


def test_one_sandbox_per_state_directory(tmp_path: Path) -> None:
    first = create_sandbox(tmp_path)
    with pytest.raises(ValueError, match=f"another sandbox \\(pid {os.getpid()}\\) uses"):
        create_sandbox(tmp_path)
    first.close()
    create_sandbox(tmp_path).close()
