"""Hostile clients for bench/proxy.py's flood scenario, in a process of their own.

    python bench/flood.py PORT SECONDS [--oversized 16] [--slow 2000]

``--oversized`` connections each send a request whose header never ends, 64 KiB at a time
as fast as loopback takes it, until the server answers; then they start again.
``--slow`` connections each send a request line, then one header byte a second; when the
server closes one, another is opened. Prints one JSON object of what the server did.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from collections.abc import Awaitable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ondemand.serving import run_loop

HOST = "127.0.0.1"


async def _oversized(port: int, deadline: float, seen: Counter[str]) -> None:
    piece = b"a" * 65536
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            seen["connect_failed"] += 1
            await asyncio.sleep(0.01)
            continue
        answer = asyncio.ensure_future(reader.readline())
        sent = 0
        try:
            writer.write(b"GET /ping HTTP/1.1\r\nHost: flood\r\nX-Big: ")
            while not answer.done() and sent < 256 << 20:
                writer.write(piece)
                sent += len(piece)
                await writer.drain()
        except OSError:
            pass  # the server closed while the client was still sending
        seen["bytes_sent"] += sent
        try:
            line = await asyncio.wait_for(answer, 5)
            seen[line.split(b" ")[1].decode() if line else "closed_without_answer"] += 1
        except (OSError, IndexError):
            # asyncio drops what it had not read when a write fails: the server closed on
            # a request it had not finished reading, its answer unread.
            seen["reset_while_sending"] += 1
        except TimeoutError:
            seen["no_answer_in_5s"] += 1
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _slow(port: int, deadline: float, seen: Counter[str], start: float) -> None:
    await asyncio.sleep(start)  # spread the connections' openings over the first second
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            seen["slow_connect_failed"] += 1
            await asyncio.sleep(0.1)
            continue
        seen["slow_opened"] += 1
        closed = asyncio.ensure_future(reader.read(4096))
        try:
            writer.write(b"GET /ping HTTP/1.1\r\nHost: flood\r\nX-Slow: ")
            while time.monotonic() < deadline and not closed.done():
                await asyncio.wait([closed], timeout=1.0)
                if not closed.done():
                    writer.write(b"s")
        except OSError:
            pass
        if closed.done():
            with contextlib.suppress(Exception):
                data = closed.result()
                seen[f"slow_{data.split(b' ')[1].decode()}" if data else "slow_closed"] += 1
        else:
            closed.cancel()
        writer.close()


async def _counting_errors(work: Awaitable[None], seen: Counter[str]) -> None:
    try:
        await work
    except Exception as exc:  # one client's surprise must not lose the others' counts
        seen[f"client_error_{type(exc).__name__}"] += 1


async def flood(port: int, seconds: float, oversized: int, slow: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    deadline = time.monotonic() + seconds
    await asyncio.gather(
        *(_counting_errors(_oversized(port, deadline, seen), seen) for _ in range(oversized)),
        *(
            _counting_errors(_slow(port, deadline, seen, i / max(1, slow)), seen)
            for i in range(slow)
        ),
    )
    return seen


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("seconds", type=float)
    parser.add_argument("--oversized", type=int, default=16)
    parser.add_argument("--slow", type=int, default=2000)
    args = parser.parse_args()
    seen: dict[str, float] = dict(
        run_loop(flood(args.port, args.seconds, args.oversized, args.slow))
    )
    seen["cpu_seconds"] = time.process_time()
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
