"""Proxy overhead, measured against going straight to the same emulator in the same run.

    python bench/proxy.py                 # the shipped stack; figures for docs/benchmarks.md
    python bench/proxy.py --quick         # shorter rounds
    python bench/proxy.py --compare       # ASGI server x upstream client matrix (needs granian)
    python bench/proxy.py --only burst    # one scenario (see --help); --only may repeat

Every figure is a ratio or a difference against the direct baseline taken in the same run,
with direct and proxied rounds alternating (ABBA), because this machine is shared and noisy.
The emulator, the proxy and this load generator are separate processes on 127.0.0.1. The
burst and small-request scenarios also run through the proxy on two processes
(ONDEMAND_PROXY_WORKERS=2) and two more baselines: the floor (the same server, front door
and upstream client with no app: bench/forward_server.py), and nginx where it is
installed: what forwarding alone costs in Python, and at all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.nginx import nginx
from bench.nginx import version as nginx_version
from ondemand.processes import free_port, running

ROOT = Path(__file__).resolve().parent.parent
KEY = "odk_bench_key_0123456789abcdef"
MODEL = "llama3.2:1b"
SCENARIOS = {"realistic", "burst", "saturation", "cancel", "flood"}
CLIENTS = ("httptools", "aiohttp", "httpx")  # bench/proxy_server.py --client; shipped first
# Oversized-header senders and slow-header connections in the flood scenario.
FLOOD = (16, 2000)


@contextlib.contextmanager
def emulator(tokens_per_second: float, response_tokens: int) -> Iterator[str]:
    port = free_port()
    env = {
        "OLLAMA_HOST": f"127.0.0.1:{port}",
        "OLLAMA_EMULATOR_MODELS": MODEL,
        "OLLAMA_EMULATOR_TOKENS_PER_SECOND": str(tokens_per_second),
        "OLLAMA_EMULATOR_RESPONSE_TOKENS": str(response_tokens),
        "OLLAMA_EMULATOR_TTFT": "0",
        "OLLAMA_EMULATOR_LOAD_TIME": "0",
        "OLLAMA_KEEP_ALIVE": "-1",
    }
    url = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "ondemand.sandbox.ollama", "serve"]
    with running(args, env=env, ready_url=url + "/", cwd=ROOT):
        yield url


@contextlib.contextmanager
def policy_env() -> Iterator[dict[str, str]]:
    """Everything on: a keys file with an allow-list and limits, a keep-alive cap, and a
    live webhook receiving every usage record."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp) / "keys.yml"
        entry = {"name": "bench", "key": KEY, "models": [MODEL], "max_concurrency": 10_000,
                 "rpm": 10_000_000}  # fmt: skip
        keys.write_text(json.dumps([entry]))
        sink_port = free_port()
        sink = f"http://127.0.0.1:{sink_port}"
        args = [sys.executable, str(ROOT / "bench" / "sink.py"), str(sink_port)]
        with running(args, ready_url=sink + "/count", cwd=ROOT):
            yield {
                "ONDEMAND_KEYS_FILE": str(keys),
                "ONDEMAND_MAX_KEEP_ALIVE": "30m",
                "USER_MODEL_METRICS_WEBHOOK_URL": sink,
                "ONDEMAND_WEBHOOK_INTERVAL": "1",
            }


@contextlib.contextmanager
def proxy(
    upstream: str, server: str = "uvicorn", client: str = "httptools", policy: bool = True
) -> Iterator[str]:
    with proxy_process(upstream, server, client, policy) as (url, _):
        yield url


