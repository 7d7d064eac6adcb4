"""Token usage read from Ollama responses while they stream through the proxy.

A ``Meter`` sits on one response body. It forwards each chunk as it arrives and watches a
copy for the records that carry usage: the ``done:true`` line of a native NDJSON stream, the
usage event of an OpenAI SSE stream, or a whole non-streamed JSON body. Only records that a
cheap byte search flags are decoded, so token lines cost a few C-level scans per chunk.

Usage shapes follow ``/work/shared/reference/ollama-api.md`` §1.3-1.5 (native) and §1.7
(``/v1``). ``strip_usage`` removes the usage-only SSE event that the proxy asked for on a
client's behalf, so that the client sees the stream it requested.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

_NDJSON, _SSE, _JSON = 1, 2, 3
_MODES = {b"application/x-ndjson": _NDJSON, b"text/event-stream": _SSE, b"application/json": _JSON}

_JSON_LIMIT = 4 << 20
"""A non-streamed body past this is not kept whole; only its last ``_JSON_TAIL`` bytes."""
_JSON_TAIL = 64 << 10
# In a large embedding answer the counts come after the vectors, at the end of the body.
_TAIL_COUNTS = {
    "native": (
        re.compile(rb'"prompt_eval_count"\s*:\s*(\d+)'),
        re.compile(rb'"eval_count"\s*:\s*(\d+)'),
    ),
    "openai": (
        re.compile(rb'"usage"\s*:\s*\{[^{}]*"prompt_tokens"\s*:\s*(\d+)'),
        re.compile(rb'"usage"\s*:\s*\{[^{}]*"completion_tokens"\s*:\s*(\d+)'),
    ),
}
_RECORD_LIMIT = 1 << 20
"""An unterminated line or event past this is passed through unobserved."""
_ERROR_LIMIT = 2000
_BOM = b"\xef\xbb\xbf"

_LINE = re.compile(rb"\n")
# An SSE event ends at a blank line; CRLF is allowed, bare CR (never sent by Go) is not.
_EVENT = re.compile(rb"\n\r?\n")
# Escaped quotes inside JSON strings cannot form these, so only keys (or stray text) match.
_NATIVE_MARK = re.compile(rb'"done"\s*:\s*true|"error"\s*:')
_OPENAI_MARK = re.compile(rb'"usage"\s*:\s*\{|"error"\s*:')

Buffer = bytes | bytearray


class Meter:
    """Watches one response body as it passes; finds the token usage in it."""

    __slots__ = (
        "_body",
        "_body_tail",
        "_delim",
        "_family",
        "_mark",
        "_mode",
        "_skipping",
        "_strip",
        "_tail",
        "completion_tokens",
        "error",
        "prompt_tokens",
    )

    prompt_tokens: int | None
    completion_tokens: int | None
    error: str | None

    def __init__(
        self,
        *,
        family: Literal["native", "openai"],
        content_type: bytes,
        strip_usage: bool = False,
    ) -> None:
        media = content_type.partition(b";")[0].strip().lower()
        self._mode = _MODES.get(media)
        self._family = family
        self._strip = strip_usage and self._mode == _SSE
        self._delim = _EVENT if self._mode == _SSE else _LINE
        self._mark = _NATIVE_MARK if family == "native" else _OPENAI_MARK
        self._tail = bytearray()
        """The unfinished record; in strip mode these bytes are still owed to the client."""
        self._skipping = False
        """The record in progress outgrew the limit; ``_tail`` keeps only its last bytes."""
        self._body: bytearray | None = bytearray() if self._mode == _JSON else None
        self._body_tail: bytearray | None = None
        self.prompt_tokens = None
        self.completion_tokens = None
        self.error = None

    def feed(self, chunk: bytes) -> bytes:
        """Observe ``chunk``; return what to forward now (``chunk`` itself unless stripping)."""
        mode = self._mode
        if mode is None or not chunk:
            return chunk
        if mode == _JSON:
            body = self._body
            if body is not None:
                if len(body) + len(chunk) > _JSON_LIMIT:
                    self._body_tail, self._body = body, None
                else:
                    body += chunk
                    return chunk
            tail = self._body_tail
            if tail is not None:
                tail += chunk
                del tail[: max(0, len(tail) - _JSON_TAIL)]
            return chunk
        if not self._strip:
            self._advance(chunk, None)
            return chunk
        out: list[Buffer] = []
        self._advance(chunk, out)
        if len(out) == 1 and out[0] is chunk:
            return chunk
        return b"".join(out)

    def finish(self) -> bytes:
        """End of body: read what is left; return any held bytes, unchanged."""
        if self._mode == _JSON:
            body, self._body = self._body, None
            if body:
                self._inspect(bytes(body))
            elif self._body_tail is not None:
                self._read_counts(bytes(self._body_tail))
                self._body_tail = None
            return b""
        tail = self._tail
        if self._skipping or not tail:
            self._skipping = False
            tail.clear()
            return b""
        held = bytes(tail)
        tail.clear()
        # A stream cut before its terminator may still hold a whole usage record.
        if self._mark.search(held):
            self._inspect(held)
        return held if self._strip else b""

    def _read_counts(self, tail: bytes) -> None:
        """Token counts from the end of a body too large to keep whole."""
        prompt, completion = _TAIL_COUNTS[self._family]
        found = prompt.findall(tail)
        if found:
            self.prompt_tokens = int(found[-1])
            counted = completion.findall(tail)
            if counted:
                self.completion_tokens = int(counted[-1])
            elif self._family == "native":
                self.completion_tokens = None

    def _advance(self, chunk: bytes, out: list[Buffer] | None) -> None:
        """Take in ``chunk``; with ``out``, append the bytes the client is owed now."""
        tail = self._tail
        if self._skipping:
            cut = self._end_of_skipped(chunk)
            if cut < 0:
                if out is not None:
                    out.append(chunk)
                return
            if out is not None:
                out.append(chunk[:cut])
            chunk = chunk[cut:]
            if not chunk:
                return
        buf: Buffer
        if tail:
            # A delimiter may straddle the join; none lies wholly inside the old tail.
            start = max(len(tail) - 2, 0)
            tail += chunk
            buf = tail
        else:
            start = 0
            buf = chunk
        done = self._last_end(buf, start)
        if done:
            if self._mark.search(buf, 0, done):
                self._records(buf, done, out)
            elif out is not None:
                out.append(self._piece(buf, 0, done))
        if buf is tail:
            del tail[:done]
        elif done < len(chunk):
            tail += chunk[done:]
        if len(tail) > _RECORD_LIMIT:
            if out is not None:
                out.append(bytes(tail))
            del tail[:-2]
            self._skipping = True

    def _end_of_skipped(self, chunk: bytes) -> int:
        """Where in ``chunk`` the oversized record ends (-1: not yet), keeping its last bytes."""
        tail = self._tail
        edge = len(tail)
        found = self._delim.search(bytes(tail) + chunk[:2])
        if found is not None:
            cut = found.end() - edge
        else:
            found = self._delim.search(chunk)
            cut = -1 if found is None else found.end()
        if cut < 0:
            tail += chunk[-2:]
            del tail[:-2]
        else:
            tail.clear()
            self._skipping = False
        return cut

    def _last_end(self, buf: Buffer, start: int) -> int:
        if self._delim is _LINE:
            return buf.rfind(b"\n", start) + 1
        if buf.endswith((b"\n\n", b"\n\r\n")):
            # Ollama writes whole events: the usual chunk ends on a boundary.
            return len(buf)
        end = 0
        for found in _EVENT.finditer(buf, start):
            end = found.end()
        return end

    def _records(self, buf: Buffer, done: int, out: list[Buffer] | None) -> None:
        """Read the flagged records in ``buf[:done]``; forward all but a usage-only event."""
        pos = kept = 0
        for found in self._delim.finditer(buf, 0, done):
            if self._mark.search(buf, pos, found.start()) and self._inspect(
                bytes(buf[pos : found.start()])
            ):
                if out is not None:
                    out.append(bytes(buf[kept:pos]))
                kept = found.end()
            pos = found.end()
        if out is not None:
            out.append(self._piece(buf, kept, done))

    def _piece(self, buf: Buffer, lo: int, hi: int) -> Buffer:
        # The chunk itself when it is forwarded whole: no copy on the common path.
        if lo == 0 and hi == len(buf) and buf is not self._tail:
            return buf
        return bytes(buf[lo:hi])

    def _inspect(self, record: bytes) -> bool:
        """Record usage or an error from one line, event or body; True for a usage-only event."""
        if record.startswith(_BOM):
            record = record[3:]
        if self._mode == _SSE:
            data = [
                line[6:] if line.startswith(b"data: ") else line[5:]
                for line in (raw.rstrip(b"\r") for raw in record.split(b"\n"))
                if line.startswith(b"data:")
            ]
            record = b"\n".join(data)
        try:
            item = json.loads(record)
        except (ValueError, RecursionError):
            return False
        if not isinstance(item, dict):
            return False
        if item.get("error") is not None:
            self.error = _message(item["error"])
        if self._family == "native":
            if item.get("done") is True:
                self.prompt_tokens = _count(item.get("prompt_eval_count")) or 0
                self.completion_tokens = _count(item.get("eval_count")) or 0
            elif "embeddings" in item or "prompt_eval_count" in item:
                self.prompt_tokens = _count(item.get("prompt_eval_count")) or 0
            return False
        usage = item.get("usage")
        if not isinstance(usage, dict):
            return False
        self.prompt_tokens = _count(usage.get("prompt_tokens")) or 0
        self.completion_tokens = _count(usage.get("completion_tokens"))
        return item.get("choices") == []


def _count(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _message(value: Any) -> str:
    if isinstance(value, dict) and isinstance(value.get("message"), str):
        value = value["message"]
    if not isinstance(value, str):
        try:
            value = json.dumps(value)
        except (ValueError, RecursionError):
            value = "unreadable error"
    return str(value)[:_ERROR_LIMIT]
