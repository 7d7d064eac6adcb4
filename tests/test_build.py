"""``ondemand build`` against a fake ``docker`` executable (no Docker engine is ever used).

The fake records each command line it gets, answers ``buildx version``, prints a build log,
and writes the metadata file the way ``docker buildx build --metadata-file`` does. The
``FAKE_DOCKER_MODE`` variable makes it fail in the ways a real build fails.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
from pathlib import Path

import pytest

from ondemand import image
from ondemand.gha import Actions
from tests.clirun import run

DIGEST = "sha256:" + "ab12" * 16

FAKE_DOCKER = r"""#!{python}
import json, os, sys, time
from pathlib import Path

args = sys.argv[1:]
with open(os.environ["FAKE_DOCKER_LOG"], "a") as record:
    record.write(json.dumps(args) + "\n")
mode = os.environ.get("FAKE_DOCKER_MODE", "ok")

if args[:2] == ["buildx", "version"]:
    if mode == "no-buildx":
        # What docker 28 says without the plugin.
        print("docker: unknown command: docker buildx\n\nRun 'docker --help' for more "
              "information", file=sys.stderr)
        sys.exit(1)
    print("github.com/docker/buildx v0.20.1 5f6a1a7")
    sys.exit(0)
if args[:2] != ["buildx", "build"]:
    print("fake docker: unexpected command", args, file=sys.stderr)
    sys.exit(2)

print("#0 building with \"default\" instance using docker driver", file=sys.stderr, flush=True)
if mode == "wait":
    # Streaming check: the CLI must show this line while the build is still running.
    go = Path(os.environ["FAKE_DOCKER_GO"])
    deadline = time.monotonic() + 10
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    print("#1 streamed" if go.exists() else "#1 NOT STREAMED", file=sys.stderr, flush=True)
    sys.exit(0 if go.exists() else 1)
for step in range(1, 31):
    print(f"#{step} step {step} DONE 0.{step}s", file=sys.stderr, flush=True)
# A RUN step can print anything, including text shaped like a workflow command.
print("::set-env name=PWNED::1")
if mode == "daemon":
    print("ERROR: Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
          "Is the docker daemon running?", file=sys.stderr)
    sys.exit(1)
if mode == "denied":
    print("ERROR: failed to push ghcr.io/acme/ollama:1: unexpected status from POST request: "
          "401 Unauthorized", file=sys.stderr)
    sys.exit(1)
if mode == "no-base":
    print("ERROR: failed to solve: docker.io/ollama/ollama:9.9.9: not found", file=sys.stderr)
    sys.exit(1)
if mode == "fail":
    print("ERROR: failed to solve: process \"/bin/sh -c apt-get update\" did not complete "
          "successfully: exit code: 100", file=sys.stderr)
    sys.exit(1)
metadata = {"buildx.build.ref": "default/default/x1"}
if mode != "no-digest":
    metadata["containerimage.digest"] = os.environ["FAKE_DOCKER_DIGEST"]
