"""How the server reads its environment: one rule per kind of value, the same for every
setting, and errors that name the variable and say what is expected.

- Every value is trimmed, and an empty one is the same as an unset one (the default).
- Durations: seconds (``30``, ``0.5``, ``30s``) or a duration as the CLI writes it
  (``90s``, ``2m``, ``1h30m``); each setting says whether 0 is allowed.
- Sizes: bytes, or a number and a unit (``64MiB``, ``64MB``; single letters are binary).
- Booleans: ``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off``; anything else
  is an error, never a silent "off".
- Ports: a whole number in 1-65535 (0, "any free port", only where a setting allows it).
- Secrets (keys, passwords): the value is used as given, never trimmed, and refused when it
  is only whitespace or starts or ends with whitespace (a stray newline from a file would
  otherwise become part of the key, or the whole key). Errors never show a secret's value.

Imports stay light: the CLI imports this module only when a server starts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from ondemand.errors import ConfigError

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_SECONDS = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)s?$")
_SIZE = re.compile(r"^(\d+)\s*([a-z]*)$", re.IGNORECASE)
# Single letters are binary, as in nginx's client_max_body_size ("64m" is 64 MiB).
_FACTORS = {
    "": 1, "b": 1,
    "k": 2**10, "kib": 2**10, "kb": 10**3,
    "m": 2**20, "mib": 2**20, "mb": 10**6,
    "g": 2**30, "gib": 2**30, "gb": 10**9,
}  # fmt: skip


def parse_seconds(text: str) -> float:
    """Seconds from ``30``, ``0.5``, ``30s``, ``2m``, ``1h30m``; ValueError otherwise."""
    compact = text.strip()
    match = _SECONDS.match(compact)
    if match:
        return float(match.group(1))
    from ondemand.configtypes import parse_duration

    return parse_duration(compact).total_seconds()


def parse_size(text: str) -> int:
    """Bytes from ``67108864``, ``64MiB``, ``64MB``, ``64m``; ValueError otherwise."""
    match = _SIZE.match(text.strip())
    factor = _FACTORS.get(match.group(2).lower()) if match else None
    if match is None or factor is None:
        raise ValueError(f"invalid size {text!r}: use bytes or a unit, like 64MiB or 10MB")
    return int(match.group(1)) * factor


def secret_problem(value: str) -> str | None:
    """Why ``value`` cannot be a key or password, in words that do not repeat it."""
    if not value.strip():
        return "holds only whitespace"
    if value != value.strip():
        return "starts or ends with whitespace (a trailing newline?)"
    return None


class Env:
    """Typed reads of one environment mapping, with the rules above."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def text(self, name: str, default: str = "") -> str:
        return self.env.get(name, "").strip() or default

    def _fail(self, name: str, expected: str) -> ConfigError:
        return ConfigError(f"{name} must be {expected}, got {self.env[name].strip()!r}")

    def flag(self, name: str, default: bool = False) -> bool:
        raw = self.text(name).lower()
        if not raw:
            return default
        if raw in _TRUE | _FALSE:
            return raw in _TRUE
        raise self._fail(name, "1, true, yes, on or 0, false, no, off")

    def port(self, name: str, default: int, *, allow_zero: bool = False) -> int:
        raw = self.text(name)
        if not raw:
            return default
        low = 0 if allow_zero else 1
        if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= 65535:
            raise self._fail(name, f"a port number ({low}-65535)")
        return int(raw)

    def count(self, name: str, default: int, *, minimum: int = 1) -> int:
        found = self.optional_count(name, minimum=minimum)
        return default if found is None else found

    def optional_count(self, name: str, *, minimum: int = 1) -> int | None:
        raw = self.text(name)
        if not raw:
            return None
        if not (raw.isascii() and raw.isdigit()) or int(raw) < minimum:
            raise self._fail(name, f"a whole number ≥ {minimum}")
        return int(raw)

    def seconds(self, name: str, default: float, *, zero: bool = False) -> float:
        found = self.optional_seconds(name, zero=zero)
        return default if found is None else found

    def optional_seconds(self, name: str, *, zero: bool = False) -> float | None:
        """A duration in seconds; ``zero`` says whether 0 is allowed for this setting."""
        raw = self.text(name)
        if not raw:
            return None
        try:
            value = parse_seconds(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
            least = "0 or more" if zero else "more than 0"
            raise self._fail(name, f"a duration of {least}: seconds (30, 0.5) or 90s, 2m, 1h30m")
        return value

    def factor(self, name: str, default: float) -> float:
        """A positive, finite number (a rate or a scale)."""
        raw = self.text(name)
        try:
            value = float(raw) if raw else default
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise self._fail(name, "a number greater than 0")
        return value

    def size(self, name: str, default: int, *, minimum: int = 0) -> int:
        raw = self.text(name)
        if not raw:
            return default
        try:
            value = parse_size(raw)
        except ValueError:
            raise self._fail(name, "bytes or a size with a unit, like 64MiB or 10MB") from None
        if value < minimum:
            raise self._fail(name, f"at least {minimum} byte{'s' if minimum != 1 else ''}")
        return value

    def secret(self, name: str) -> str | None:
        """A key or password: None when unset or empty; refused when whitespace surrounds it
        or is all it holds. The message names the variable, never the value."""
        value = self.env.get(name, "")
        if not value:
            return None
        problem = secret_problem(value)
        if problem:
            raise ConfigError(
                f"{name} {problem}, so the server refuses to start",
                cause="a key made of whitespace, or with whitespace around it, is almost "
                "always a copy-and-paste or file-reading accident",
                hint=f"set {name} to the key alone, or unset it",
            )
        return value
