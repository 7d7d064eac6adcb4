"""`ondemand init`: the files it writes, and what a re-run changes in files a user edited."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from ondemand.config import PROVIDER_NAMES, load_config
from ondemand.scaffold import templates
from ondemand.scaffold.merge import merge
from ondemand.scaffold.templates import Superseded
from tests.clirun import run

CONFIG = "ondemand.yml"
NIGHTLY = ".github/workflows/ollama-nightly-stop.yml"
MANUAL = ".github/workflows/ollama-manual.yml"
TESTS = ".github/workflows/ollama-tests.yml"
FILES = (CONFIG, NIGHTLY, MANUAL, TESTS)
ACTION = "ollama-ondemand/ollama-ondemand@v1"
CHECKOUT = "actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683"
NEW_CHECKOUT = "actions/checkout@08c6903cd8c0fde910a37f88322edcfb5dd907a8"

Render = Callable[[str, str], dict[str, str]]


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty repository as the current directory, in an environment with no settings."""
    for name in list(os.environ):
        if name.startswith(("ONDEMAND_", "AUTHORIZATION_", "OLLAMA_", "PRELOAD_", "GITHUB_",
                            "RUNPOD_", "OVH_", "GPU_", "RUNNER_")):  # fmt: skip
            monkeypatch.delenv(name)
    root = tmp_path / "repo"
    root.mkdir()
    monkeypatch.chdir(root)
    return root


def _load(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text())


def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {name: ((root / name).read_bytes(), (root / name).stat().st_mtime_ns) for name in FILES}


def _steps(workflow: Any, job: str) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = workflow["jobs"][job]["steps"]
    return steps


def _action_steps(workflow: Any, job: str) -> list[dict[str, Any]]:
    return [step for step in _steps(workflow, job) if step.get("uses") == ACTION]


def _patch_templates(monkeypatch: pytest.MonkeyPatch, change: Callable[[str, str], str]) -> None:
    """Simulate a newer ondemand: its templates are today's, changed by ``change``."""
    original: Render = templates.render

    def render(provider: str, name: str) -> dict[str, str]:
        return {path: change(path, text) for path, text in original(provider, name).items()}

    monkeypatch.setattr(templates, "render", render)


# -- a fresh repository ------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDER_NAMES)
def test_init_writes_the_config_and_three_workflows(
    repo: Path, provider: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["--provider", provider, "init"], capsys)
    assert code == 0, err
    assert out.splitlines() == [f"created {name}" for name in FILES]

    resolved = load_config(path=None, env={}, cwd=repo)
    assert resolved.file == repo / CONFIG
    assert resolved.config.provider == provider
    assert resolved.config.name == "ollama-ondemand"
    assert resolved.config.models == ["llama3.2:3b"]
    assert resolved.sources["provider"].startswith("ondemand.yml:")
    text = (repo / CONFIG).read_text()
    assert "#" in text.split("provider:")[0]  # explained, not just keys
    assert not re.search(r"(?m)^\s*(api_key|ovh_token|runpod_api_key)\s*:", text)

    secret = {"ovh": "OVH_AI_TOKEN", "runpod": "RUNPOD_API_KEY", "runpod-pod": "RUNPOD_API_KEY"}
    for name in FILES[1:]:
        workflow = _load(repo / name)
        assert workflow["permissions"] == {}
        for job in workflow["jobs"].values():
            assert job["permissions"]["contents"] == "read"
            checkout = job["steps"][0]
            assert checkout["uses"] == CHECKOUT
            assert checkout["with"] == {"persist-credentials": False}
            for step in job["steps"]:
                assert "${{" not in step.get("run", "")
                if step.get("uses") == ACTION and provider in secret:
                    input_name = "ovh-token" if provider == "ovh" else "runpod-api-key"
                    assert step["with"][input_name] == f"${{{{ secrets.{secret[provider]} }}}}"
        raw = (repo / name).read_text()
        assert f"uses: {CHECKOUT} # v4.2.2\n" in raw
        assert "pin a full commit SHA" in raw
        if provider not in secret:
            assert "OVH_AI_TOKEN" not in raw
            assert "RUNPOD_API_KEY" not in raw

    tests = _load(repo / TESTS)
    up, down = _action_steps(tests, "test")
    assert up["with"]["command"] == "up"
    assert up["with"]["api-key"] == "${{ secrets.ONDEMAND_API_KEY }}"
    assert (down["with"]["command"], down["if"]) == ("down", "always()")
    names = [step["name"] for step in _steps(tests, "test")]
    assert names.index("Start Ollama") < names.index("Run tests") < names.index("Stop Ollama")
    assert "$OLLAMA_HOST" in _steps(tests, "test")[2]["run"]
    assert tests["jobs"]["test"]["permissions"]["deployments"] == "write"

    nightly = _load(repo / NIGHTLY)
    assert nightly["on"]["schedule"] == [{"cron": "0 2 * * *"}]
    assert "workflow_dispatch" in nightly["on"]
    assert [s["with"]["command"] for s in _action_steps(nightly, "stop")] == ["reap"]
    assert nightly["jobs"]["stop"]["permissions"]["deployments"] == "write"
    assert "reap" in (repo / NIGHTLY).read_text()

    manual = _load(repo / MANUAL)
    command = manual["on"]["workflow_dispatch"]["inputs"]["command"]
    assert (command["type"], command["options"]) == ("choice", ["up", "down", "status", "delete"])
    (step,) = _action_steps(manual, "ollama")
    assert step["with"]["command"] == "${{ inputs.command }}"
    assert manual["jobs"]["ollama"]["permissions"]["deployments"] == "write"
    for workflow in (nightly, manual):
        assert workflow["concurrency"] == {
            "group": "ollama-ondemand-control",
            "cancel-in-progress": False,
        }


