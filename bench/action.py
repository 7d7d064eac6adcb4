"""What the action costs a workflow on every run: installing its venv from nothing, and an
`ondemand status` while the deployment is up.

    python bench/action.py            # 3 rounds
    python bench/action.py --quick    # 1 round

- install: action/install.sh exactly as the action runs it, in a fresh RUNNER_TEMP with
  empty uv and pip caches (a new runner has neither), once with uv on PATH and once
  without (pip). Packages come from a local wheelhouse (--no-index), so the figure is the
  install, not this machine's network; the wheelhouse is built once with `pip wheel` and
  kept in .venv/bench-wheelhouse. Baseline of the same run: `python -m venv` alone, which
  every pip install pays first.
- reuse: the same install.sh run again in the same RUNNER_TEMP, as a later use of the
  action in the job runs it: it checks every file of the venv (action/verify_venv.py) and
  reuses it. Baseline: the cold install.
- run step: `ondemand status` (local provider, nothing deployed) as the run step starts
  it after the check, `python -I -B` without bytecode; baseline: the `ondemand` script
  alone, with the bytecode it wrote on a previous run.
- status: `ondemand status` wall time against a sandbox deployment that is up and ready
  (goal: at most 1 s). Baseline of the same run: `ondemand --version`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ondemand.sandbox.background import background_sandbox

ROOT = Path(__file__).resolve().parent.parent
WHEELHOUSE = ROOT / ".venv" / "bench-wheelhouse"
# The action's venv is made from the runner's Python, not from this venv.
BASE_PYTHON = getattr(sys, "_base_executable", sys.executable)


def wheelhouse() -> Path:
    """Every wheel install.sh needs, this package's build backend included."""
    marker = WHEELHOUSE / ".complete"
    if not marker.exists():
        WHEELHOUSE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(WHEELHOUSE),
             f"{ROOT}[server]", "hatchling>=1.25", "pip", "setuptools"],
            check=True,
        )  # fmt: skip
        for own in WHEELHOUSE.glob("ollama_ondemand-*.whl"):
            own.unlink()  # the action builds the package from its checkout
        marker.touch()
    return WHEELHOUSE


def simple_index(wheels: Path) -> str:
    """The wheelhouse as a PEP 503 index on disk (``file://``), which uv and pip both read
    as their only index."""
    import html
    import re

    root = wheels / "simple"
    projects: dict[str, list[str]] = {}
    for wheel in sorted(wheels.glob("*.whl")):
        name = re.sub(r"[-_.]+", "-", wheel.name.split("-", 1)[0]).lower()
        projects.setdefault(name, []).append(wheel.name)
    for name, files in projects.items():
        page = root / name
        page.mkdir(parents=True, exist_ok=True)
        links = "".join(
            f'<a href="../../{html.escape(file)}">{html.escape(file)}</a><br>' for file in files
        )
        (page / "index.html").write_text(f"<!DOCTYPE html><html><body>{links}</body></html>")
    return root.as_uri() + "/"


