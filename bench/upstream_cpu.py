"""CPU per request of each upstream client: alone (sequential keep-alive requests against
the Ollama emulator in its own process, ``time.process_time`` in this one), and with
``--proxy``, the whole proxy's CPU time (from /proc) per ``/api/tags`` request at
concurrency 32 and per token of 16 unpaced streams.

    python bench/upstream_cpu.py [--requests 5000] [--rounds 4] [--proxy]

Clients alternate ABBA over the rounds, so drift in machine load hits each alike; CPU time,
unlike a rate, hardly moves with what else the machine runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.aiohttp_upstream import AiohttpUpstream
from bench.proxy import (
    MODEL,
    cpu_seconds,
    emulator,
    proxy_process,
    small_requests,
    streams,
)
from ondemand.proxy.upstream import UpstreamClient
from ondemand.proxy.upstream_http import HttpUpstream

CLIENTS: dict[str, Callable[[str], UpstreamClient]] = {
    "httptools": HttpUpstream,
    "aiohttp": AiohttpUpstream,
}
CHAT = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()
HEADERS = [(b"accept", b"*/*"), (b"user-agent", b"bench"), (b"x-request-id", b"0123456789abcdef")]


async def _one(client: UpstreamClient, path: str) -> None:
    if path == "/api/chat":  # a whole stream, as fast as the emulator writes it
        response = await client.send("POST", path, b"", HEADERS, CHAT)
    else:
        response = await client.send("GET", path, b"", HEADERS, b"")
    async for _chunk in response.chunks():
        pass
    await response.aclose()


async def _round(client: UpstreamClient, requests: int, path: str) -> float:
    """CPU microseconds per request (after a warm-up that opens the connection)."""
    for _ in range(min(50, requests)):
        await _one(client, path)
    start = time.process_time()
    for _ in range(requests):
        await _one(client, path)
    return (time.process_time() - start) / requests * 1e6


async def measure(url: str, requests: int, rounds: int, path: str) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {name: [] for name in CLIENTS}
    order = list(CLIENTS)
    for number in range(rounds):
        for name in order if number % 4 in (0, 3) else order[::-1]:
            client = CLIENTS[name](url)
            try:
                results[name].append(await _round(client, requests, path))
            finally:
                await client.aclose()
    return results


def proxy_cpu(rounds: int) -> dict[str, dict[str, list[float]]]:
    """The proxy's CPU µs per small request and per streamed token, for each client."""
    results: dict[str, dict[str, list[float]]] = {
        name: {"request": [], "token": []} for name in CLIENTS
    }
    order = list(CLIENTS)
    with emulator(0, 2000) as url:
        for number in range(rounds):
            for name in order if number % 4 in (0, 3) else order[::-1]:
                with proxy_process(url, "uvicorn", name) as (px, pid):
                    asyncio.run(small_requests(px, 32, 0.5))  # warm: connections, caches
                    before = cpu_seconds(pid)
                    done = asyncio.run(small_requests(px, 32, 4.0)).requests
                    middle = cpu_seconds(pid)
                    tokens = sum(s.tokens for s in asyncio.run(streams(px, 16)).streams)
                    after = cpu_seconds(pid)
                results[name]["request"].append((middle - before) / done * 1e6)
                results[name]["token"].append((after - middle) / tokens * 1e6)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--path", default="/api/tags", help="or /api/chat: 2,000-token streams")
    parser.add_argument("--proxy", action="store_true", help="the whole proxy's CPU instead")
    args = parser.parse_args()
    if args.proxy:
        for name, figures in proxy_cpu(args.rounds).items():
            for unit, values in figures.items():
                shown = ", ".join(f"{v:.1f}" for v in values)
                median = statistics.median(values)
                print(f"  {name:10} proxy CPU per {unit:8} median {median:6.1f} us  ({shown})")
        return
    try:
        import uvloop

        uvloop.install()  # as the proxy runs
    except ImportError:
        pass
    with emulator(0, 2000) as url:
        results = asyncio.run(measure(url, args.requests, args.rounds, args.path))
    shape = f"{args.requests} sequential keep-alive requests to {args.path}"
    print(f"{shape}, {args.rounds} rounds (ABBA)")
    for name, values in results.items():
        shown = ", ".join(f"{v:.0f}" for v in values)
        print(f"  {name:10} median {statistics.median(values):6.1f} us CPU/request  ({shown})")


if __name__ == "__main__":
    main()
