"""The lifecycle against the sandbox cloud: how soon `up` notices ready, how many provider
calls `status` makes, and `up` on an app that already runs.

    python bench/lifecycle.py            # 5 rounds per figure
    python bench/lifecycle.py --quick

- lag: the app's `/ping` is watched every 10 ms from another thread; the lag is from its
  first 200 to `ondemand up` returning (goal: at most 1 s);
- calls: requests to the OVH API per `ondemand status` (goal: at most 2);
- warm `up`: wall time of `ondemand up` when the app already runs and is ready (goal: at
  most 1.5 s), against `ondemand --version` in the same run (the process start it includes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from ondemand.sandbox.background import background_sandbox

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "ondemand"]


@contextmanager
def sandbox(state: Path) -> Iterator[dict[str, str]]:
    """`ondemand sandbox` in the background; yields the environment it printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ONDEMAND_", "OVH_"))}
    # Passed on to every app's emulated Ollama: a model takes a while to load, as on a GPU.
    env["OLLAMA_EMULATOR_LOAD_TIME"] = "0.5"
    with background_sandbox(state, env, "--transition-seconds", "0.2") as printed:
        yield printed


def cli_env(printed: dict[str, str], state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ONDEMAND_", "OVH_"))}
    return {
        **env,
        "ONDEMAND_PROVIDER": "sandbox",
        "ONDEMAND_SANDBOX_URL": printed["ONDEMAND_SANDBOX_URL"],
        "OVH_AI_TOKEN": printed["OVH_AI_TOKEN"],
        "ONDEMAND_STATE_DIR": str(state),
        "ONDEMAND_NAME": "bench",
        "ONDEMAND_MODELS": "llama3.2",
    }


def run(env: dict[str, str], *args: str) -> tuple[float, str]:
    started = time.perf_counter()
    out = subprocess.run([*CLI, *args], env=env, check=True, capture_output=True, text=True)
    return time.perf_counter() - started, out.stdout


def app_url(env: dict[str, str]) -> str | None:
    """The app's URL from the sandbox's OVH API, as soon as the app exists."""
    try:
        apps = httpx.get(
            env["ONDEMAND_SANDBOX_URL"] + "/ovh/v1/app",
            headers={"Authorization": f"Bearer {env.get('OVH_AI_TOKEN') or 'sandbox-operator'}"},
            params={"labelSelector": f"ondemand-name={env['ONDEMAND_NAME']}"}, timeout=2,
        ).json()["items"]  # fmt: skip
    except (httpx.HTTPError, KeyError, ValueError):
        return None
    urls = [a["status"].get("url") for a in apps if a.get("status", {}).get("url")]
    return urls[0] if urls else None


def app_ready(env: dict[str, str]) -> Callable[[], bool]:
    """Whether the OVH app answers /ping with 200."""

    def ready() -> bool:
        url = app_url(env)
        return url is not None and httpx.get(url + "/ping", timeout=1).status_code == 200

    return ready


def lag_once(env: dict[str, str], ready: Callable[[], bool] | None = None) -> float:
    """Seconds from the first moment ``ready()`` holds (by default: the OVH app answers
    /ping 200), watched every 10 ms from another thread, to `ondemand up` returning."""
    is_ready = ready or app_ready(env)
    first: list[float] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set() and not first:
            try:
                if is_ready():
                    first.append(time.perf_counter())
            except (httpx.HTTPError, KeyError, StopIteration, ValueError):
                pass
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    subprocess.run([*CLI, "up"], env=env, check=True, capture_output=True)
    returned = time.perf_counter()
    done.set()
    watcher.join()
    if not first:
        raise RuntimeError("the watcher never saw the deployment ready")
    return returned - first[0]


def status_calls(env: dict[str, str]) -> int:
    """Provider API requests made by one `status` (counted by the client itself)."""
    from ondemand import lifecycle
    from ondemand.config import load_config

    resolved = load_config(path=None, env=env, cwd=Path.cwd())
    provider = lifecycle.make_provider(resolved, env)
    lifecycle.status(resolved, provider)
    calls: int = provider.client.api.calls  # type: ignore[attr-defined]
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rounds = 2 if args.quick else 5
    with tempfile.TemporaryDirectory() as tmp, sandbox(Path(tmp) / "sandbox") as printed:
        env = cli_env(printed, Path(tmp))
        lags = []
        for _ in range(rounds):
            lags.append(lag_once(env))
            run(env, "down")
        run(env, "up")
        calls = [status_calls(env) for _ in range(rounds)]
        warm = [run(env, "up")[0] for _ in range(rounds)]
        version = [run(env, "--version")[0] for _ in range(rounds)]
        run(env, "delete")
    result = {
        "rounds": rounds,
        "lag_ready_to_up_returns_s": {
            "median": round(statistics.median(lags), 3),
            "max": round(max(lags), 3),
        },
        "provider_calls_per_status": max(calls),
        "warm_up_s": round(statistics.median(warm), 3),
        "cli_start_s": round(statistics.median(version), 3),
        # The baseline of the same run: how much of a warm 'up' is only starting Python.
        "warm_up_over_cli_start": round(statistics.median(warm) / statistics.median(version), 2),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
