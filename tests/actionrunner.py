"""Run action.yml's composite steps the way GitHub's runner does, without a runner.

Each ``run:`` step is written to a file and run with ``bash --noprofile --norc -eo pipefail``
(the runner's ``shell: bash``), with the runner's variables: ``GITHUB_ACTION_PATH``, a fresh
``GITHUB_OUTPUT`` per step, ``GITHUB_ENV``, ``GITHUB_PATH``, ``GITHUB_STEP_SUMMARY``,
``RUNNER_TEMP``. ``${{ }}`` expressions are evaluated for the contexts an action may use
here (``inputs``, ``steps.<id>.outputs``, ``github``, ``runner``); anything else fails the
test, so action.yml cannot grow an expression this runner would get wrong. ``uses:`` steps
are third-party actions: a test supplies what each one outputs.
"""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parent.parent
_EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
_HEREDOC = re.compile(r"^([^=<\n]+)<<(.+)$")

UsesStub = Callable[[Mapping[str, str]], dict[str, str]]
GITHUB_CONTEXT = {"run_id": "42", "ref": "refs/heads/main"}


def unescape_data(escaped: str) -> str:
    """A workflow command's data as the runner reads it back: ``%0D``, then ``%0A``, then
    ``%25`` (actions/runner src/Runner.Common/ActionCommand.cs, UnescapeData, commit
    079cdb1d05fe0ec50f8c51de5a4fa51d0eb189b0)."""
    return escaped.replace("%0D", "\r").replace("%0A", "\n").replace("%25", "%")


def install_standin(temp: Path) -> Path:
    """What install.sh leaves behind, made from this checkout without a package index
    (tests never reach one): a real venv of the Python that runs the tests, whose ``.pth``
    adds this interpreter's site-packages (where ollama-ondemand is installed, editable)
    and whose ``bin/ondemand`` is the console script, recorded by action/verify_venv.py as
    install.sh records it. Returns the venv."""
    venv = temp / "ollama-ondemand" / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    here = sysconfig.get_paths()["purelib"]
    (site / "ondemand_test_standin.pth").write_text(f"import site; site.addsitedir({here!r})\n")
    launcher = venv / "bin" / "ondemand"
    launcher.write_text(
        f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom ondemand.cli import main\n"
        "sys.exit(main())\n"
    )
    launcher.chmod(0o755)
    (venv / ".installed-from").write_text(f"{ROOT}@local")
    record = [sys.executable, "-I", "-S", "-B", str(ROOT / "action" / "verify_venv.py")]
    subprocess.run([*record, "record", str(venv)], check=True)
    return venv


