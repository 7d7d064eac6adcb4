"""Send bytes exactly as written: what a hostile or broken client does."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return out


def raw_request(
    port: int, request: bytes, *, timeout: float = 5.0, send_only: bool = False
) -> RawResponse:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        if send_only:
            sock.shutdown(socket.SHUT_WR)
        return read_response(sock)


def read_response(sock: socket.socket) -> RawResponse:
    """Read one whole response: its head and body may arrive in separate segments."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            headers = _headers(head)
            length = headers.get("content-length")
            if length is not None and len(body) >= int(length):
                break
            if headers.get("transfer-encoding") == "chunked" and body.endswith(b"0\r\n\r\n"):
                break
    head, _, body = data.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0]
    if not status_line:
        raise ConnectionError("no response")
    headers = _headers(head)
    if headers.get("transfer-encoding") == "chunked":
        body = _dechunk(body)
    return RawResponse(int(status_line.split()[1]), headers, body)


def _headers(head: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        out[name.decode().strip().lower()] = value.decode().strip()
    return out


def get(port: int, path: str, headers: str = "", method: str = "GET", body: bytes = b"") -> bytes:
    extra = f"Content-Length: {len(body)}\r\n" if body or method in ("POST", "DELETE") else ""
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}{extra}"
        "Connection: close\r\n\r\n"
    ).encode() + body