Path(args[args.index("--metadata-file") + 1]).write_text(json.dumps(metadata))
print("#31 DONE 1.0s", file=sys.stderr)
"""


class FakeDocker:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.log = directory / "calls.jsonl"

    @property
    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def docker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeDocker:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "docker"
    script.write_text(FAKE_DOCKER.replace("{python}", sys.executable))
    script.chmod(0o755)
    fake = FakeDocker(bin_dir)
    # First on PATH, so the CLI finds this one and never a real docker.
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(fake.log))
    monkeypatch.setenv("FAKE_DOCKER_DIGEST", DIGEST)
    return fake


@pytest.fixture
def context(tmp_path: Path) -> Path:
    """A build context: a directory holding image/Dockerfile."""
    root = tmp_path / "repo"
    (root / "image").mkdir(parents=True)
    (root / "image" / "Dockerfile").write_text("FROM scratch\n")
    return root


@pytest.fixture(autouse=True)
def _plain_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (
        "GITHUB_ACTIONS",
        "GITHUB_ACTION_PATH",
        "RUNNER_DEBUG",
        "ONDEMAND_DEBUG",
        "ONDEMAND_CONFIG",
        "ONDEMAND_IMAGE",
        "ONDEMAND_IMAGE_CONTEXT",
        "FAKE_DOCKER_MODE",
    ):
        monkeypatch.delenv(name, raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)


# -- success ----------------------------------------------------------------------------


def test_build_runs_exactly_this_buildx_command_and_prints_the_digest(
    docker: FakeDocker, context: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["build", "--context", str(context)], capsys)
    assert code == 0, err
    assert out == f"ollama-ondemand:local@{DIGEST}\n"
    probe, build = docker.calls
    assert probe == ["buildx", "version"]
    metadata = build[build.index("--metadata-file") + 1]
    assert build == [
        "buildx", "build",
        "--file", str(context / "image" / "Dockerfile"),
        "--tag", "ollama-ondemand:local",
        "--platform", "linux/amd64",
        "--progress", "plain",
        "--metadata-file", metadata,
        "--load",
        str(context),
    ]  # fmt: skip
    # The metadata file lives in a scratch directory that is gone afterwards.
    assert not Path(metadata).parent.exists()


def test_the_log_streams_to_stderr_in_order_and_stdout_stays_clean(
    docker: FakeDocker, context: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["build", "--context", str(context)], capsys)
    assert code == 0
    lines = err.splitlines()
    assert lines[0] == "Building ollama-ondemand:local (linux/amd64)"
    assert lines[1].startswith("$ docker buildx build --file ")
    assert lines[1].endswith(f"--load {context}")
    steps = [line for line in lines if re.fullmatch(r"#\d+ step \d+ DONE .*", line)]
    assert steps == [f"#{n} step {n} DONE 0.{n}s" for n in range(1, 31)]
    assert lines[-1] == "#31 DONE 1.0s"
    assert out.count("\n") == 1


def test_push_with_a_registry_tag_and_an_ollama_version(
    docker: FakeDocker, context: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--json", "build", "-t", "ghcr.io/acme/ollama-ondemand:1", "--push",
            "--ollama-version", "v0.34.0", "--context", str(context)]  # fmt: skip
    code, out, err = run(args, capsys)
    assert code == 0, err
    assert json.loads(out) == {
        "image": "ghcr.io/acme/ollama-ondemand:1",
        "digest": DIGEST,
        "pushed": True,
        "platform": "linux/amd64",
    }
    build = docker.calls[1]
    assert build[build.index("--tag") + 1] == "ghcr.io/acme/ollama-ondemand:1"
    assert build[build.index("--build-arg") + 1] == "OLLAMA_VERSION=0.34.0"
    assert build[-2:] == ["--push", str(context)]
    assert "--load" not in build


def test_platform_is_passed_through(
    docker: FakeDocker, context: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, _ = run(["build", "--platform", "linux/arm64", "--context", str(context)], capsys)
    assert code == 0
    build = docker.calls[1]
    assert build[build.index("--platform") + 1] == "linux/arm64"
    assert "--build-arg" not in build


def test_the_tag_defaults_to_the_configured_image(
    docker: FakeDocker,
    context: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    Path("ondemand.yml").write_text("image: registry.example.com/team/ollama:from-file\n")
    code, out, _ = run(["build", "--context", str(context)], capsys)
    assert (code, out) == (0, f"registry.example.com/team/ollama:from-file@{DIGEST}\n")
    monkeypatch.setenv("ONDEMAND_IMAGE", "registry.example.com/team/ollama:from-env")
    code, out, _ = run(["build", "--context", str(context)], capsys)
    assert (code, out) == (0, f"registry.example.com/team/ollama:from-env@{DIGEST}\n")
    code, out, _ = run(["build", "-t", "mine:flag", "--context", str(context)], capsys)
    assert (code, out) == (0, f"mine:flag@{DIGEST}\n")


def test_without_a_digest_a_local_build_prints_the_tag_and_a_push_fails(
    docker: FakeDocker,
    context: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_DOCKER_MODE", "no-digest")
    code, out, _ = run(["build", "--context", str(context)], capsys)
    assert (code, out) == (0, "ollama-ondemand:local\n")
    code, out, err = run(
        ["build", "--push", "-t", "ghcr.io/a/b:1", "--context", str(context)], capsys
    )
    assert code == 7
    assert "ghcr.io/a/b:1 was pushed, but docker buildx reported no digest" in err
    assert "docker buildx imagetools inspect ghcr.io/a/b:1" in err


def test_quiet_hides_the_log(
    docker: FakeDocker, context: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["-q", "build", "--context", str(context)], capsys)
    assert (code, out, err) == (0, "", "")


def test_the_default_context_is_the_source_tree_of_this_package() -> None:
    root = Path(__file__).resolve().parent.parent
    assert image.find_context(None, {}, Path("/")) == root
    assert (root / "image" / "Dockerfile").is_file()


def test_context_search_order(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, context: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    other = tmp_path / "other"
    (other / "image").mkdir(parents=True)
    (other / "image" / "Dockerfile").write_text("FROM scratch\n")
    monkeypatch.setattr(image, "_source_tree", lambda: empty)
    action = {"GITHUB_ACTION_PATH": str(context)}
    assert image.find_context(None, action, other) == context
    assert image.find_context(None, {}, other) == other
    monkeypatch.setattr(image, "_source_tree", lambda: other)
    assert image.find_context(None, action, empty) == other
    explicit = {"ONDEMAND_IMAGE_CONTEXT": str(context), **action}
    assert image.find_context(None, explicit, empty) == context
    assert image.find_context(Path("repo"), explicit, tmp_path) == context


def test_the_log_is_streamed_while_the_build_runs(
    docker: FakeDocker, context: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    monkeypatch.setenv("FAKE_DOCKER_MODE", "wait")
    monkeypatch.setenv("FAKE_DOCKER_GO", str(go))

    class Releasing(io.StringIO):
        """Lets the fake build finish only once its first line has reached us."""

        def write(self, text: str) -> int:
            if "#0 building" in text:
                go.touch()
            return super().write(text)

    err = Releasing()
    request = image.prepare(
        tag="t:1", push=False, platform="linux/amd64", ollama_version=None,
        context=context, env=os.environ, cwd=tmp_path,
    )  # fmt: skip
    result = image.build(request, env=os.environ, actions=Actions({}, io.StringIO(), err))
    assert "#1 streamed" in err.getvalue()
    assert result.reference == "t:1"


# -- inside GitHub Actions --------------------------------------------------------------


def test_in_actions_the_log_is_grouped_and_cannot_issue_commands(
    docker: FakeDocker,
    context: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    code, out, err = run(["build", "--context", str(context)], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "::group::Building ollama-ondemand:local (linux/amd64)"
    stop = re.fullmatch(r"::stop-commands::([0-9a-f]{32})", lines[1])
    assert stop is not None
    assert lines[2:] == [f"::{stop.group(1)}::", "::endgroup::", f"ollama-ondemand:local@{DIGEST}"]
    # The RUN step's command-shaped line went to stderr, inside the stopped section.
    assert "::set-env name=PWNED::1" in err.splitlines()


# -- failures: exit 7 -------------------------------------------------------------------


def test_no_docker_on_path_exits_7(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    context: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    nothing = tmp_path / "no-bin"
    nothing.mkdir()
    monkeypatch.setenv("PATH", str(nothing))
    code, out, err = run(["build", "--context", str(context)], capsys)
    assert (code, out) == (7, "")
    assert err.startswith("error: docker not found on PATH\n")
    assert "Next step: install Docker with the buildx plugin" in err


def test_no_buildx_exits_7_with_what_docker_said(
    docker: FakeDocker,
    context: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_DOCKER_MODE", "no-buildx")
    code, out, _ = run(["--json", "build", "--context", str(context)], capsys)
    assert code == 7
    error = json.loads(out)["error"]
    assert error["exit_code"] == 7
    assert error["message"] == "docker buildx is not available"
    assert error["cause"] == "docker: unknown command: docker buildx"
    assert "docker-buildx-plugin" in error["hint"]
    assert docker.calls == [["buildx", "version"]]


def test_a_failed_build_exits_7_with_the_end_of_its_log(
    docker: FakeDocker,
    context: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_DOCKER_MODE", "fail")
    code, out, err = run(["build", "--context", str(context)], capsys)
    assert (code, out) == (7, "")
    report = err[err.index("error: ") :]
    assert report.startswith(
        "error: docker buildx build of ollama-ondemand:local failed (exit status 1); "
        "the last 20 lines of its log:\n"
    )
    # The last 20 lines: steps 13..30, the injected line, the error.
    assert "#12 step 12 DONE" not in report
    assert "#13 step 13 DONE 0.13s" in report
    assert "did not complete successfully: exit code: 100" in report
    assert "Likely cause: a step of image/Dockerfile failed" in report
    assert "Next step: read the build log above" in report


@pytest.mark.parametrize(
    ("mode", "cause"),
    [
        ("daemon", "the Docker daemon is not running"),
        ("denied", "the registry refused the push"),
        ("no-base", "the base image ollama/ollama:9.9.9 could not be found"),
    ],
)
def test_failures_name_their_likely_cause(
    mode: str,
    cause: str,
    docker: FakeDocker,
    context: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_DOCKER_MODE", mode)
    args = ["build", "--push", "-t", "ghcr.io/acme/ollama:1", "--ollama-version", "9.9.9",
            "--context", str(context)]  # fmt: skip
    code, _, err = run(args, capsys)
    assert code == 7
    assert f"Likely cause: {cause}" in err
    if mode == "denied":
        assert "docker login REGISTRY" in err


def test_a_failure_in_actions_is_an_annotation_after_the_group(
    docker: FakeDocker,
    context: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("FAKE_DOCKER_MODE", "fail")
    code, out, _ = run(["build", "--context", str(context)], capsys)
    assert code == 7
    lines = out.splitlines()
    assert lines[3] == "::endgroup::"
    assert lines[4].startswith("::error title=image build failed::docker buildx build of ")
    # Multi-line messages are escaped into one annotation line.
    assert "%0A#30 step 30 DONE 0.30s%0A" in lines[4]


# -- usage errors: exit 2, docker never runs --------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--push"], "--push needs a tag that names a registry, got 'ollama-ondemand:local'"),
        (["--push", "-t", "acme/ollama:1"], "--push needs a tag that names a registry"),
        (["-t", "Acme/Ollama:1"], "invalid image reference 'Acme/Ollama:1'"),
        (["-t", "ollama:bad tag"], "invalid image reference 'ollama:bad tag'"),
        (["-t", f"ghcr.io/a/b@{DIGEST}"], "a digest names an image that already exists"),
        (["--platform", "amd64"], "invalid --platform 'amd64'"),
        (["--platform", "linux/amd64,linux/arm64"], "cannot load a multi-platform image"),
        (["--ollama-version", "0.33 .3"], "invalid --ollama-version '0.33 .3'"),
        (["--context", "nowhere"], "no image/Dockerfile in "),
    ],
)
def test_usage_errors_exit_2_before_docker_runs(
    args: list[str],
    message: str,
    docker: FakeDocker,
    context: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if "--context" not in args:
        args = [*args, "--context", str(context)]
    code, _, err = run(["build", *args], capsys)
    assert code == 2, err
    assert message in err
    assert docker.calls == []


def test_a_wrong_image_context_variable_is_an_error_not_a_fallback(
    docker: FakeDocker, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ONDEMAND_IMAGE_CONTEXT", "/nonexistent")
    code, _, err = run(["build"], capsys)
    assert code == 2
    assert "no image/Dockerfile in '/nonexistent' (from ONDEMAND_IMAGE_CONTEXT)" in err


def test_no_context_anywhere_is_a_usage_error(
    docker: FakeDocker,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setattr(image, "_source_tree", lambda: tmp_path)
    code, _, err = run(["build"], capsys)
    assert code == 2
    assert "error: cannot find image/Dockerfile to build" in err
    assert "pass --context DIR" in err
    assert docker.calls == []


def test_help_names_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["build", "--help"], capsys)
    assert code == 0
    for option in ("--tag", "-t", "--push", "--platform", "--ollama-version", "--context",
                   "ONDEMAND_IMAGE", "ONDEMAND_IMAGE_CONTEXT", "linux/amd64"):  # fmt: skip
        assert option in out
