"""Cold start of `ondemand serve`, /ping under load, and `up` with the local provider.

    python bench/coldstart.py            # figures for docs/benchmarks.md
    python bench/coldstart.py --quick

Each figure is a ratio or a difference against a baseline measured in the same run:
- cold start: 3 models whose pulls take 2 s and loads 1 s each, against 1 such model
  (goal: at most 1.3 x, i.e. the pipelines run in parallel, not one after the other);
- /ping latency p99 under 64 concurrent streams, against /ping on an idle server (goal:
  at most 5 ms);
- `ondemand up --provider local` to ready, against starting `ondemand serve` directly;
- `ondemand up` on the emulated OVH with the model cache bucket: the first cold start (empty
  bucket: the model is pulled, then pushed to the bucket by a data sync) against the second
  (the model comes from the bucket: no pull).

    python bench/coldstart.py --only cache   # just the last one
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import httpx

from ondemand.processes import free_port
from ondemand.sandbox.ollama import write_standin

KEY = "odk_bench_key_0123456789abcdef"
PULL, LOAD = 2.0, 1.0


def _env(tmp: Path, models: str, **extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ONDEMAND_", "OLLAMA_"))}
    return {
        **clean,
        "OLLAMA_BIN": str(write_standin(tmp / "bin")),
        "OLLAMA_MODELS": str(tmp / "models"),
        "OLLAMA_EMULATOR_MODELS": "",  # an empty cache: every model is pulled
        "OLLAMA_EMULATOR_PULL_SECONDS": str(PULL),
        "OLLAMA_EMULATOR_LOAD_TIME": str(LOAD),
        "OLLAMA_PRELOAD_MODELS": models,
        "AUTHORIZATION_APIKEY": KEY,
        "HOST": "127.0.0.1",
        **extra,
    }


@contextmanager
def serve(env: dict[str, str]) -> Iterator[tuple[str, subprocess.Popen[bytes], float]]:
    """Start `ondemand serve`; yield its URL, process and the start time."""
    port = free_port()
    env = {**env, "PORT": str(port), "ONDEMAND_OLLAMA_HOST": f"127.0.0.1:{free_port()}"}
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ondemand", "serve"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}", proc, started
    finally:
        proc.terminate()
        proc.wait(30)


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> float:
    deadline = time.perf_counter() + timeout
    with httpx.Client(timeout=1) as client:
        while time.perf_counter() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("serve exited")
            try:
                if client.get(url + "/ping").status_code == 200:
                    return time.perf_counter()
            except httpx.HTTPError:
                pass
            time.sleep(0.01)
    raise RuntimeError("serve never became ready")


def cold_start(models: str) -> float:
    with tempfile.TemporaryDirectory() as tmp, serve(_env(Path(tmp), models)) as (url, proc, t0):
        return wait_ready(url, proc) - t0


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def stream_load(url: str, seconds: float, streams: int) -> None:
    """``streams`` chats streaming back to back for ``seconds``."""
    deadline = time.perf_counter() + seconds
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:

        async def stream() -> None:
            while time.perf_counter() < deadline:
                async with session.post(url + "/api/chat", json=body) as response:
                    async for _ in response.content:
                        pass

        await asyncio.gather(*(stream() for _ in range(streams)))


def ping_latencies(url: str, seconds: float) -> list[float]:
    """/ping latencies (s) sampled every 10 ms from this process, as a platform probe does.

    A bare keep-alive http.client connection: a heavier client would add its own
    milliseconds to every sample.
    """
    import http.client

    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    try:
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            connection.request("GET", "/ping")
            response = connection.getresponse()
            response.read()
            latencies.append(time.perf_counter() - began)
            assert response.status == 200
            time.sleep(0.01)
    finally:
        connection.close()
    return latencies


def ping_under_load(seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        env = _env(Path(tmp), "llama3.2", OLLAMA_EMULATOR_MODELS="llama3.2",
                   OLLAMA_EMULATOR_LOAD_TIME="0", OLLAMA_EMULATOR_TOKENS_PER_SECOND="100",
                   OLLAMA_EMULATOR_RESPONSE_TOKENS="200")  # fmt: skip
        with serve(env) as (url, proc, _):
            wait_ready(url, proc)
            idle = ping_latencies(url, seconds)
            # The streams come from another process, so the probe's own timing is not held
            # up by the load generator's event loop.
            load = subprocess.Popen([sys.executable, __file__, "--load", url, str(seconds + 2)])
            time.sleep(1.0)  # let all 64 streams get going
            loaded = ping_latencies(url, seconds)
            load.wait(seconds + 30)
    return {
        "idle_p50_ms": _pct(idle, 50) * 1e3,
        "idle_p99_ms": _pct(idle, 99) * 1e3,
        "loaded_p50_ms": _pct(loaded, 50) * 1e3,
        "loaded_p99_ms": _pct(loaded, 99) * 1e3,
        "added_p99_ms": (_pct(loaded, 99) - _pct(idle, 99)) * 1e3,
    }


def up_local() -> tuple[float, float]:
    """Wall time of `ondemand up` (local) to ready, and of `ondemand serve` alone, same models."""
    with tempfile.TemporaryDirectory() as tmp:
        env = _env(Path(tmp), "llama3.2", OLLAMA_EMULATOR_MODELS="llama3.2",
                   OLLAMA_EMULATOR_LOAD_TIME="0.2", ONDEMAND_STATE_DIR=tmp,
                   ONDEMAND_MODELS="llama3.2")  # fmt: skip
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ondemand", "up"], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        up_seconds = time.perf_counter() - started
        subprocess.run([sys.executable, "-m", "ondemand", "down"], env=env, check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        with serve(env) as (url, proc, t0):
            direct = wait_ready(url, proc) - t0
    return up_seconds, direct


def ovh_cache() -> tuple[float, float]:
    """`ondemand up` to ready on the emulated OVH, with an empty cache bucket, then (after a
    `down` that lets the push finish) again with the bucket filled."""
    from ondemand.sandbox.server import sandbox_server

    app_env = {
        "OLLAMA_EMULATOR_MODELS": "",
        "OLLAMA_EMULATOR_PULL_SECONDS": str(PULL),
        "OLLAMA_EMULATOR_LOAD_TIME": str(LOAD),
    }
    with (
        tempfile.TemporaryDirectory() as tmp,
        sandbox_server(
            Path(tmp) / "sandbox", transition_seconds=0.05, probe_period=0.2, app_env=app_env
        ) as running,
    ):
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("ONDEMAND_", "OLLAMA_"))}
        env = {
            **clean,
            "ONDEMAND_PROVIDER": "ovh",
            "OVH_AI_API_URL": running.ovh_url,
            "OVH_AI_TOKEN": running.sandbox.operator_token,
            "ONDEMAND_IMAGE": "registry.example.com/ollama-ondemand:bench",
            "ONDEMAND_MODELS": "llama3.2",
            "OLLAMA_VOLUME": "ollama-cache@GRA:/workspace/ollama:rw",
            "ONDEMAND_STATE_DIR": tmp,
        }

        def ondemand(command: str) -> None:
            argv = [sys.executable, "-m", "ondemand", command]
            out = subprocess.DEVNULL
            subprocess.run(argv, env=env, check=True, cwd=tmp, stdout=out, stderr=out)

        times = []
        for _ in range(2):
            started = time.perf_counter()
            ondemand("up")
            times.append(time.perf_counter() - started)
            ondemand("down")  # lets the push to the bucket finish
    return times[0], times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--only", choices=["cache"], help="run one figure only")
    parser.add_argument("--load", nargs=2, metavar=("URL", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        asyncio.run(stream_load(args.load[0], float(args.load[1]), 64))
        return
    rounds = 2 if args.quick else 3
    results: dict[str, object] = {}
    if args.only == "cache":
        report_cache(results, rounds)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
        return

    one: list[float] = []
    three: list[float] = []
    for index in range(rounds):  # alternate, so drift hits both
        pair = [("one", one), ("three", three)]
        for label, sink in pair if index % 2 == 0 else reversed(pair):
            models = "llama3.2" if label == "one" else "llama3.2,qwen3:0.6b,mistral:7b"
            sink.append(cold_start(models))
    results["cold_start"] = out = {
        "one_model_s": statistics.median(one),
        "three_models_s": statistics.median(three),
        "ratio": statistics.median(three) / statistics.median(one),
        "sum_if_serial_s": 3 * PULL + 3 * LOAD,
    }
    print(f"cold start, pull {PULL:g}s + load {LOAD:g}s per model (median of {rounds}):")
    print(f"  1 model  {out['one_model_s']:.2f} s")
    print(
        f"  3 models {out['three_models_s']:.2f} s  ratio {out['ratio']:.2f} (goal <= 1.3; "
        f"one after the other would take {out['sum_if_serial_s']:g} s)"
    )

    results["ping"] = ping = ping_under_load(3.0 if args.quick else 6.0)
    print("/ping latency, idle vs 64 concurrent streams at 100 tokens/s:")
    print(f"  idle   p50 {ping['idle_p50_ms']:.2f} ms  p99 {ping['idle_p99_ms']:.2f} ms")
    print(f"  loaded p50 {ping['loaded_p50_ms']:.2f} ms  p99 {ping['loaded_p99_ms']:.2f} ms"
          "  (goal p99 <= 5 ms)")  # fmt: skip

    ups = [up_local() for _ in range(rounds)]
    up_s = statistics.median(u for u, _ in ups)
    direct_s = statistics.median(d for _, d in ups)
    results["up_local"] = {"up_s": up_s, "serve_direct_s": direct_s, "ratio": up_s / direct_s}
    print(f"ondemand up --provider local to ready: {up_s:.2f} s; `ondemand serve` alone "
          f"{direct_s:.2f} s (ratio {up_s / direct_s:.2f})")  # fmt: skip
    report_cache(results, rounds)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def report_cache(results: dict[str, object], rounds: int) -> None:
    runs = [ovh_cache() for _ in range(rounds)]
    cold = statistics.median(c for c, _ in runs)
    cached = statistics.median(w for _, w in runs)
    results["ovh_cache"] = {"empty_bucket_s": cold, "filled_bucket_s": cached,
                            "ratio": cached / cold}  # fmt: skip
    print(f"ondemand up on the emulated OVH, pull {PULL:g}s + load {LOAD:g}s (median of "
          f"{rounds}): empty cache bucket {cold:.2f} s; bucket filled by the previous run's "
          f"push {cached:.2f} s (ratio {cached / cold:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