@contextlib.contextmanager
def proxy_process(
    upstream: str,
    server: str = "uvicorn",
    client: str = "httptools",
    policy: bool = True,
    workers: int = 1,
) -> Iterator[tuple[str, int]]:
    """The proxy's URL and (main) process id (to read its memory). ``workers``: processes
    on the port (ONDEMAND_PROXY_WORKERS); the call returns once all of them serve."""
    port = free_port()
    args = [sys.executable, str(ROOT / "bench" / "proxy_server.py"), "--server", server,
            "--client", client, "--upstream", upstream, "--port", str(port)]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with contextlib.ExitStack() as stack:
        env = stack.enter_context(policy_env()) if policy else {"AUTHORIZATION_APIKEY": KEY}
        env = {**env, "ONDEMAND_PROXY_WORKERS": str(workers)}
        proc = stack.enter_context(running(args, env=env, ready_url=url + "/ping", cwd=ROOT))
        deadline = time.monotonic() + 30
        while len(_children(proc.pid)) < workers - 1:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the proxy's {workers - 1} workers did not start")
            time.sleep(0.05)
        time.sleep(0.5 if workers > 1 else 0)  # started is not yet serving: let them import
        yield url, proc.pid


@contextlib.contextmanager
def floor_process(upstream: str) -> Iterator[tuple[str, int]]:
    """The forward-only floor's URL and process id (bench/forward_server.py)."""
    port = free_port()
    args = [sys.executable, str(ROOT / "bench" / "forward_server.py"), "--upstream", upstream,
            "--port", str(port)]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with running(args, ready_url=url + "/api/tags", cwd=ROOT) as proc:
        yield url, proc.pid


class CpuPerRequest:
    """CPU time the processes behind some targets spend per request they serve, over the
    rounds run through ``wrap`` (scheduler nanoseconds, not clock ticks: a burst lasts
    less than a tick's worth of some figures)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.spent: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()

    def wrap(self, run: Callable[[str], Awaitable[Round]]) -> Callable[[str], Awaitable[Round]]:
        async def measured(url: str) -> Round:
            pid = self.pids.get(url)
            before = cpu_nanoseconds(pid) if pid else 0
            result = await run(url)
            if pid:
                self.spent[url] += cpu_nanoseconds(pid) - before
                # A burst's round also sends one request first, to open a connection.
                self.requests[url] += result.requests or len(result.streams) + 1
            return result

        return measured

    def microseconds(self, url: str) -> float:
        return self.spent[url] / max(self.requests[url], 1) / 1e3


def cpu_nanoseconds(pid: int) -> int:
    """CPU time of all a process's threads so far, and its children's (the proxy's
    workers), from the scheduler (Linux)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
    return total + sum(cpu_nanoseconds(child) for child in _children(pid))


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


# -- load -------------------------------------------------------------------------------


@dataclass
class StreamResult:
    ttft: float
    gaps: list[float]
    tokens: int


@dataclass
class Round:
    wall: float
    streams: list[StreamResult] = field(default_factory=list)
    requests: int = 0


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def _one_stream(session: aiohttp.ClientSession, url: str) -> StreamResult:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    started = time.perf_counter()
    arrivals: list[float] = []
    async with session.post(url + "/api/chat", json=body) as response:
        assert response.status == 200, response.status
        async for line in response.content:
            if line.strip():
                arrivals.append(time.perf_counter())
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    return StreamResult(arrivals[0] - started, gaps, len(arrivals))


async def streams(url: str, concurrency: int) -> Round:
    headers = {"Authorization": f"Bearer {KEY}"}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        await _one_stream(session, url)  # load the model and open a connection
        started = time.perf_counter()
        results = await asyncio.gather(*(_one_stream(session, url) for _ in range(concurrency)))
        return Round(time.perf_counter() - started, list(results))


async def steady_streams(url: str, workers: int, seconds: float, stream_seconds: float) -> Round:
    """``workers`` clients each streaming back to back, their starts spread over one stream's
    length: the steady state of 64 concurrent streams, not one burst of 64 arrivals."""
    import random

    headers = {"Authorization": f"Bearer {KEY}"}
    connector = aiohttp.TCPConnector(limit=0)
    rng = random.Random(7)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        await _one_stream(session, url)
        started = time.perf_counter()
        deadline = started + seconds
        results: list[StreamResult] = []

        async def worker(offset: float) -> None:
            await asyncio.sleep(offset)
            while time.perf_counter() < deadline:
                results.append(await _one_stream(session, url))

        offsets = [rng.uniform(0, stream_seconds) for _ in range(workers)]
        await asyncio.gather(*(worker(o) for o in offsets))
        return Round(time.perf_counter() - started, results)


