"""The floor under the proxy: the same server, front door and upstream client, no app.

    python bench/forward_server.py --upstream URL --port 9000

It forwards every request as it comes (no keys, policy, limits, metering, log or usage
records), so bench/proxy.py can tell what the proxy's own work costs from what serving and
forwarding a request in Python costs at all.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ondemand.asgi import Receive, Scope, Send, read_body
from ondemand.proxy.upstream import request_headers, response_headers
from ondemand.proxy.upstream_http import HttpUpstream


class Forward:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.client: HttpUpstream | None = None  # made in the serving loop

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if self.client is None:
            self.client = HttpUpstream(self.upstream)
        body = await read_body(receive)
        response = await self.client.send(
            scope["method"], scope["path"], scope["query_string"],
            request_headers(scope["headers"]), body,
        )  # fmt: skip
        try:
            headers = response_headers(response.headers)
            await send({"type": "http.response.start", "status": response.status,
                        "headers": headers})  # fmt: skip
            async for chunk in response.chunks():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    from ondemand.serving import run

    run(Forward(args.upstream), host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
