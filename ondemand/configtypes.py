"""The types of setting values: durations, names, memory sizes, Ollama keep-alives, model lists."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Final

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema
from pydantic_core import PydanticCustomError

__all__ = [
    "Duration",
    "OptionalText",
    "check_keep_alive",
    "check_memory",
    "check_models",
    "check_name",
    "format_duration",
    "parse_duration",
]

# --------------------------------------------------------------------------------------
# Durations


_DURATION_RE: Final = re.compile(r"(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?")
_UNIT_SECONDS: Final = (86400, 3600, 60, 1)


def _duration_error(text: object) -> ValueError:
    shown = text if isinstance(text, str) else str(text)
    return ValueError(f"invalid duration {shown!r}: use a number and a unit, like 90s, 15m or 3h")


def parse_duration(text: str | int) -> timedelta:
    """Parse ``90s``, ``15m``, ``3h``, ``2d``, ``1h30m`` or plain seconds (``900``)."""
    if isinstance(text, bool):
        raise _duration_error(text)
    if isinstance(text, int):
        if text < 0:
            raise _duration_error(text)
        return timedelta(seconds=text)
    # "1h 30m" reads naturally, so inner spaces are allowed.
    compact = "".join(text.split())
    if compact.isascii() and compact.isdigit():
        return timedelta(seconds=int(compact))
    match = _DURATION_RE.fullmatch(compact)
    if not compact or match is None:
        raise _duration_error(text)
    seconds = sum(int(n) * unit for n, unit in zip(match.groups(), _UNIT_SECONDS, strict=True) if n)
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise _duration_error(text) from None


def format_duration(value: timedelta) -> str:
    """The inverse of :func:`parse_duration`: ``timedelta(minutes=90)`` -> ``1h30m``."""
    total = int(value.total_seconds())
    if total < 0:
        return "-" + format_duration(-value)
    parts = []
    for unit, seconds in zip("dhms", _UNIT_SECONDS, strict=True):
        count, total = divmod(total, seconds)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def _custom(message: str) -> PydanticCustomError:
    # The message goes through the context, not the template, so braces in user input
    # are never interpreted as placeholders.
    return PydanticCustomError("ondemand", "{message}", {"message": message})


def _check_duration(value: object) -> object:
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise _custom(str(_duration_error(format_duration(value))))
        return value
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _custom(str(_duration_error(value)))
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise _custom(str(exc)) from None


Duration = Annotated[
    timedelta,
    BeforeValidator(_check_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?$"},
                {"type": "integer", "minimum": 0},
            ],
            "description": "a duration: 90s, 15m, 3h, 2d, 1h30m, or whole seconds",
        }
    ),
]
"""A ``timedelta`` that pydantic reads from ``15m``-style text or whole seconds."""

# --------------------------------------------------------------------------------------
# Field types


def _blank_to_none(value: object) -> object:
    if isinstance(value, str) and not value.strip():
        return None
    return value


OptionalText = Annotated[str | None, BeforeValidator(_blank_to_none)]

_NAME_RE: Final = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def check_name(value: object) -> object:
    if isinstance(value, str) and not _NAME_RE.fullmatch(value):
        raise _custom(
            "must be lowercase letters, digits and '-', not starting or ending with '-', "
            f"at most 63 characters, got {value!r}"
        )
    return value


_MEMORY_RE: Final = re.compile(r"[1-9][0-9]*(Mi|Gi)")


def check_memory(value: object) -> object:
    if isinstance(value, str) and not _MEMORY_RE.fullmatch(value):
        raise _custom(f"must be a size in Mi or Gi, like 16Gi or 512Mi, got {value!r}")
    return value


# Ollama passes keep_alive to Go's time.ParseDuration, or takes a number of seconds
# (negative: keep loaded forever), so this is the Go grammar, not ours: no "d" unit.
_GO_DURATION_RE: Final = re.compile(
    r"[-+]?[0-9]+(\.[0-9]+)?|[-+]?(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|ms|s|m|h))+"
)


def check_keep_alive(value: object) -> object:
    value = _blank_to_none(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and not _GO_DURATION_RE.fullmatch(value.strip()):
        raise _custom(
            "must be an Ollama keep-alive: a duration like 10m or 24h, a number of seconds, "
            f"or -1 to keep models loaded, got {value!r}"
        )
    return value.strip() if isinstance(value, str) else value


_MODEL_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]*")


def check_models(value: object) -> object:
    if isinstance(value, str):
        pieces: list[object] = [value]
    elif isinstance(value, list | tuple):
        pieces = list(value)
    else:
        raise _custom(f"must be a list of model names or a comma-separated string, got {value!r}")
    names: list[str] = []
    for piece in pieces:
        if not isinstance(piece, str):
            raise _custom(f"each model must be a name like 'llama3.2:3b', got {piece!r}")
        # Model names never contain commas or spaces, so both separate (a multi-line
        # action input gives one model per line).
        for name in re.split(r"[,\s]+", piece):
            if name and not _MODEL_NAME_RE.fullmatch(name):
                raise _custom(
                    f"{name!r} is not a model name like 'llama3.2:3b' or 'hf.co/org/repo:Q4_K_M'"
                )
            names.append(name)
    return list(dict.fromkeys(name for name in names if name))


# A variable name, or a glob of names (`AWS_REGION`, `MY_APP_*`, `LC_?`).
_ENV_PATTERN_RE: Final = re.compile(r"[A-Za-z_*?\[][A-Za-z0-9_*?\[\]!]*")


def check_env_patterns(value: object) -> object:
    if not isinstance(value, list):
        return value
    for pattern in value:
        if not isinstance(pattern, str) or not _ENV_PATTERN_RE.fullmatch(pattern.strip()):
            raise _custom(
                "each entry must be an environment variable name or a glob of names, like "
                f"AWS_REGION or MY_APP_*, got {pattern!r}"
            )
    return [pattern.strip() for pattern in value]
