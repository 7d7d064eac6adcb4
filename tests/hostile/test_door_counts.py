"""What the front door turns away is visible: counted on /metrics, logged without flooding
the log; and the connection cap follows the open-file limit the server runs under."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ondemand.frontdoor import BODY_TIMEOUT, EVICTED, HEAD_TOO_LARGE, DoorCounts
from tests.hostile.conftest import (
    ADMIN_KEY,
    Process,
    RawUpstream,
    proxy_env,
    raw,
    request,
    start_proxy_process,
)
from tests.proxy.rawhttp import read_response

SMALL = {
    "ONDEMAND_MAX_HEADER_SIZE": "4KiB",
    "ONDEMAND_MAX_REQUEST_LINE": "1KiB",
    "ONDEMAND_MAX_HEADERS": "20",
    "ONDEMAND_MAX_CONNECTIONS": "6",
}
FIRST_LINE = "front door turned a connection away"


@pytest.fixture
def small(upstream: RawUpstream, tmp_path: Path) -> Iterator[Process]:
    started = start_proxy_process(tmp_path, upstream.url, proxy_env(tmp_path, **SMALL))
    try:
        yield started
    finally:
        started.stop()


def _held(port: int) -> socket.socket:
    """A keep-alive connection the server has answered on (so it is open on its side)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(sock).status == 200
    return sock


def _metrics(port: int) -> dict[str, float]:
    text = raw(port, request("GET", "/metrics", key=ADMIN_KEY)).body.decode()
    found: dict[str, float] = {}
    for name, labels, value in re.findall(r"^(ondemand_\w+)(\{[^}]*\})? (\S+)$", text, re.M):
        found[name + labels] = float(value)
    return found


def _turned_away(port: int, reason: str) -> float:
    return _metrics(port)[f'ondemand_front_door_turned_away_total{{reason="{reason}"}}']


def test_refusals_and_evictions_are_counted_by_reason_and_logged_once(small: Process) -> None:
    port = small.port
    assert raw(port, b"GET /" + b"a" * 2048 + b" HTTP/1.1\r\n\r\n").status == 414
    assert raw(port, b"GET /ping HTTP/1.1\r\nX: " + b"a" * 8192 + b"\r\n\r\n").status == 431
    many = "".join(f"X-{i}: v\r\n" for i in range(21)).encode()
    assert raw(port, b"GET /ping HTTP/1.1\r\n" + many + b"\r\n").status == 431
    assert raw(port, b"NOT HTTP AT ALL\r\n\r\n").status == 400
    held = [_held(port) for _ in range(6)]  # the cap; the scrape below evicts one of them
    try:
        counts = _metrics(port)
        assert counts['ondemand_front_door_turned_away_total{reason="line_too_long"}'] == 1
        assert counts['ondemand_front_door_turned_away_total{reason="head_too_large"}'] == 1
        assert counts['ondemand_front_door_turned_away_total{reason="too_many_headers"}'] == 1
        assert counts['ondemand_front_door_turned_away_total{reason="malformed"}'] == 1
        assert counts['ondemand_front_door_turned_away_total{reason="evicted"}'] == 1
        assert counts['ondemand_front_door_turned_away_total{reason="full"}'] == 0
        assert counts["ondemand_connections_open"] == 6  # five held and the scrape
    finally:
        for sock in held:
            sock.close()
    log = small.output()
    # The first is logged at once, by what the limit is called; the rest wait for the
    # minute's summary, so a flood cannot flood the log.
    assert log.count(FIRST_LINE) == 1, log
    assert "request lines over ONDEMAND_MAX_REQUEST_LINE (414)" in log


def test_the_count_of_open_connections_falls_as_clients_leave(small: Process) -> None:
    held = [_held(small.port) for _ in range(3)]
    assert _metrics(small.port)["ondemand_connections_open"] == 4
    for sock in held:
        sock.close()
    deadline = time.monotonic() + 10
    while _metrics(small.port)["ondemand_connections_open"] != 1:
        assert time.monotonic() < deadline, "the closed connections are still counted"


def test_the_minute_summary_names_each_limit_and_how_often(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counts = DoorCounts(summary_seconds=0.05)

    class Summary(logging.Handler):
        def __init__(self, seen: asyncio.Event) -> None:
            super().__init__()
            self.seen = seen

        def emit(self, record: logging.LogRecord) -> None:
            if "in the last" in record.getMessage():
                self.seen.set()

    async def flood() -> None:
        loop = asyncio.get_running_loop()
        summary = Summary(asyncio.Event())
        logging.getLogger("ondemand.frontdoor").addHandler(summary)
        try:
            counts.add(HEAD_TOO_LARGE, loop)
            for _ in range(1500):
                counts.add(EVICTED, loop)
            counts.add(BODY_TIMEOUT, loop)
            await asyncio.wait_for(summary.seen.wait(), 10)
        finally:
            logging.getLogger("ondemand.frontdoor").removeHandler(summary)

    with caplog.at_level(logging.WARNING, logger="ondemand.frontdoor"):
        asyncio.run(flood())
    first, summary = (r.getMessage() for r in caplog.records)
    assert first == f"{FIRST_LINE}: heads over ONDEMAND_MAX_HEADER_SIZE (431)"
    assert summary.startswith("front door turned 1,501 connections away in the last 0.05 s: ")
    assert "1,500 waiting connections closed to make room" in summary
    assert "1 bodies slower than ONDEMAND_BODY_TIMEOUT" in summary
    assert counts.turned_away == {"head_too_large": 1, "evicted": 1500, "body_timeout": 1}


def _open_files(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-file limit in /proc")


@pytest.mark.skipif(not Path("/proc/self/limits").exists(), reason="reads /proc (Linux)")
def test_the_cap_follows_the_open_file_limit_the_server_is_started_under(
    upstream: RawUpstream, tmp_path: Path
) -> None:
    # `ulimit -Sn 300 -Hn 600`: the server raises its soft limit to 600 (as Ollama does),
    # which affords (600 - 256) / 2 = 172 connections when each busy one also holds one to
    # Ollama; without the cap, the 301st connection would have failed to be accepted.
    server = start_proxy_process(tmp_path, upstream.url, proxy_env(tmp_path), open_files=(300, 600))
    held: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 10  # raised as the server starts, after it listens
        while _open_files(server.pid) != (600, 600):
            assert time.monotonic() < deadline, _open_files(server.pid)
        held = [_held(server.port) for _ in range(172)]
        newcomer = _held(server.port)  # served: the longest-waiting one made room
        held.append(newcomer)
        held[0].settimeout(10)
        assert held[0].recv(1) == b""
        held[1].sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(held[1]).status == 200
        assert _turned_away(server.port, "evicted") >= 1
    finally:
        for sock in held:
            sock.close()
        server.stop()