async def small_requests(url: str, concurrency: int, seconds: float) -> Round:
    headers = {"Authorization": f"Bearer {KEY}"}
    connector = aiohttp.TCPConnector(limit=0)
    count = 0
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal count
            while time.perf_counter() < deadline:
                async with session.get(url + "/api/tags") as response:
                    await response.read()
                    assert response.status == 200
                count += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return Round(time.perf_counter() - started, requests=count)


async def cancel_latency(url: str, emulator_url: str, trials: int) -> list[float]:
    """Seconds from the client closing a stream to the emulator stopping the generation."""
    headers = {"Authorization": f"Bearer {KEY}"}
    latencies: list[float] = []
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with aiohttp.ClientSession(headers=headers) as session:
        for _ in range(trials):
            before = len(await _cancel_events(session, emulator_url))
            response = await session.post(url + "/api/chat", json=body)
            for _ in range(3):
                await response.content.readline()
            response.close()  # drops the connection, as a client that gives up does
            closed_at = time.time()
            deadline = time.monotonic() + 5
            events: list[float] = []
            while time.monotonic() < deadline:
                events = await _cancel_events(session, emulator_url)
                if len(events) > before:
                    break
                await asyncio.sleep(0.002)
            if len(events) <= before:
                raise RuntimeError("the emulator never saw the cancellation")
            latencies.append(events[-1] - closed_at)
    return latencies


async def _cancel_events(session: aiohttp.ClientSession, emulator_url: str) -> list[float]:
    async with session.get(emulator_url + "/_emulator/stats") as response:
        stats = await response.json()
    return [float(e["time"]) for e in stats["events"] if e["type"] == "cancel"]


@dataclass
class Side:
    """One side of a flood round: streams and probes against one target."""

    load: Round
    pings: list[float]
    cpu: float = 0.0  # the proxy's CPU seconds per second (proxied side only)


