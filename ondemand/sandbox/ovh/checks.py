"""The building blocks of request checks: each failure is an ``Invalid`` whose text is the
400 ``message``, naming the field and what was wrong with it."""

from __future__ import annotations

import random
import re
from typing import Any


class Invalid(ValueError):
    """A 400: the message says which field and why."""


_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


def obj(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Invalid(f"{where} must be a JSON object")
    return value


def keys(data: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise Invalid(f"unknown field(s) in {where}: {', '.join(unknown)}")


def text(value: object, where: str, *, empty: bool = False) -> str:
    if not isinstance(value, str) or (not empty and not value.strip()):
        raise Invalid(f"{where} must be a {'' if empty else 'non-empty '}string")
    return value


def whole(value: object, where: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(f"{where} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise Invalid(f"{where} must be {bounds}, got {value}")
    return value


def boolean(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"{where} must be true or false")
    return value


def without_nulls(data: dict[str, Any]) -> dict[str, Any]:
    """Fields sent as null are absent (generated clients send None for unset options)."""
    return {k: v for k, v in data.items() if v is not None}


def generated_name() -> str:
    words = ("funny", "brave", "calm", "eager", "gentle", "jolly", "lucky", "quiet")
    things = ("ubuntu", "panda", "comet", "falcon", "maple", "otter", "pixel", "tundra")
    return f"{random.choice(words)}-{random.choice(things)}"


def env_vars(value: object, where: str, *, patch: bool = False) -> list[dict[str, str | None]]:
    if not isinstance(value, list):
        raise Invalid(f"{where} must be a list of {{name, value}} objects")
    out: list[dict[str, str | None]] = []
    for index, item in enumerate(value):
        entry = obj(item, f"{where}[{index}]")
        keys(entry, {"name", "value"}, f"{where}[{index}]")
        name = text(entry.get("name"), f"{where}[{index}].name")
        if not _ENV_NAME.match(name):
            raise Invalid(f"{where}[{index}].name {name!r} is not a valid variable name")
        raw = entry.get("value")
        if raw is not None and not isinstance(raw, str):
            raise Invalid(f"{where}[{index}].value must be a string, got {raw!r}")
        out.append({"name": name, "value": raw if patch else (raw or "")})
    return out


def labels(value: object, where: str = "labels") -> dict[str, str]:
    data = obj(value, where)
    for key, label in data.items():
        label_key(key, where)
        label_value(label, f"{where}[{key!r}]")
    return dict(data)


def label_key(key: object, where: str) -> str:
    if not isinstance(key, str) or len(key.rpartition("/")[2]) > 63 or not _LABEL_KEY.match(key):
        raise Invalid(
            f"{where}: {key!r} is not a valid label name (letters, digits, '-', '_', "
            "'.', at most 63 characters, optionally prefixed by 'domain/')"
        )
    return key


def label_value(value: object, where: str) -> str:
    if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
        raise Invalid(
            f"{where}: {value!r} is not a valid label value (letters, digits, '-', "
            "'_', '.', at most 63 characters)"
        )
    return value


def command(value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise Invalid("command must be a list of strings")
    return list(value)
