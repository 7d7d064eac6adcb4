"""Go time semantics Ollama exposes: ParseDuration, ``keep_alive`` values, RFC 3339 stamps."""

from __future__ import annotations

import contextlib
import datetime as dt
import time

FOREVER_NS = (1 << 63) - 1
"""``math.MaxInt64`` nanoseconds: what Ollama stores for a negative keep_alive (≈292 years)."""

_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5
    "μs": 1_000,  # U+03BC
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class DurationError(ValueError):
    """Carries Go's exact error text, which Ollama returns to the client."""


def _go_quote(s: str) -> str:
    out = ['"']
    for c in s:
        if ord(c) >= 0x80 or c < " ":
            out.extend(f"\\x{b:02x}" for b in c.encode("utf-8", "surrogatepass"))
        else:
            if c in '"\\':
                out.append("\\")
            out.append(c)
    out.append('"')
    return "".join(out)


def parse_go_duration(text: str) -> int:
    """``time.ParseDuration`` in nanoseconds, with Go's error messages."""
    orig = text
    s = text
    neg = False
    if s and s[0] in "-+":
        neg = s[0] == "-"
        s = s[1:]
    # Go accepts a bare zero without a unit; every other unit-less number is an error.
    if s == "0":
        return 0
    invalid = DurationError(f"time: invalid duration {_go_quote(orig)}")
    if not s:
        raise invalid
    total = 0
    while s:
        if not (s[0] == "." or "0" <= s[0] <= "9"):
            raise invalid
        i = 0
        while i < len(s) and "0" <= s[i] <= "9":
            i += 1
        whole = int(s[:i]) if i else 0
        pre = i > 0
        s = s[i:]
        frac, scale, post = 0, 1, False
        if s.startswith("."):
            s = s[1:]
            j = 0
            while j < len(s) and "0" <= s[j] <= "9":
                j += 1
            post = j > 0
            if post:
                frac, scale = int(s[:j]), 10**j
            s = s[j:]
        if not pre and not post:
            raise invalid
        k = 0
        while k < len(s) and not (s[k] == "." or "0" <= s[k] <= "9"):
            k += 1
        if k == 0:
            raise DurationError(f"time: missing unit in duration {_go_quote(orig)}")
        unit_text, s = s[:k], s[k:]
        unit = _UNITS.get(unit_text)
        if unit is None:
            raise DurationError(
                f"time: unknown unit {_go_quote(unit_text)} in duration {_go_quote(orig)}"
            )
        if whole > (1 << 63) // unit:
            raise invalid
        value = whole * unit
        if frac:
            value += int(frac * (unit / scale))
        total += value
        if total > 1 << 63:
            raise invalid
    if neg:
        return -total
    if total > FOREVER_NS:
        raise invalid
    return total


def keep_alive_from_json(value: object) -> int | None:
    """``api.Duration.UnmarshalJSON``: a JSON number is seconds, a string a Go duration.

    Returns nanoseconds (negative means forever), or None when the field is absent or null.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise DurationError("Unsupported type: 'bool'")
    if isinstance(value, int | float):
        return FOREVER_NS if value < 0 else int(value * 1_000_000_000)
    if isinstance(value, str):
        ns = parse_go_duration(value)
        return FOREVER_NS if ns < 0 else ns
    kind = "map[string]interface {}" if isinstance(value, dict) else "[]interface {}"
    raise DurationError(f"Unsupported type: '{kind}'")


def keep_alive_from_env(value: str) -> int:
    """``envconfig.KeepAlive``: a duration or whole seconds; unparsable means the 5m default."""
    ns = 5 * 60 * 1_000_000_000
    s = value.strip().strip("\"'")
    if s:
        try:
            ns = parse_go_duration(s)
        except DurationError:
            with contextlib.suppress(ValueError):
                ns = int(s) * 1_000_000_000
    return FOREVER_NS if ns < 0 else ns


def rfc3339(ns: int) -> str:
    """Go's RFC3339Nano in UTC: trailing zeros of the fraction dropped, and the dot too."""
    seconds, frac = divmod(ns, 1_000_000_000)
    stamp = (_EPOCH + dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        return f"{stamp}.{frac:09d}".rstrip("0") + "Z"
    return stamp + "Z"


class Clock:
    """Per-line ``created_at`` stamps; the date part is formatted once per second."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        seconds, frac = divmod(time.time_ns(), 1_000_000_000)
        if seconds != self._second:
            self._second = seconds
            self._prefix = (_EPOCH + dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")
        if frac:
            return f"{self._prefix}.{frac:09d}".rstrip("0") + "Z"
        return self._prefix + "Z"