@dataclass
class FloodRound:
    proxied: Side
    direct: Side
    rss: list[int]
    flood: dict[str, float]


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _sample_pings(url: str, stop: asyncio.Event, into: list[float]) -> None:
    """A GET every 10 ms on one keep-alive connection, as a platform's probe."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        while not stop.is_set():
            started = time.perf_counter()
            async with session.get(url) as response:
                await response.read()
                assert response.status == 200, response.status
            into.append(time.perf_counter() - started)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.01)


async def _sample_rss(pid: int, stop: asyncio.Event, into: list[int]) -> None:
    while not stop.is_set():
        into.append(rss_bytes(pid))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)


async def _side(url: str, probe: str, pid: int | None, seconds: float, length: float) -> Side:
    stop = asyncio.Event()
    pings: list[float] = []
    probing = asyncio.ensure_future(_sample_pings(probe, stop, pings))
    cpu_before = cpu_seconds(pid) if pid else 0.0
    load = await steady_streams(url, 64, seconds, length)
    cpu = (cpu_seconds(pid) - cpu_before) / load.wall if pid else 0.0
    stop.set()
    await probing
    return Side(load, pings, cpu)


async def under_flood(
    proxied: str,
    direct: str,
    pid: int,
    seconds: float,
    length: float,
    flood: tuple[int, int] | None,
    direct_first: bool,
) -> FloodRound:
    """64 steady streams and a probe through the proxy, then straight at the emulator (or
    the other way round); with ``flood`` (oversized, slow), the hostile clients of
    bench/flood.py hit the proxy from their own process all the while. The direct side is
    the control: what the flood costs clients through the machine alone (two shared
    cores)."""
    hostile = None
    if flood is not None:
        port = proxied.rsplit(":", 1)[1]
        args = [str(ROOT / "bench" / "flood.py"), port, str(2 * seconds + 6),
                "--oversized", str(flood[0]), "--slow", str(flood[1])]  # fmt: skip
        hostile = await asyncio.create_subprocess_exec(
            sys.executable, *args, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        )  # fmt: skip
        await asyncio.sleep(1.5)  # the slow connections open over the first second
    stop = asyncio.Event()
    rss: list[int] = []
    sampling = asyncio.ensure_future(_sample_rss(pid, stop, rss))
    sides: dict[str, Side] = {}
    for name in ("direct", "proxied") if direct_first else ("proxied", "direct"):
        if name == "proxied":
            sides[name] = await _side(proxied, proxied + "/ping", pid, seconds, length)
        else:
            sides[name] = await _side(direct, direct + "/", None, seconds, length)
    stop.set()
    await sampling
    seen: dict[str, float] = {}
    if hostile is not None:
        out, err = await hostile.communicate()
        if hostile.returncode != 0:
            raise RuntimeError(f"the flood failed: {err.decode()[-2000:]}")
        seen = json.loads(out)
    return FloodRound(sides["proxied"], sides["direct"], rss, seen)


def report_flood(
    title: str, base: list[FloodRound], flooded: list[FloodRound], before: int, after: int
) -> dict[str, float]:
    def ttft(rounds: list[FloodRound], side: str, q: float) -> float:
        return _pct(_all([getattr(r, side).load for r in rounds], lambda s: [s.ttft]), q) * 1e3

    def ping(rounds: list[FloodRound], side: str, q: float) -> float:
        return _pct([p for r in rounds for p in getattr(r, side).pings], q) * 1e3

    def added(measure: Callable[[list[FloodRound], str, float], float], side: str,
              q: float) -> float:  # fmt: skip
        return measure(flooded, side, q) - measure(base, side, q)

    wall = sum(r.proxied.load.wall + r.direct.load.wall for r in flooded)
    seen: Counter[str] = Counter()
    for r in flooded:
        seen.update(r.flood)
    mib = 1 / 2**20
    out = {
        "throughput_ratio": _tokens_per_second([r.proxied.load for r in flooded])
        / _tokens_per_second([r.proxied.load for r in base]),
        "ttft_p50_quiet_ms": ttft(base, "proxied", 50),
        "ttft_p99_quiet_ms": ttft(base, "proxied", 99),
        "ttft_p50_added_ms": added(ttft, "proxied", 50),
        "ttft_p99_added_ms": added(ttft, "proxied", 99),
        "direct_ttft_p50_added_ms": added(ttft, "direct", 50),
        "direct_ttft_p99_added_ms": added(ttft, "direct", 99),
        "ping_p50_quiet_ms": ping(base, "proxied", 50),
        "ping_p99_quiet_ms": ping(base, "proxied", 99),
        "ping_p99_flood_ms": ping(flooded, "proxied", 99),
        "ping_p99_added_ms": added(ping, "proxied", 99),
        "direct_probe_p99_added_ms": added(ping, "direct", 99),
        "proxy_cpu_quiet": statistics.mean(r.proxied.cpu for r in base),
        "proxy_cpu_flood": statistics.mean(r.proxied.cpu for r in flooded),
        "flood_process_cpu": seen["cpu_seconds"] / wall,
        "rss_before_mib": before * mib,
        "rss_flood_peak_mib": max(v for r in flooded for v in r.rss) * mib,
        "rss_after_mib": after * mib,
        "oversized_refused_per_s": (seen["431"] + seen["reset_while_sending"]) / wall,
        "oversized_mib_sent_per_s": seen["bytes_sent"] * mib / wall,
        "slow_opened_per_s": seen["slow_opened"] / wall,
        "flood_connect_failures": seen["connect_failed"] + seen["slow_connect_failed"],
    }
    print(f"\n{title}")
    for key, value in out.items():
        print(f"  {key:26} {value:10.3f}")
    print(f"  flood outcomes: {dict(seen)}")
    return out


def help_wall_time(runs: int) -> tuple[float, float]:
    """Median wall seconds of `ondemand --help` and of a bare interpreter start."""
    exe = str(Path(sys.executable).parent / "ondemand")

    def median(cmd: list[str]) -> float:
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    return median([exe, "--help"]), median([sys.executable, "-c", "pass"])


# -- scenarios ----------------------------------------------------------------------------


async def alternate(
    direct: str, proxied: str, rounds: int, run: Callable[[str], Awaitable[Round]]
) -> tuple[list[Round], list[Round]]:
    """ABBA order so drift in machine load hits both sides alike."""
    d, p = await alternate_many([direct, proxied], rounds, run)
    return d, p


async def alternate_many(
    targets: list[str], rounds: int, run: Callable[[str], Awaitable[Round]]
) -> list[list[Round]]:
    """Each target once per round, in order and then in reverse (ABBA for two, ABCCBA for
    three), so drift in machine load hits every side alike."""
    out: list[list[Round]] = [[] for _ in targets]
    for index in range(rounds):
        order = list(enumerate(targets))
        for side, url in order if index % 2 == 0 else order[::-1]:
            out[side].append(await run(url))
    return out


def _tokens_per_second(rounds: list[Round]) -> float:
    return sum(sum(s.tokens for s in r.streams) for r in rounds) / sum(r.wall for r in rounds)


def _all(rounds: list[Round], pick: Callable[[StreamResult], list[float]]) -> list[float]:
    return [value for r in rounds for s in r.streams for value in pick(s)]


def report_streams(
    title: str, d: list[Round], p: list[Round], cpu_us: float | None = None
) -> dict[str, float]:
    ttft_d, ttft_p = _all(d, lambda s: [s.ttft]), _all(p, lambda s: [s.ttft])
    gaps_d, gaps_p = _all(d, lambda s: s.gaps), _all(p, lambda s: s.gaps)
    out = {
        "throughput_ratio": _tokens_per_second(p) / _tokens_per_second(d),
        "direct_tokens_per_s": _tokens_per_second(d),
        "proxied_tokens_per_s": _tokens_per_second(p),
        "ttft_p50_direct_ms": _pct(ttft_d, 50) * 1e3,
        "ttft_p50_added_ms": (_pct(ttft_p, 50) - _pct(ttft_d, 50)) * 1e3,
        "gap_p50_added_ms": (_pct(gaps_p, 50) - _pct(gaps_d, 50)) * 1e3,
        "gap_p99_direct_ms": _pct(gaps_d, 99) * 1e3,
        "gap_p99_added_ms": (_pct(gaps_p, 99) - _pct(gaps_d, 99)) * 1e3,
    }
    if cpu_us is not None:
        out["cpu_us_per_request"] = cpu_us
    print(f"\n{title}")
    for key, value in out.items():
        print(f"  {key:24} {value:10.3f}")
    return out


def report_requests(
    title: str, d: list[Round], p: list[Round], cpu_us: float | None = None
) -> dict[str, float]:
    rate_d = sum(r.requests for r in d) / sum(r.wall for r in d)
    rate_p = sum(r.requests for r in p) / sum(r.wall for r in p)
    out = {"rps_ratio": rate_p / rate_d, "direct_rps": rate_d, "proxied_rps": rate_p}
    if cpu_us is not None:
        out["cpu_us_per_request"] = cpu_us
    print(f"\n{title}")
    for key, value in out.items():
        print(f"  {key:24} {value:10.3f}")
    return out


async def side_by_side(
    up: str,
    proxied: tuple[str, int],
    key: str,
    title: str,
    same: str,
    rounds: int,
    run: Callable[[str], Awaitable[Round]],
    report: Callable[..., dict[str, float]],
    stack_of: tuple[str, str, bool],
    with_nginx: bool,
) -> dict[str, object]:
    """``run`` straight at ``up`` and through the proxy (``proxied``: its URL and process),
    the proxy on 2 processes, the floor and nginx where installed, in the same rounds; each
    reported against direct, with the Python processes' CPU per request."""
    server, client, policy = stack_of
    px, px_pid = proxied
    with contextlib.ExitStack() as stack:
        two, two_pid = stack.enter_context(proxy_process(up, server, client, policy, 2))
        low, low_pid = stack.enter_context(floor_process(up))
        other = stack.enter_context(nginx(up)) if with_nginx else None
        targets = [up, px, two, low] + ([other] if other else [])
        cpu = CpuPerRequest({px: px_pid, two: two_pid, low: low_pid})
        sides = await alternate_many(targets, rounds, cpu.wrap(run))
    direct = sides[0]
    out: dict[str, object] = {
        key: report(f"{title} ({server}+{client})", direct, sides[1],
                    cpu_us=cpu.microseconds(px)),
        f"{key}_workers2": report(
            f"{same} through the proxy on 2 processes (ONDEMAND_PROXY_WORKERS=2)", direct,
            sides[2], cpu_us=cpu.microseconds(two),
        ),
        f"{key}_floor": report(f"{same} through the floor (server and client, no app)", direct,
                               sides[3], cpu_us=cpu.microseconds(low)),
    }  # fmt: skip
    if other:
        out[f"{key}_nginx"] = report(f"{same} through nginx {nginx_version()}", direct, sides[4])
    return out