def test_init_takes_provider_and_name_from_the_existing_config(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repo / CONFIG).write_text("provider: ovh\nname: my-project\n")
    code, out, err = run(["init"], capsys)
    assert code == 0, err
    assert out.splitlines()[0] == f"updated {CONFIG}"
    assert "ovh-token: ${{ secrets.OVH_AI_TOKEN }}" in (repo / MANUAL).read_text()
    assert "group: my-project-control" in (repo / NIGHTLY).read_text()
    text = (repo / CONFIG).read_text()
    assert text.startswith("provider: ovh\nname: my-project\n")
    assert load_config(path=None, env={}, cwd=repo).config.region == "GRA"


def test_another_provider_adds_its_settings_and_keeps_the_files_provider(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["--provider", "runpod", "init"], capsys)[0] == 0
    code, _, err = run(["--provider", "ovh", "init"], capsys)
    assert code == 0
    assert "note: ondemand.yml: provider: kept yours (runpod)" in err
    resolved = load_config(path=None, env={}, cwd=repo).config
    assert (resolved.provider, resolved.region) == ("runpod", "GRA")
    assert "ovh-token: ${{ secrets.OVH_AI_TOKEN }}" in (repo / TESTS).read_text()
    assert "runpod-api-key: ${{ secrets.RUNPOD_API_KEY }}" in (repo / TESTS).read_text()


def test_a_directory_that_does_not_exist_is_a_usage_error(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["init", "--directory", "nowhere"], capsys)
    assert code == 2
    assert "nowhere" in err
    assert list(repo.iterdir()) == []


