"""Soak: 200 concurrent streams for 60 s through the proxy, with a dead usage webhook.

    python bench/soak.py                 # 200 streams, 60 s
    python bench/soak.py --seconds 10    # a shorter rehearsal

Passes when no request failed, the proxy's memory stayed bounded, and every usage record is
accounted for: produced == sent + dropped + pending, and produced == requests completed.
Policy and metering are on (keys file with an allow-list and limits, a keep-alive cap);
the webhook points at a port nobody listens on, so every batch fails and is dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx

from ondemand.processes import free_port, running

ROOT = Path(__file__).resolve().parent.parent
KEY = "odk_soak_user_key_0123456789"
ADMIN = "odk_soak_admin_key_0123456789"
MODEL = "llama3.2"


def rss_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


async def load(url: str, streams: int, seconds: float) -> tuple[int, list[str]]:
    """``streams`` clients chatting back to back; returns completed requests and failures."""
    completed = 0
    failures: list[str] = []
    deadline = time.perf_counter() + seconds
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    headers = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession(headers=headers, connector=connector, timeout=timeout) as s:

        async def client() -> None:
            nonlocal completed
            while time.perf_counter() < deadline:
                try:
                    async with s.post(url + "/api/chat", json=body) as response:
                        last = b""
                        async for line in response.content:
                            if line.strip():
                                last = line
                        if response.status != 200 or b'"done":true' not in last:
                            failures.append(f"HTTP {response.status}: {last[:200]!r}")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                completed += 1

        await asyncio.gather(*(client() for _ in range(streams)))
    return completed, failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp) / "keys.yml"
        keys.write_text(json.dumps([
            {"name": "soak", "key": KEY, "models": [MODEL], "max_concurrency": 1000,
             "rpm": 1_000_000},
            {"name": "admin", "key": ADMIN, "admin": True},
        ]))  # fmt: skip
        emulator_port, proxy_port = free_port(), free_port()
        upstream = f"http://127.0.0.1:{emulator_port}"
        proxy = f"http://127.0.0.1:{proxy_port}"
        emulator_env = {
            "OLLAMA_HOST": f"127.0.0.1:{emulator_port}",
            "OLLAMA_EMULATOR_MODELS": MODEL,
            "OLLAMA_EMULATOR_TOKENS_PER_SECOND": "20",
            "OLLAMA_EMULATOR_RESPONSE_TOKENS": "40",
            "OLLAMA_EMULATOR_LOAD_TIME": "0",
        }
        proxy_env = {
            "ONDEMAND_KEYS_FILE": str(keys),
            "ONDEMAND_MAX_KEEP_ALIVE": "30m",
            # Nobody listens there: every batch fails, retries, and is dropped.
            "USER_MODEL_METRICS_WEBHOOK_URL": f"http://127.0.0.1:{free_port()}/usage",
            "USER_MODEL_METRICS_WEBHOOK_API_KEY": "whk_dead",
            "ONDEMAND_WEBHOOK_INTERVAL": "1",
            "AUTHORIZATION_LOG_LEVEL": "WARNING",
        }
        emulator_args = [sys.executable, "-m", "ondemand.sandbox.ollama", "serve"]
        proxy_args = [sys.executable, str(ROOT / "bench" / "proxy_server.py"),
                      "--upstream", upstream, "--port", str(proxy_port)]  # fmt: skip
        with (
            running(emulator_args, env=emulator_env, ready_url=upstream + "/", cwd=ROOT),
            running(proxy_args, env=proxy_env, ready_url=proxy + "/ping", cwd=ROOT) as px,
        ):
            asyncio.run(load(proxy, 4, 1.0))  # load the model, open the pools
            before = rss_kib(px.pid)
            started = time.perf_counter()
            completed, failures = asyncio.run(load(proxy, args.streams, args.seconds))
            elapsed = time.perf_counter() - started
            time.sleep(2)  # let the last records reach the sender
            after = rss_kib(px.pid)
            status = httpx.get(
                proxy + "/ondemand/status", headers={"Authorization": f"Bearer {ADMIN}"}
            ).json()
            warm_up = status["usage"]["soak"]["requests"] - completed
    hook = status["webhook"]
    accounted = hook["sent"] + hook["dropped"] + hook["pending"]
    result = {
        "streams": args.streams,
        "seconds": round(elapsed, 1),
        "requests_completed": completed,
        "failed": len(failures),
        "records_produced": hook["produced"],
        "records_sent": hook["sent"],
        "records_dropped": hook["dropped"],
        "records_pending": hook["pending"],
        "rss_before_mib": round(before["VmRSS"] / 1024, 1),
        "rss_after_mib": round(after["VmRSS"] / 1024, 1),
        "rss_peak_mib": round(after["VmHWM"] / 1024, 1),
    }
    print(json.dumps(result, indent=2))
    if failures:
        print("first failures:", *failures[:5], sep="\n  ")
    ok = not failures and hook["produced"] == accounted and hook["produced"] == completed + warm_up
    print("PASS" if ok else "FAIL")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