async def measure(
    server: str,
    client: str,
    quick: bool,
    parts: set[str],
    policy: bool = True,
    flood: tuple[int, int] = FLOOD,
    with_nginx: bool = True,
) -> dict[str, object]:
    rounds = 2 if quick else 4
    results: dict[str, object] = {"server": server, "client": client}
    if "realistic" in parts:
        tokens, window = (100, 4.0) if quick else (200, 8.0)
        with emulator(100, tokens) as up, proxy(up, server, client, policy) as px:
            d, p = await alternate(
                up, px, rounds, lambda url: steady_streams(url, 64, window, tokens / 100)
            )
            results["realistic"] = report_streams(
                f"64 concurrent streams of {tokens} tokens at 100 tokens/s, back to back "
                f"({server}+{client})",
                d,
                p,
            )
    if "burst" in parts:
        # CI jobs start their requests together: 64 arrivals in one instant, each on a new
        # connection, is the case users meet. Many short rounds: one burst is one sample.
        tokens = 50
        with emulator(100, tokens) as up, proxy_process(up, server, client, policy) as one:
            results.update(
                await side_by_side(
                    up, one, "burst", "64 streams arriving at the same instant",
                    "the same burst", 8 if quick else 16, lambda u: streams(u, 64),
                    report_streams, (server, client, policy), with_nginx,
                )
            )  # fmt: skip
    if "saturation" in parts:
        with emulator(0, 2000) as up, proxy_process(up, server, client, policy) as (px, px_pid):
            d, p = await alternate(up, px, rounds, lambda url: streams(url, 16))
            results["saturation"] = report_streams(
                f"16 streams x 2000 tokens, unpaced ({server}+{client})", d, p
            )
            seconds = 2.0 if quick else 4.0
            results.update(
                await side_by_side(
                    up, (px, px_pid), "small", "/api/tags at concurrency 32", "the same",
                    rounds, lambda url: small_requests(url, 32, seconds), report_requests,
                    (server, client, policy), with_nginx,
                )
            )  # fmt: skip
    if "cancel" in parts:
        with contextlib.ExitStack() as stack:
            up = stack.enter_context(emulator(100, 100_000))
            px = stack.enter_context(proxy(up, server, client, policy))
            two, _ = stack.enter_context(proxy_process(up, server, client, policy, 2))
            trials = 10 if quick else 20
            direct = await cancel_latency(up, up, trials)
            proxied = await cancel_latency(px, up, trials)
            workers = await cancel_latency(two, up, trials)
            results["cancel"] = out = {
                "direct_p50_ms": _pct(direct, 50) * 1e3,
                "proxied_p50_ms": _pct(proxied, 50) * 1e3,
                "proxied_max_ms": max(proxied) * 1e3,
                "workers2_p50_ms": _pct(workers, 50) * 1e3,
                "workers2_max_ms": max(workers) * 1e3,
            }
            print(f"\nclient disconnect -> upstream generation cancelled ({server}+{client})")
            for key, value in out.items():
                print(f"  {key:24} {value:10.3f}")
    if "flood" in parts:
        tokens, window = (100, 4.0) if quick else (200, 8.0)
        with emulator(100, tokens) as up, proxy_process(up, server, client, policy) as (px, pid):
            await steady_streams(px, 64, 2.0, tokens / 100)  # warm: pools and caches filled
            before = rss_bytes(pid)
            base: list[FloodRound] = []
            flooded: list[FloodRound] = []
            for index in range(rounds):  # ABBA: quiet, flooded, flooded, quiet, ...
                flooding = index % 4 in (1, 2)
                round_ = await under_flood(
                    px,
                    up,
                    pid,
                    window,
                    tokens / 100,
                    flood if flooding else None,
                    direct_first=index % 2 == 1,
                )
                (flooded if flooding else base).append(round_)
            after = rss_bytes(pid)
            results["flood"] = report_flood(
                f"64 streams with and without a flood of {flood[0]} oversized-header senders "
                f"and {flood[1]:,} slow-header connections ({server}+{client})",
                base,
                flooded,
                before,
                after,
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--compare", action="store_true", help="server x client matrix")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--no-policy", action="store_true", help="keys from env only, no limits, no webhook"
    )
    parser.add_argument(
        "--only", choices=sorted(SCENARIOS), action="append", help="run only these scenarios"
    )
    parser.add_argument(
        "--client",
        choices=CLIENTS,
        default=CLIENTS[0],
        help=f"the proxy's upstream client (default: {CLIENTS[0]}, the shipped one)",
    )
    parser.add_argument(
        "--no-nginx", action="store_true", help="no nginx baseline even where it is installed"
    )
    parser.add_argument(
        "--flood",
        metavar="OVERSIZED,SLOW",
        help=f"the flood's shape (default: {FLOOD[0]},{FLOOD[1]})",
    )
    args = parser.parse_args()
    parts = set(args.only or SCENARIOS)
    oversized, _, slow = (args.flood or "").partition(",")
    flood = (int(oversized), int(slow)) if args.flood else FLOOD
    everything: dict[str, object] = {}
    if args.compare:
        for server in ("uvicorn", "granian"):
            for client in CLIENTS:
                key = f"{server}+{client}"
                everything[key] = asyncio.run(
                    measure(server, client, args.quick, {"realistic", "saturation", "cancel"})
                )
    else:
        everything["shipped"] = asyncio.run(
            measure(
                "uvicorn", args.client, args.quick, parts, policy=not args.no_policy, flood=flood,
                with_nginx=not args.no_nginx,
            )
        )  # fmt: skip
        if args.only is None:
            help_s, bare_s = help_wall_time(10 if args.quick else 20)
            everything["help"] = {"ondemand_help_ms": help_s * 1e3, "python_bare_ms": bare_s * 1e3}
            print(f"\n`ondemand --help` wall time: {help_s * 1e3:.1f} ms "
                  f"(bare interpreter start: {bare_s * 1e3:.1f} ms)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(everything, indent=2))


if __name__ == "__main__":
    main()
