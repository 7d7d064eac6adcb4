"""CPU per request of the link between the proxy's main process and a worker.

    python bench/link.py

Both ends of one link (ondemand/proxy/link.py) in one process, over a real socket pair:
a worker's admission, the main process's answer, and the worker's report when the request
is done, 20,000 times, one at a time and 32 at once. The figure is both ends' CPU per
request: what ONDEMAND_PROXY_WORKERS adds to each request a worker forwards.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ondemand.proxy import ProxyApp, ProxySettings
from ondemand.proxy.link import MainSide, WorkerSide
from ondemand.proxy.usage import UsageRecord
from ondemand.serving import run_loop

KEY = "odk_bench_key_0123456789abcdef"
REQUESTS = 20_000


async def measure(keys: Path) -> dict[int, float]:
    app = ProxyApp(ProxySettings.from_env({"ONDEMAND_KEYS_FILE": str(keys)}))
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    _, main = await loop.connect_accepted_socket(lambda: MainSide(app), ours)
    _, worker = await loop.connect_accepted_socket(lambda: WorkerSide(lambda _: None), theirs)
    identity = app.keys.authenticate([(b"authorization", f"Bearer {KEY}".encode())])
    record = UsageRecord(1.0, "0123456789abcdef", "bench", "llama3.2", "/api/tags", "GET", 200,
                         None, None, 1.5, 1.0)  # fmt: skip

    async def one() -> None:
        await worker.admit(identity)
        worker.leave(identity, record)

    out: dict[int, float] = {}
    for concurrency in (1, 32):
        started = time.process_time()
        for _ in range(REQUESTS // concurrency):
            await asyncio.gather(*(one() for _ in range(concurrency)))
        while app.limits.inflight:  # noqa: ASYNC110 - the last reports are read off the socket
            await asyncio.sleep(0.001)
        out[concurrency] = (time.process_time() - started) / REQUESTS * 1e6
    main.close()
    worker.close()
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp) / "keys.yml"
        entry = {"name": "bench", "key": KEY, "models": ["llama3.2"], "max_concurrency": 10_000,
                 "rpm": 10_000_000}  # fmt: skip
        keys.write_text(json.dumps([entry]))
        figures = run_loop(measure(keys))
    for concurrency, micros in figures.items():
        print(f"concurrency {concurrency:2}: {micros:5.1f} µs of CPU per request, both ends")


if __name__ == "__main__":
    main()
