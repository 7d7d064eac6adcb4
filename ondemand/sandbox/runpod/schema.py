"""Checks of request bodies against the REST v2 schemas.

Shape errors (an unknown field, a wrong type, a value out of the schema's bounds, a missing
required field) are 422, as the platform's schema validator answers; every request object
has ``additionalProperties: false``. Rule errors the handlers check (an unknown GPU pool, a
data center without network volumes) are 400, raised where those rules live.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from ondemand.sandbox.runpod.problems import Invalid

JSON = dict[str, Any]


def obj(
    value: object, where: str, allowed: Collection[str], required: Collection[str] = ()
) -> JSON:
    if not isinstance(value, dict):
        raise Invalid(where, f"expected an object, got {_kind(value)}")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        names = ", ".join(f"'{name}'" for name in unknown)
        raise Invalid(where, f"additional properties {names} not allowed")
    missing = [name for name in required if name not in value]
    if missing:
        names = ", ".join(f"'{name}'" for name in missing)
        raise Invalid(where, f"missing properties {names}")
    return value


def text(value: object, where: str, min_length: int = 0) -> str:
    if not isinstance(value, str):
        raise Invalid(where, f"expected a string, got {_kind(value)}")
    if len(value) < min_length:
        raise Invalid(where, f"length must be >= {min_length}")
    return value


def optional_text(value: object, where: str) -> str | None:
    return None if value is None else text(value, where)


def integer(
    value: object, where: str, minimum: int | None = None, maximum: int | None = None
) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise Invalid(where, f"expected an integer, got {_kind(value)}")
    number = int(value)
    _bounds(number, where, minimum, maximum)
    return number


def number(value: object, where: str, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid(where, f"expected a number, got {_kind(value)}")
    _bounds(value, where, minimum, None)
    return float(value)


def boolean(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise Invalid(where, f"expected a boolean, got {_kind(value)}")
    return value


def enum(value: object, where: str, choices: Collection[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        listed = ", ".join(repr(choice) for choice in choices)
        raise Invalid(where, f"value must be one of {listed}, got {value!r}")
    return value


def strings(
    value: object, where: str, min_items: int = 0, max_items: int | None = None
) -> list[str]:
    if not isinstance(value, list):
        raise Invalid(where, f"expected an array, got {_kind(value)}")
    if len(value) < min_items:
        raise Invalid(where, f"must have at least {min_items} item(s)")
    if max_items is not None and len(value) > max_items:
        raise Invalid(where, f"must have at most {max_items} item(s)")
    return [text(item, f"{where}[{index}]") for index, item in enumerate(value)]


def string_map(value: object, where: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise Invalid(where, f"expected an object, got {_kind(value)}")
    return {str(key): text(item, f"{where}.{key}") for key, item in value.items()}


def _bounds(value: float, where: str, minimum: float | None, maximum: float | None) -> None:
    if minimum is not None and value < minimum:
        raise Invalid(where, f"must be >= {_plain(minimum)}, got {_plain(value)}")
    if maximum is not None and value > maximum:
        raise Invalid(where, f"must be <= {_plain(maximum)}, got {_plain(value)}")


def _plain(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
