"""GitHub Actions I/O, checked against the formats the runner parses."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from pydantic import SecretStr

from ondemand.gha import Actions, escape_data, escape_property


def parse_file_command(text: str) -> dict[str, str]:
    """Read $GITHUB_OUTPUT / $GITHUB_ENV as the runner does (Linux line endings).

    Per GitHub's documented format: blank lines are skipped; ``NAME=VALUE`` when ``=`` comes
    before any ``<<``; otherwise ``NAME<<DELIMITER``, then the value's lines up to the first
    line that equals the delimiter exactly. A missing delimiter is an error.
    """
    values: dict[str, str] = {}
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if not line:
            continue
        equals, heredoc = line.find("="), line.find("<<")
        if equals >= 0 and (heredoc < 0 or equals < heredoc):
            name, value = line.split("=", 1)
            values[name] = value
            continue
        name, delimiter = line.split("<<", 1)
        assert name, "name must not be empty"
        assert delimiter, "delimiter must not be empty"
        body: list[str] = []
        while True:
            assert index < len(lines), f"Matching delimiter not found '{delimiter}'"
            current = lines[index]
            index += 1
            if current == delimiter:
                break
            body.append(current)
        values[name] = "\n".join(body)
    return values


class Runner:
    """An Actions environment with its command files under tmp_path and captured streams."""

    def __init__(self, tmp_path: Path, *, active: bool = True) -> None:
        self.files = {
            name: tmp_path / name.lower()
            for name in ("GITHUB_OUTPUT", "GITHUB_ENV", "GITHUB_PATH", "GITHUB_STEP_SUMMARY")
        }
        for path in self.files.values():
            path.write_text("", encoding="utf-8")
        env = {name: str(path) for name, path in self.files.items()}
        if active:
            env["GITHUB_ACTIONS"] = "true"
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.gha = Actions(env, stdout=self.stdout, stderr=self.stderr)

    def read(self, name: str) -> str:
        return self.files[name].read_text(encoding="utf-8")


@pytest.fixture
def runner(tmp_path: Path) -> Runner:
    return Runner(tmp_path)


@pytest.fixture
def outside(tmp_path: Path) -> Runner:
    return Runner(tmp_path, active=False)


# ---------------------------------------------------------------- outputs and env


def test_outputs_round_trip_through_the_runner_format(runner: Runner) -> None:
    multi = "line one\nEOF\nghadelimiter_1234\n\nlast = line <<EOF"
    assert runner.gha.set_output("url", "https://example.test/ollama")
    assert runner.gha.set_output("log", multi)
    assert runner.gha.set_output("empty", "")
    assert runner.gha.set_output("trailing", "ends with newline\n")
    parsed = parse_file_command(runner.read("GITHUB_OUTPUT"))
    assert parsed == {
        "url": "https://example.test/ollama",
        "log": multi,
        "empty": "",
        "trailing": "ends with newline\n",
    }
    assert runner.stdout.getvalue() == ""


def test_delimiter_never_occurs_in_the_value(runner: Runner) -> None:
    runner.gha.set_output("a", "x")
    first_line = runner.read("GITHUB_OUTPUT").splitlines()[0]
    delimiter = first_line.split("<<", 1)[1]
    # A value made of that very delimiter still parses back exactly.
    runner.gha.set_output("b", f"{delimiter}\n{delimiter}")
    parsed = parse_file_command(runner.read("GITHUB_OUTPUT"))
    assert parsed["b"] == f"{delimiter}\n{delimiter}"
    delimiters = re.findall(r"^b<<(.+)$", runner.read("GITHUB_OUTPUT"), flags=re.MULTILINE)
    assert delimiters
    assert delimiters[0] != delimiter


def test_set_env_round_trips(runner: Runner) -> None:
    assert runner.gha.set_env("OLLAMA_HOST", "https://x.test")
    assert runner.gha.set_env("MULTI", "a\nb")
    assert parse_file_command(runner.read("GITHUB_ENV")) == {
        "OLLAMA_HOST": "https://x.test",
        "MULTI": "a\nb",
    }


@pytest.mark.parametrize("name", ["", "1abc", "has space", "a=b", "a\nb", "url<<x"])
def test_bad_output_names_are_refused(runner: Runner, name: str) -> None:
    with pytest.raises(ValueError, match="invalid output name"):
        runner.gha.set_output(name, "v")
    assert runner.read("GITHUB_OUTPUT") == ""


@pytest.mark.parametrize(
    "name",
    ["NODE_OPTIONS", "node_options", "LD_PRELOAD", "BASH_ENV", "PATH", "GITHUB_TOKEN", "RUNNER_OS"],
)
def test_dangerous_env_names_are_refused(runner: Runner, name: str) -> None:
    with pytest.raises(ValueError, match="refusing to set"):
        runner.gha.set_env(name, "x")
    assert runner.read("GITHUB_ENV") == ""


@pytest.mark.parametrize("name", ["A=B", "A\nB", "", "9X", "A-B"])
def test_malformed_env_names_are_refused(runner: Runner, name: str) -> None:
    with pytest.raises(ValueError, match="invalid environment variable name"):
        runner.gha.set_env(name, "x")


def test_add_path(runner: Runner, tmp_path: Path) -> None:
    assert runner.gha.add_path(tmp_path / "bin")
    assert runner.read("GITHUB_PATH") == f"{tmp_path / 'bin'}\n"
    with pytest.raises(ValueError, match="invalid PATH entry"):
        runner.gha.add_path("a\nb")


def test_summary_appends_markdown(runner: Runner) -> None:
    assert runner.gha.summary("## ollama-ondemand")
    assert runner.gha.summary("| url | x |\n")
    assert runner.read("GITHUB_STEP_SUMMARY") == "## ollama-ondemand\n| url | x |\n"


def test_active_without_files_writes_nothing(tmp_path: Path) -> None:
    gha = Actions({"GITHUB_ACTIONS": "true"}, stdout=io.StringIO(), stderr=io.StringIO())
    assert gha.set_output("url", "x") is False
    assert gha.summary("x") is False


# ---------------------------------------------------------------- commands


def test_escapes() -> None:
    assert escape_data("50% done\r\nnext") == "50%25 done%0D%0Anext"
    assert escape_property("a:b,c%\n") == "a%3Ab%2Cc%25%0A"
    assert escape_data("a:b,c") == "a:b,c"


def test_annotations_with_properties(runner: Runner) -> None:
    runner.gha.error("bad value\nsecond line", title="config: error", file="ondemand.yml", line=4)
    runner.gha.warning("careful, 100%")
    runner.gha.notice("done")
    runner.gha.debug("detail")
    assert runner.stdout.getvalue().splitlines() == [
        "::error title=config%3A error,file=ondemand.yml,line=4::bad value%0Asecond line",
        "::warning::careful, 100%25",
        "::notice::done",
        "::debug::detail",
    ]
    assert runner.stderr.getvalue() == ""


def test_mask_the_whole_value_and_each_line(runner: Runner) -> None:
    runner.gha.mask("first-line-secret\nsecond-line-secret\n\nab\n")
    runner.gha.mask(SecretStr("odk_0123%0A"))
    runner.gha.mask(None)
    runner.gha.mask("")
    runner.gha.mask("abc")  # too short: would mask ordinary words everywhere
    runner.gha.mask("first-line-secret")  # already masked
    assert runner.stdout.getvalue().splitlines() == [
        "::add-mask::first-line-secret%0Asecond-line-secret%0A%0Aab%0A",
        "::add-mask::first-line-secret",
        "::add-mask::second-line-secret",
        "::add-mask::odk_0123%250A",
    ]


def test_masked_values_never_appear_in_annotations(runner: Runner) -> None:
    runner.gha.mask("odk_supersecret")
    runner.gha.error("auth failed with key odk_supersecret", title="odk_supersecret")
    last = runner.stdout.getvalue().splitlines()[-1]
    assert last == "::error title=***::auth failed with key ***"


def test_group(runner: Runner) -> None:
    with runner.gha.group("Install ondemand"):
        runner.stdout.write("pip output\n")
    assert runner.stdout.getvalue() == "::group::Install ondemand\npip output\n::endgroup::\n"


def test_stop_commands(runner: Runner) -> None:
    with runner.gha.stop_commands() as token:
        runner.stdout.write("::error::injected by a server log\n")
    lines = runner.stdout.getvalue().splitlines()
    assert len(token) >= 32
    assert lines == [
        f"::stop-commands::{token}",
        "::error::injected by a server log",
        f"::{token}::",
    ]


def test_commands_issued_while_stopped_still_work(runner: Runner) -> None:
    with runner.gha.stop_commands() as token:
        runner.stdout.write("untrusted\n")
        runner.gha.mask("late-secret-value")
        runner.stdout.write("more untrusted\n")
    lines = runner.stdout.getvalue().splitlines()
    assert lines[:4] == [
        f"::stop-commands::{token}",
        "untrusted",
        f"::{token}::",
        "::add-mask::late-secret-value",
    ]
    new_token = lines[4].removeprefix("::stop-commands::")
    assert new_token not in ("", token)
    assert lines[5:] == ["more untrusted", f"::{new_token}::"]


# ---------------------------------------------------------------- outside Actions


def test_outside_actions_nothing_is_written(outside: Runner) -> None:
    gha = outside.gha
    assert gha.active is False
    assert gha.set_output("url", "x") is False
    assert gha.set_env("OLLAMA_HOST", "x") is False
    assert gha.add_path("/opt/bin") is False
    assert gha.summary("# hi") is False
    gha.mask("a-secret-value")
    gha.debug("detail")
    with gha.stop_commands():
        pass
    for name in outside.files:
        assert outside.read(name) == ""
    assert outside.stdout.getvalue() == ""
    assert outside.stderr.getvalue() == ""


def test_outside_actions_annotations_go_to_stderr(outside: Runner) -> None:
    outside.gha.mask("a-secret-value")
    outside.gha.error("first line\nsecond line with a-secret-value")
    outside.gha.warning("50% there", file="ondemand.yml", line=3)
    outside.gha.notice("fyi", title="Cost")
    with outside.gha.group("Deploying"):
        pass
    assert outside.stdout.getvalue() == ""
    assert outside.stderr.getvalue() == (
        "error: first line\nsecond line with ***\n"
        "warning: ondemand.yml:3: 50% there\n"
        "notice: Cost: fyi\n"
        "Deploying\n"
    )


def test_active_only_when_github_actions_is_true() -> None:
    assert Actions({"GITHUB_ACTIONS": "true"}).active
    assert not Actions({"GITHUB_ACTIONS": "false"}).active
    assert not Actions({"CI": "true"}).active


def test_default_streams_are_looked_up_at_call_time(capsys: pytest.CaptureFixture[str]) -> None:
    gha = Actions({})
    gha.error("to the current stderr")
    assert capsys.readouterr().err == "error: to the current stderr\n"
