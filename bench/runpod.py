"""RunPod's load-balancing endpoint on the sandbox: how soon `up` notices the first ready
worker, and whether requests sent while the endpoint scales up from zero all succeed.

    python bench/runpod.py            # 3 rounds
    python bench/runpod.py --quick

- lag: the endpoint's health (`/v2/<id>/health`, the platform's own gauge) is watched every
  10 ms from another thread; the lag is from its first `ready >= 1` to `ondemand up`
  returning (goal: at most 1 s). Baseline of the same run: the same lag on OVH (sandbox).
- scale-up: the endpoint is started with no worker running, then 16 chats are sent at once
  through the gateway, each retrying "no workers available" as RunPod advises (goal: zero
  failures seen by the caller). The gateway waits only 0.5 s for a worker (RunPod: 2 min),
  so cold requests do meet "no workers available", and `up` must retry it too. Reports how
  many chats needed a retry and how many failed in the end.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

# Run as a script: the repository root makes the sibling benchmark importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.lifecycle import lag_once
from ondemand.sandbox.background import background_sandbox

CLI = [sys.executable, "-m", "ondemand"]
CHATS = 16


@contextmanager
def sandbox(state: Path) -> Iterator[dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ONDEMAND_", "OVH_"))}
    # Passed on to every worker's emulated Ollama: loading takes a while, as on a GPU.
    env["OLLAMA_EMULATOR_LOAD_TIME"] = "0.5"
    # A short wait for a worker: cold requests see "no workers available" (as on RunPod
    # after two minutes), so the callers' retries are what is measured.
    options = ("--transition-seconds", "0.2", "--no-worker-wait", "0.5")
    with background_sandbox(state, env, *options) as printed:
        yield printed


def cli_env(printed: dict[str, str], provider: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ONDEMAND_", "OVH_"))}
    return {
        **env,
        **{k: v for k, v in printed.items() if k.startswith(("RUNPOD_", "ONDEMAND_SANDBOX"))},
        "ONDEMAND_PROVIDER": provider,
        "ONDEMAND_IMAGE": "registry.example.com/bench/ollama-ondemand:1",
        "ONDEMAND_NAME": f"bench-{provider}",
        "ONDEMAND_MODELS": "llama3.2",
        "ONDEMAND_TIMEOUT": "2m",
    }


def cli(env: dict[str, str], *args: str) -> str:
    return subprocess.run([*CLI, *args], env=env, check=True, capture_output=True, text=True).stdout


def endpoint(env: dict[str, str]) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {env['RUNPOD_API_KEY']}"}
    items = httpx.get(env["RUNPOD_API_URL"] + "/v2/serverless", headers=headers).json()
    found: dict[str, object] = next(
        e for e in items["endpoints"] if e["name"] == env["ONDEMAND_NAME"]
    )
    return found


def runpod_ready(env: dict[str, str]) -> Callable[[], bool]:
    def ready() -> bool:
        found = endpoint(env)
        health = httpx.get(
            f"{env['RUNPOD_ENDPOINT_BASE_URL']}/{found['id']}/health",
            headers={"Authorization": f"Bearer {env['RUNPOD_API_KEY']}"},
            timeout=2,
        ).json()
        return int(health["workers"]["ready"]) >= 1

    return ready


def chat(url: str, headers: dict[str, str]) -> tuple[bool, int]:
    """One chat, retrying "no workers available" (as RunPod advises); (ok, retries)."""
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    for attempt in range(6):
        try:
            answer = httpx.post(url + "/api/chat", headers=headers, json=body, timeout=60)
        except httpx.HTTPError:
            time.sleep(1)
            continue
        if answer.status_code == 200:
            return True, attempt
        if "no workers available" not in answer.text and answer.status_code not in (502, 503):
            return False, attempt
        time.sleep(1)
    return False, 6


def scale_up(env: dict[str, str], key: str) -> dict[str, object]:
    cli(env, "down", "--force")  # a plain down leaves the endpoint to scale to zero
    cli(env, "start", "--no-wait")  # workers allowed, none running yet
    found = endpoint(env)
    url = str(found["requestUrls"]["base"])  # type: ignore[index]
    headers = {"Authorization": f"Bearer {env['RUNPOD_API_KEY']}", "X-API-Key": key}
    began = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(CHATS) as pool:
        results = list(pool.map(lambda _: chat(url, headers), range(CHATS)))
    return {
        "chats": CHATS,
        "failed": sum(1 for ok, _ in results if not ok),
        "retried": sum(1 for _, retries in results if retries),
        "seconds": round(time.perf_counter() - began, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rounds = 2 if args.quick else 3
    with tempfile.TemporaryDirectory() as tmp, sandbox(Path(tmp) / "sandbox") as printed:
        runpod = cli_env(printed, "runpod")
        ovh = cli_env(printed, "sandbox")
        lags: dict[str, list[float]] = {"runpod": [], "ovh": []}
        for _ in range(rounds):
            lags["runpod"].append(lag_once(runpod, runpod_ready(runpod)))
            cli(runpod, "down", "--force")
            lags["ovh"].append(lag_once(ovh))
            cli(ovh, "down")
        key = json.loads(cli(runpod, "--json", "up"))["api_key"]
        scaled = [scale_up(runpod, key) for _ in range(rounds)]
        cli(runpod, "delete")
        cli(ovh, "delete")
    result = {
        "rounds": rounds,
        "lag_first_ready_to_up_returns_s": {
            name: {"median": round(statistics.median(v), 3), "max": round(max(v), 3)}
            for name, v in lags.items()
        },
        "scale_up_from_zero": scaled,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