def test_directory_option_and_json(
    tmp_path: Path, repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    code, out, _ = run(["--json", "--provider", "runpod", "init", "--directory", str(target)],
                       capsys)  # fmt: skip
    assert code == 0
    report = json.loads(out)
    assert report["provider"] == "runpod"
    assert report["dry_run"] is False
    assert [(f["path"], f["result"]) for f in report["files"]] == [
        (str(target / name), "created") for name in FILES
    ]
    assert sorted(p.name for p in repo.iterdir()) == []
    assert load_config(path=None, env={}, cwd=target).config.provider == "runpod"

    code, out, _ = run(["init", "--json", "--directory", str(target)], capsys)
    assert [f["result"] for f in json.loads(out)["files"]] == ["unchanged"] * 4


# -- re-running ---------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDER_NAMES)
def test_rerun_changes_nothing(
    repo: Path, provider: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["--provider", provider, "init"], capsys)[0] == 0
    before = _snapshot(repo)
    code, out, _ = run(["init"], capsys)  # the provider now comes from ondemand.yml
    assert code == 0
    assert out.splitlines() == [f"unchanged {name}" for name in FILES]
    assert _snapshot(repo) == before
    assert sorted(p.name for p in (repo / ".github/workflows").iterdir()) == sorted(
        Path(name).name for name in FILES[1:]
    )


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def test_rerun_keeps_user_edits_and_adds_what_a_newer_template_has(
    repo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(["--provider", "runpod", "init"], capsys)[0] == 0
    # A user's edits: a comment, a step of their own, another schedule, another timeout,
    # a key of their own with a comment, their own checkout pin in one file.
    my_step = (
        "      - name: Set up Python\n"
        "        uses: actions/setup-python@a26af69be951a213d495a4c3e4e4022e16d87065 # v5.6.0\n"
        "\n"
    )
    _edit(repo / TESTS, "      - name: Start Ollama\n", my_step + "      - name: Start Ollama\n")
    _edit(repo / TESTS, "    timeout-minutes: 60\n", "    timeout-minutes: 25 # ours\n")
    _edit(repo / TESTS, "    steps:\n", "    # our own note on the steps\n    steps:\n")
    _edit(repo / NIGHTLY, '"0 2 * * *" # every day at 02:00 UTC', "'30 4 * * 1-5' # weekdays")
    _edit(repo / NIGHTLY, f"uses: {CHECKOUT} # v4.2.2", "uses: actions/checkout@v4 # we pin tags")
    _edit(repo / CONFIG, "timeout: 15m\n", "timeout: 25m # big models\n")
    with (repo / CONFIG).open("a") as handle:
        handle.write("# our GPU price\nprices:\n  L4: 0.69\n")
    edited = {name: (repo / name).read_text() for name in FILES}

    # A newer ondemand: a new input, a new step, a new config key, a new checkout pin.
    def newer(path: str, text: str) -> str:
        text = text.replace(f"{CHECKOUT} # v4.2.2", f"{NEW_CHECKOUT} # v4.3.0")
        if path == TESTS:
            text = text.replace(
                "          command: up\n", "          command: up\n          lease-ttl: 2h\n"
            ).replace(
                "      - name: Stop Ollama\n",
                "      # Keep the server's log with the run.\n"
                "      - name: Server log\n"
                "        if: failure()\n"
                "        run: cat ondemand.log\n\n"
                "      - name: Stop Ollama\n",
            )
        if path == CONFIG:
            text = text.replace(
                "lease_ttl: 3h\n", "lease_ttl: 3h\n# Stop when idle this long.\nidle_timeout: 20m\n"
            )
        return text

    _patch_templates(monkeypatch, newer)
    place = ("jobs", "{job}", "steps", "Check out", "uses")
    old_pin = (Superseded(CHECKOUT, "# v4.2.2"),)
    jobs = {TESTS: "test", NIGHTLY: "stop", MANUAL: "ollama"}
    monkeypatch.setattr(templates, "SUPERSEDED", {
        path: {tuple(p.format(job=job) for p in place): old_pin} for path, job in jobs.items()
    })  # fmt: skip

    code, out, err = run(["init"], capsys)
    assert code == 0, err
    assert out.splitlines() == [
        f"updated {CONFIG}", f"unchanged {NIGHTLY}", f"updated {MANUAL}", f"updated {TESTS}"
    ]  # fmt: skip

    tests = (repo / TESTS).read_text()
    assert my_step in tests
    assert "    timeout-minutes: 25 # ours\n" in tests
    assert "    # our own note on the steps\n" in tests
    assert "          command: up\n          lease-ttl: 2h\n" in tests
    # The new step lands after the step that precedes it in the template.
    assert (
        '            "$OLLAMA_HOST/api/tags"\n'
        "\n"
        "      # Keep the server's log with the run.\n"
        "      - name: Server log\n"
        "        if: failure()\n"
        "        run: cat ondemand.log\n"
        "\n"
        "      - name: Stop Ollama\n"
    ) in tests
    assert f"uses: {NEW_CHECKOUT} # v4.3.0\n" in tests
    assert CHECKOUT not in tests
    workflow = _load(repo / TESTS)
    assert [s["name"] for s in _steps(workflow, "test")] == [
        "Check out", "Set up Python", "Start Ollama", "Run tests", "Server log", "Stop Ollama",
    ]  # fmt: skip
    assert workflow["jobs"]["test"]["timeout-minutes"] == 25

    nightly = (repo / NIGHTLY).read_text()
    assert "    - cron: '30 4 * * 1-5' # weekdays\n" in nightly
    assert "uses: actions/checkout@v4 # we pin tags\n" in nightly  # changed by the user: kept
    assert nightly == edited[NIGHTLY]

    config = (repo / CONFIG).read_text()
    assert "timeout: 25m # big models\n" in config
    assert config.endswith("# our GPU price\nprices:\n  L4: 0.69\n")
    assert "lease_ttl: 3h\n# Stop when idle this long.\nidle_timeout: 20m\n" in config
    resolved = load_config(path=None, env={}, cwd=repo).config
    assert (resolved.prices, resolved.idle_timeout.seconds) == ({"L4": 0.69}, 1200)

    # Nothing of the user's was lost: every line they had is still there, in order.
    for name in FILES:
        now = (repo / name).read_text().splitlines()
        kept = iter(now)
        for line in edited[name].splitlines():
            if name != NIGHTLY and CHECKOUT in line:
                continue  # the one value that was still the old template's
            assert any(line == candidate for candidate in kept), (name, line)

    # And the newer ondemand, run again, has nothing more to do.
    code, out, _ = run(["init"], capsys)
    assert out.splitlines() == [f"unchanged {name}" for name in FILES]


def test_a_deleted_key_comes_back_an_emptied_one_stays_empty(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["--provider", "ovh", "init"], capsys)[0] == 0
    _edit(repo / CONFIG, "timeout: 15m\n", "")
    _edit(repo / CONFIG, "region: GRA\n", "region:\n")
    _edit(repo / TESTS, "  pull_request:\n", "")
    assert run(["init"], capsys)[0] == 0
    config = (repo / CONFIG).read_text()
    assert "\ntimeout: 15m\n" in config
    assert "\nregion:\n" in config
    assert "  pull_request:\n" in (repo / TESTS).read_text()


# -- what is matched, whatever the user's layout ----------------------------------------


def _merge(current: str, template: str, **superseded: Any) -> str:
    table = {tuple(k.split(".")): (Superseded(v),) for k, v in superseded.items()}
    return merge(current, template, table, "f.yml").text


def test_merge_fits_additions_to_the_users_indentation() -> None:
    template = (
        "jobs:\n"
        "  a:\n"
        "    steps:\n"
        "      - name: one\n"
        "        run: echo 1\n"
        "      - name: two\n"
        "        with:\n"
        "          x: 1\n"
        "          y: 2\n"
    )
    mine = "jobs:\n    a:\n        steps:\n        -   name: one\n            run: echo 1 # mine\n"
    merged = _merge(mine, template)
    # The new step is the template's, shifted to the column of the user's dashes.
    added = "        - name: two\n          with:\n            x: 1\n            y: 2\n"
    assert merged == mine + added
    assert YAML(typ="safe").load(merged)["jobs"]["a"]["steps"][1] == {
        "name": "two", "with": {"x": 1, "y": 2}
    }  # fmt: skip
    assert _merge(merged, template) == merged


def test_merge_finds_renamed_steps_and_jobs_by_id_and_action() -> None:
    template = (
        "jobs:\n"
        "  test:\n"
        "    steps:\n"
        "      - name: Start Ollama\n"
        "        id: up\n"
        f"        uses: {ACTION}\n"
        "        with:\n"
        "          command: up\n"
        "          new-input: 1\n"
        "      - name: Stop Ollama\n"
        f"        uses: {ACTION}\n"
        "        with:\n"
        "          command: down\n"
    )
    mine = (
        "jobs:\n"
        "  integration:\n"
        "    steps:\n"
        "      - name: Begin\n"
        "        id: up\n"
        f"        uses: {ACTION}\n"
        "        with:\n"
        "          command: up\n"
        "      - name: End\n"
        f"        uses: ollama-ondemand/ollama-ondemand@0123456789abcdef0123456789abcdef01234567\n"
        "        with:\n"
        "          command: down\n"
    )
    merged = _merge(mine, template)
    assert merged == mine.replace("command: up\n", "command: up\n          new-input: 1\n")


def test_merge_leaves_shared_anchors_alone() -> None:
    template = (
        "jobs:\n"
        "  a:\n"
        "    runs-on: ubuntu-latest\n"
        "    timeout-minutes: 5\n"
        "    permissions:\n"
        "      contents: read\n"
        "      deployments: write\n"
    )
    mine = (
        "defaults: &defaults\n"
        "  runs-on: self-hosted\n"
        "perms: &perms\n"
        "  contents: read\n"
        "jobs:\n"
        "  a:\n"
        "    <<: *defaults\n"
        "    permissions: *perms\n"
    )
    merged = _merge(mine, template)
    assert merged == mine.replace(
        "    <<: *defaults\n", "    <<: *defaults\n    timeout-minutes: 5\n"
    )


def test_merge_keeps_line_endings_and_reports_what_it_cannot_add(
    tmp_path: Path, repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repo / ".github/workflows").mkdir(parents=True)
    (repo / NIGHTLY).write_bytes(b"name: nightly\r\npermissions: {contents: read}\r\n")
    assert run(["init"], capsys)[0] == 0
    data = (repo / NIGHTLY).read_bytes()
    assert data.startswith(b"name: nightly\r\n\r\non:\r\n")
    assert b"\r\npermissions: {contents: read}\r\n" in data
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert _load(repo / NIGHTLY)["jobs"]["stop"]["steps"][1]["with"]["command"] == "reap"

    template = "on:\n  push:\n  pull_request:\n"
    result = merge("on: {push: {}}\n", template, {}, "f.yml")
    assert result.text == "on: {push: {}}\n"
    assert result.notes == ["f.yml: on: not added: pull_request (add them by hand: the mapping "
                            "is {...})"]  # fmt: skip


def test_merge_updates_only_values_still_at_an_old_default() -> None:
    template = "a: new\nb:\n  - x\n  - y\nc: 3\n"
    assert _merge("a: old # note\nb: [x]\nc: 3\n", template, a="old", b=["x"]) == (
        "a: new # note\nb:\n  - x\n  - y\nc: 3\n"
    )
    # Values the user chose are theirs, even where the template changed.
    assert _merge("a: mine\nb: [z]\nc: 4\n", template, a="old", b=["x"], c=2) == (
        "a: mine\nb: [z]\nc: 4\n"
    )
    # An old list that holds the user's comments is left for them to update.
    result = merge("b:\n  - x # why\n", template, {("b",): (Superseded(["x"]),)}, "f.yml")
    assert "\nb:\n  - x # why\nc: 3\n" in result.text
    assert result.notes == ["f.yml: b: left as it is: it holds your comments; update it by hand"]


# -- dry run and errors ---------------------------------------------------------------------


def test_dry_run_shows_a_diff_and_writes_nothing(
    repo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = run(["--provider", "ovh", "init", "--dry-run"], capsys)
    assert code == 0
    assert list(repo.iterdir()) == []
    assert f"--- /dev/null\n+++ b/{CONFIG}\n" in out
    assert "+provider: ovh\n" in out
    assert out.splitlines()[-4:] == [f"would create {name}" for name in FILES]

    assert run(["--provider", "ovh", "init"], capsys)[0] == 0
    _edit(repo / TESTS, "timeout-minutes: 60", "timeout-minutes: 5")
    _patch_templates(
        monkeypatch,
        lambda path, text: text.replace("  pull_request:\n", "  pull_request:\n  merge_group:\n"),
    )
    before = _snapshot(repo)
    code, out, _ = run(["init", "--dry-run"], capsys)
    assert code == 0
    assert _snapshot(repo) == before
    assert f"--- a/{TESTS}\n+++ b/{TESTS}\n" in out
    assert "\n   pull_request:\n+  merge_group:\n" in out
    assert "timeout-minutes" not in out
    assert f"would update {TESTS}" in out
    assert f"unchanged {CONFIG}" in out

    code, out, _ = run(["--json", "init", "--dry-run"], capsys)
    files = {f["path"]: f for f in json.loads(out)["files"]}
    assert "+  merge_group:" in files[TESTS]["diff"]
    assert files[CONFIG]["diff"] == ""
    assert _snapshot(repo) == before


@pytest.mark.parametrize(
    ("broken", "line"),
    [
        ("name: x\non:\n  push: [main\njobs: {}\n", 4),
        ("name: x\n  bad: indent\n", 2),
        ("- a list\n- at the top\n", 1),
    ],
)
def test_invalid_yaml_stops_with_file_and_line_and_writes_nothing(
    repo: Path, broken: str, line: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["init"], capsys)[0] == 0
    (repo / MANUAL).write_text(broken)
    (repo / CONFIG).unlink()
    before = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    code, out, err = run(["init"], capsys)
    assert code == 2
    assert out == ""
    assert err.startswith(f"error: {MANUAL}:{line}: ")
    assert "Traceback" not in err
    assert {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()} == before
    assert not (repo / CONFIG).exists()  # nothing written, not even the other files


def test_an_invalid_config_is_reported_as_every_command_does(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repo / CONFIG).write_text("provider: ovh\ntimeout: [\n")
    code, _, err = run(["init"], capsys)
    assert code == 2
    assert "ondemand.yml:3: invalid YAML" in err
    assert (repo / CONFIG).read_text() == "provider: ovh\ntimeout: [\n"
    assert not (repo / ".github").exists()


def test_writes_keep_the_mode_and_leave_no_temporary_file(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repo / CONFIG).write_text("provider: local\n")
    (repo / CONFIG).chmod(0o640)
    assert run(["init"], capsys)[0] == 0
    assert (repo / CONFIG).stat().st_mode & 0o777 == 0o640
    assert "models:" in (repo / CONFIG).read_text()
    leftovers = [p.name for p in repo.rglob("*.tmp")]
    assert leftovers == []


def _blocks(text: str) -> list[tuple[int, int]]:
    """Every key and every list item that starts its own line, as (first, end) line ranges:
    the line and those under it, indented deeper (or blank, or comments)."""
    lines = text.split("\n")
    found = []
    for first, line in enumerate(lines):
        stripped = line.lstrip(" ")
        if not stripped or stripped.startswith("#"):
            continue
        column = len(line) - len(stripped)
        end = first + 1
        while end < len(lines):
            rest = lines[end].lstrip(" ")
            if rest and not rest.startswith("#") and len(lines[end]) - len(rest) <= column:
                break
            end += 1
        while end > first + 1 and not lines[end - 1].strip():
            end -= 1
        found.append((first, end))
    return found


def _step_ids(step: Any) -> set[str]:
    ids = {f"{key}:{step[key]}" for key in ("id", "name") if key in step}
    if "uses" in step:
        action, with_ = step["uses"].split("@")[0], step.get("with")
        if ACTION.startswith(action + "@") and isinstance(with_, dict) and "command" in with_:
            action += f"#{with_['command']}"
        ids.add(f"uses:{action}")
    return ids


def _expected(user: Any, template: Any, key: str = "") -> Any:
    """The rules of a merge, on loaded data: missing keys and steps come from the template,
    the rest is the user's."""
    if isinstance(user, dict) and isinstance(template, dict):
        merged = dict(user)
        for name, value in template.items():
            merged[name] = _expected(user[name], value, name) if name in user else value
        return merged
    if key == "steps" and isinstance(user, list) and isinstance(template, list):
        steps, at = list(user), 0
        for step in template:
            found = next((i for i, mine in enumerate(steps) if _step_ids(mine) & _step_ids(step)),
                         None)  # fmt: skip
            if found is None:
                steps.insert(at, step)
                at += 1
            else:
                steps[found] = _expected(steps[found], step)
                at = found + 1
        return steps
    return user


@pytest.mark.parametrize(
    ("path", "provider"),
    [(CONFIG, "ovh"), (NIGHTLY, "ovh"), (TESTS, "runpod")],
)
def test_whatever_single_entry_is_missing_merging_puts_it_back_in_place(
    path: str, provider: str
) -> None:
    template = templates.render(provider, "my-project")[path]
    load = YAML(typ="safe").load
    wanted = load(template)
    lines = template.split("\n")
    for first, end in _blocks(template):
        edited = "\n".join(lines[:first] + lines[end:])
        result = merge(edited, template, {}, path)
        assert result.notes == []
        assert load(result.text) == _expected(load(edited), wanted), (
            f"without lines {first + 1}-{end} of {path}:\n{result.text}"
        )
        if first % 4 == 0:  # a merged file is a fixed point (checked on a sample: time)
            assert merge(result.text, template, {}, path).text == result.text


def test_the_provider_can_be_given_after_init_too(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["init", "--provider", "runpod"], capsys)
    assert code == 0, err
    assert _load(repo / CONFIG)["provider"] == "runpod"
    code, _, err = run(["init", "--provider", "nope"], capsys)
    assert code == 2
    assert "must be one of" in err


def test_a_nightly_stop_written_before_reap_becomes_a_reap_and_keeps_its_edits(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["init", "--provider", "ovh"], capsys)[0] == 0
    text = (repo / NIGHTLY).read_text()
    older = text.replace("command: reap", "command: stop").replace(
        "      deployments: write # to mark the GitHub Deployments of stopped servers inactive\n",
        "",
    )
    older = older.replace('cron: "0 2 * * *"', 'cron: "0 3 * * *"')  # the user's own time
    (repo / NIGHTLY).write_text(older)
    assert run(["init", "--provider", "ovh"], capsys)[0] == 0
    nightly = _load(repo / NIGHTLY)
    assert [s["with"]["command"] for s in _action_steps(nightly, "stop")] == ["reap"]
    assert nightly["jobs"]["stop"]["permissions"]["deployments"] == "write"
    assert nightly["on"]["schedule"] == [{"cron": "0 3 * * *"}]