def scalar(value: object) -> str:
    """A YAML scalar as the runner passes it on: booleans as ``true``/``false``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def load_action() -> dict[str, Any]:
    data: dict[str, Any] = YAML(typ="safe").load((ROOT / "action.yml").read_text())
    return data


def parse_commands_file(text: str) -> dict[str, str]:
    """``GITHUB_OUTPUT`` / ``GITHUB_ENV`` syntax: ``name=value`` or a heredoc."""
    values: dict[str, str] = {}
    lines = text.split("\n")
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        heredoc = _HEREDOC.match(line)
        if heredoc:
            name, delimiter = heredoc.groups()
            body: list[str] = []
            while lines[index] != delimiter:
                body.append(lines[index])
                index += 1
            index += 1
            values[name] = "\n".join(body)
        elif "=" in line:
            name, _, value = line.partition("=")
            values[name] = value
    return values


@dataclass
class StepResult:
    name: str
    code: int
    stdout: str
    stderr: str


@dataclass
class ActionRun:
    outputs: dict[str, str]
    steps: list[StepResult]
    exported_env: dict[str, str]
    path: list[str]
    summary: str
    masks: list[str] = field(default_factory=list)

    @property
    def code(self) -> int:
        return self.steps[-1].code if self.steps else 0

    @property
    def log(self) -> str:
        return "".join(step.stdout + step.stderr for step in self.steps)

    def errors(self) -> list[str]:
        return [line for line in self.log.splitlines() if line.startswith("::error")]


@dataclass
class Runner:
    """One job: runs of the action share its RUNNER_TEMP, env file, path and summary."""

    temp: Path
    env: dict[str, str]
    uses: dict[str, UsesStub]
    token: str = "ghs_fake_job_token_0123456789"
    # The github context beyond the token, for workflow expressions (run_id, ref, ...).
    github: dict[str, str] = field(default_factory=lambda: dict(GITHUB_CONTEXT))
    exported: dict[str, str] = field(default_factory=dict)
    path: list[str] = field(default_factory=list)
    # The repository's secrets; one that is not set is empty, as on GitHub.
    secrets: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.temp.mkdir(parents=True, exist_ok=True)
        self.summary_file = self.temp / "_summary.md"
        self.summary_file.touch()

    def run(self, inputs: Mapping[str, str]) -> ActionRun:
        action = load_action()
        declared: dict[str, Any] = action["inputs"]
        unknown = set(inputs) - set(declared)
        assert not unknown, f"inputs action.yml does not declare: {sorted(unknown)}"
        steps_outputs: dict[str, dict[str, str]] = {}
        values: dict[str, str] = {}
        context = {"inputs": values, "steps": steps_outputs}
        for name, spec in declared.items():
            default = scalar(spec.get("default", ""))
            values[name] = inputs.get(name, self._evaluate(default, context))
        results: list[StepResult] = []
        masks: list[str] = []
        summary_before = self.summary_file.read_text()
        for step in action["runs"]["steps"]:
            name = self._evaluate(str(step.get("name", "")), context)
            step_env = {
                k: self._evaluate(scalar(v), context) for k, v in step.get("env", {}).items()
            }
            if "uses" in step:
                with_ = {k: self._evaluate(scalar(v), context) for k, v in step["with"].items()}
                stub = self.uses[str(step["uses"]).split("@")[0]]
                outputs = stub(with_)
                results.append(StepResult(name, 0, "", ""))
            else:
                assert step.get("shell") == "bash", f"step {name!r}: only shell: bash is run here"
                result, outputs = self._run_script(name, str(step["run"]), step_env)
                results.append(result)
                masks += [
                    unescape_data(line.removeprefix("::add-mask::"))
                    for line in result.stdout.split("\n")
                    if line.startswith("::add-mask::")
                ]
            # A failed step's outputs are kept, as the runner keeps them.
            if "id" in step:
                steps_outputs[str(step["id"])] = outputs
            if results[-1].code != 0:
                break
        action_outputs = {
            name: self._evaluate(str(spec["value"]), context)
            for name, spec in action.get("outputs", {}).items()
        }
        summary = self.summary_file.read_text()[len(summary_before) :]
        return ActionRun(action_outputs, results, dict(self.exported), list(self.path), summary,
                         masks)  # fmt: skip

    def _run_script(
        self, name: str, script: str, step_env: Mapping[str, str]
    ) -> tuple[StepResult, dict[str, str]]:
        assert "${{" not in script, f"step {name!r}: an expression inside run: (use env:)"
        work = self.temp / "_steps"
        work.mkdir(exist_ok=True)
        script_file = work / "script.sh"
        script_file.write_text(script)
        output_file, env_file, path_file = (work / n for n in ("output", "env", "path"))
        for file in (output_file, env_file, path_file):
            file.write_text("")
        env = {
            **self.env,
            **self.exported,
            **step_env,
            "GITHUB_ACTIONS": "true",
            "GITHUB_ACTION_PATH": str(ROOT),
            "GITHUB_OUTPUT": str(output_file),
            "GITHUB_ENV": str(env_file),
            "GITHUB_PATH": str(path_file),
            "GITHUB_STEP_SUMMARY": str(self.summary_file),
            "RUNNER_TEMP": str(self.temp),
        }
        env["PATH"] = ":".join([*reversed(self.path), self.env.get("PATH", "/usr/bin:/bin")])
        done = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script_file)],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        self.exported.update(parse_commands_file(env_file.read_text()))
        self.path += [line for line in path_file.read_text().splitlines() if line]
        outputs = parse_commands_file(output_file.read_text())
        return StepResult(name, done.returncode, done.stdout, done.stderr), outputs

    def _evaluate(self, text: str, context: Mapping[str, Any]) -> str:
        def one(match: re.Match[str]) -> str:
            expression = match.group(1)
            parts = expression.split(".")
            if parts[0] == "inputs" and len(parts) == 2:
                return str(context["inputs"][parts[1]])
            if parts[0] == "steps" and len(parts) == 4 and parts[2] == "outputs":
                return str(context["steps"].get(parts[1], {}).get(parts[3], ""))
            if parts[0] == "secrets" and len(parts) == 2:
                return self.secrets.get(parts[1], "")
            if expression == "github.token":
                return self.token
            if expression == "github.action_path":
                return str(ROOT)
            if expression == "runner.temp":
                return str(self.temp)
            if parts[0] == "github" and len(parts) == 2 and parts[1] in self.github:
                return self.github[parts[1]]
            raise AssertionError(f"this runner does not evaluate ${{{{ {expression} }}}}")

        return _EXPR.sub(one, text)


@dataclass
class JobRun:
    steps: list[tuple[str, str]]  # (name, "success" | "failure" | "skipped")
    log: str

    @property
    def succeeded(self) -> bool:
        return all(result != "failure" for _, result in self.steps)


def run_workflow_job(
    runner: Runner,
    workflow: Path,
    job: str,
    replace: Mapping[str, str] | None = None,
    *,
    inputs: Mapping[str, str] | None = None,
    this_action: str = "./",
) -> JobRun:
    """Run one job of a workflow: ``run:`` steps in bash, ``uses: ./`` (or ``this_action``,
    e.g. the ``org/ollama-ondemand@v1`` that ``init`` writes) as this action (with its
    ``with:`` as inputs), other ``uses:`` through the runner's stubs. ``replace`` gives a
    step (by name) another script, for what a test cannot do here (install from an index).
    ``inputs`` are the workflow's (a ``workflow_dispatch`` form). ``if:`` may be
    ``always()``, ``failure()`` or ``success()``, as in this repository."""
    data: dict[str, Any] = YAML(typ="safe").load(workflow.read_text())
    steps_outputs: dict[str, dict[str, str]] = {}
    context: dict[str, Any] = {"inputs": dict(inputs or {}), "steps": steps_outputs}
    results: list[tuple[str, str]] = []
    log: list[str] = []
    failed = False
    for step in data["jobs"][job]["steps"]:
        name = runner._evaluate(str(step.get("name", step.get("uses", ""))), context)
        condition = str(step.get("if", "success()")).strip()
        wanted = {"always()": True, "failure()": failed, "success()": not failed}[condition]
        if not wanted:
            results.append((name, "skipped"))
            continue
        outputs: dict[str, str] = {}
        if step.get("uses") in ("./", this_action):
            with_ = {k: runner._evaluate(scalar(v), context) for k, v in step["with"].items()}
            action = runner.run(with_)
            log.append(action.log)
            outputs, ok = action.outputs, action.code == 0
        elif "uses" in step:
            stub = runner.uses[str(step["uses"]).split("@")[0]]
            outputs, ok = stub({k: scalar(v) for k, v in step.get("with", {}).items()}), True
        else:
            raw_env: dict[str, object] = step.get("env", {})
            env = {k: runner._evaluate(scalar(v), context) for k, v in raw_env.items()}
            script = (replace or {}).get(name, str(step["run"]))
            result, outputs = runner._run_script(name, script, env)
            log.append(result.stdout + result.stderr)
            ok = result.code == 0
        if "id" in step:
            steps_outputs[str(step["id"])] = outputs
        results.append((name, "success" if ok else "failure"))
        failed = failed or not ok
    return JobRun(results, "".join(log))