def install_once(tool: str, work: Path) -> tuple[float, float]:
    """Seconds of a cold install, then of a reuse (the check) in the same RUNNER_TEMP."""
    temp = work / f"runner-temp-{tool}"
    caches = work / f"caches-{tool}"
    bin_dir = work / f"path-{tool}"
    for directory in (temp, caches, bin_dir):
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
    if tool == "uv":
        uv = shutil.which("uv", path=str(Path(sys.executable).parent))
        assert uv, "uv is not installed in this venv (pip install uv)"
        (bin_dir / "uv").symlink_to(uv)
    index = simple_index(wheelhouse())
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(work),
        "RUNNER_TEMP": str(temp),
        "GITHUB_ACTION_PATH": str(ROOT),
        "GITHUB_PATH": str(temp / "path"),
        "ONDEMAND_ACTION_PYTHON": BASE_PYTHON,
        # The same local wheels for both tools; no machine pip config, no cache.
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_INDEX_URL": index,
        "PIP_CACHE_DIR": str(caches / "pip"),
        "UV_DEFAULT_INDEX": index,
        "UV_CACHE_DIR": str(caches / "uv"),
        "UV_NO_CONFIG": "1",
    }
    seconds = []
    for expected in (f"installing with {tool}", "every file checked"):
        started = time.perf_counter()
        done = subprocess.run(
            [str(ROOT / "action" / "install.sh")], env=env, capture_output=True, text=True
        )
        seconds.append(time.perf_counter() - started)
        if done.returncode != 0 or expected not in done.stdout:
            raise SystemExit(f"install.sh with {tool} failed:\n{done.stdout}\n{done.stderr}")
    ondemand = temp / "ollama-ondemand" / "bin" / "ondemand"
    check = subprocess.run([str(ondemand), "--version"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    return seconds[0], seconds[1]


def startup_times(work: Path, rounds: int) -> tuple[list[float], list[float]]:
    """`ondemand status` (local provider, nothing deployed) in the uv venv as the run step
    starts it after the check (`python -I -B`, no bytecode: uv installs none); and the
    `ondemand` script alone, on the bytecode its previous run wrote."""
    venv = work / "runner-temp-uv" / "ollama-ondemand" / "venv"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "ONDEMAND_STATE_DIR": str(work / "s")}
    script = str(venv / "bin" / "ondemand")
    check = [BASE_PYTHON, "-I", "-S", "-B", str(ROOT / "action" / "verify_venv.py"), "check"]
    action, plain = [], []
    for _ in range(rounds * 3):
        subprocess.run([*check, str(venv)], check=True, capture_output=True)
        started = time.perf_counter()
        subprocess.run(
            [str(venv / "bin" / "python"), "-I", "-B", script, "status"],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
        action.append(time.perf_counter() - started)
        subprocess.run([script, "status"], env=env, check=True, capture_output=True)
        started = time.perf_counter()
        subprocess.run([script, "status"], env=env, check=True, capture_output=True)
        plain.append(time.perf_counter() - started)
    return action, plain


def bare_venv(work: Path) -> float:
    target = work / "bare-venv"
    shutil.rmtree(target, ignore_errors=True)
    started = time.perf_counter()
    subprocess.run([BASE_PYTHON, "-m", "venv", str(target)], check=True)
    return time.perf_counter() - started


def timed(env: dict[str, str], *args: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "ondemand", *args], env=env, capture_output=True, check=True
    )
    return time.perf_counter() - started


def status_times(rounds: int) -> tuple[list[float], list[float]]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ONDEMAND_", "OVH_"))}
    with (
        tempfile.TemporaryDirectory() as tmp,
        background_sandbox(Path(tmp) / "sandbox", clean) as printed,
    ):
        env = {
            **clean,
            "ONDEMAND_PROVIDER": "sandbox",
            "ONDEMAND_SANDBOX_URL": printed["ONDEMAND_SANDBOX_URL"],
            "ONDEMAND_NAME": "bench-status",
            "ONDEMAND_MODELS": "llama3.2",
        }
        subprocess.run([sys.executable, "-m", "ondemand", "up"], env=env, capture_output=True,
                       check=True)  # fmt: skip
        status, version = [], []
        for _ in range(rounds * 5):
            version.append(timed(env, "--version"))
            status.append(timed(env, "status"))
        subprocess.run([sys.executable, "-m", "ondemand", "delete"], env=env,
                       capture_output=True, check=True)  # fmt: skip
    return status, version


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    rounds = 1 if parser.parse_args().quick else 3
    wheelhouse()
    installs: dict[str, list[float]] = {"uv": [], "pip": [], "venv_only": []}
    reuses: dict[str, list[float]] = {"uv": [], "pip": []}
    with tempfile.TemporaryDirectory(prefix="ondemand-action-bench-") as tmp:
        work = Path(tmp)
        for _ in range(rounds):
            installs["venv_only"].append(bare_venv(work))
            for tool in ("uv", "pip"):
                cold, reuse = install_once(tool, work)
                installs[tool].append(cold)
                reuses[tool].append(reuse)
        isolated, plain = startup_times(work, rounds)
    status, version = status_times(rounds)
    median = statistics.median
    report = {
        "rounds": rounds,
        "cold_install_s": {
            k: {"median": round(median(v), 2), "max": round(max(v), 2)} for k, v in installs.items()
        },
        "pip_over_uv": round(median(installs["pip"]) / median(installs["uv"]), 1),
        "reuse_check_s": {
            k: {"median": round(median(v), 2), "max": round(max(v), 2)} for k, v in reuses.items()
        },
        "status_local_s": {
            "run_step_median": round(median(isolated), 3),
            "plain_script_median": round(median(plain), 3),
        },
        "status_s": {"median": round(median(status), 3), "max": round(max(status), 3)},
        "version_s": {"median": round(median(version), 3)},
        "status_over_version": round(median(status) / median(version), 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
