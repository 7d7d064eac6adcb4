"""A usage-webhook receiver for the benchmarks: counts the records it is sent.

python bench/sink.py PORT        # GET /count -> {"records": n, "batches": m}
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ondemand.asgi import Receive, Scope, Send, read_body, send_json
from ondemand.serving import run

counts = {"records": 0, "batches": 0}


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    body = await read_body(receive)
    if scope["method"] == "POST":
        counts["records"] += len(json.loads(body)["records"])
        counts["batches"] += 1
    await send_json(send, 200, counts)


if __name__ == "__main__":
    run(app, host="127.0.0.1", port=int(sys.argv[1]))
