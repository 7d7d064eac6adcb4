"""Request bodies decoded the way Ollama's Go handlers decode them, with the same error texts.

Go's ``json.Decoder`` reads one value and ignores what follows it, matches field names
case-insensitively, leaves unknown fields alone, and reports the first syntax or type error
with a message clients and proxies see verbatim in a 400 body.
"""

from __future__ import annotations

import json
from typing import Any

from ondemand.sandbox.ollama.durations import DurationError, keep_alive_from_json

_WS = b" \t\r\n"
_GO_ESCAPES = {7: "\\a", 8: "\\b", 9: "\\t", 10: "\\n", 11: "\\v", 12: "\\f", 13: "\\r", 92: "\\\\"}
_GO_TYPES = {
    "float": "float64",
    "map": "map[string]interface {}",
    "messages": "api.Message",
}
_INT_OPTIONS = frozenset(
    {"num_keep", "seed", "num_predict", "top_k", "repeat_last_n", "num_ctx", "num_batch"}
    | {"num_gpu", "main_gpu", "num_thread", "draft_num_predict"}
)
_FLOAT_OPTIONS = frozenset(
    {"top_p", "min_p", "typical_p", "temperature", "repeat_penalty", "presence_penalty"}
    | {"frequency_penalty"}
)
_THINK_LEVELS = ("high", "medium", "low", "max")


class RequestError(Exception):
    """A request the handler rejects before doing any work; ``str()`` is the client message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Syntax(Exception):
    pass


def _quote_char(c: int) -> str:
    if c == 0x27:
        return "'\\''"
    if c == 0x22:
        return "'\"'"
    if c in _GO_ESCAPES:
        return f"'{_GO_ESCAPES[c]}'"
    ch = chr(c)
    if ch.isprintable():
        return f"'{ch}'"
    return f"'\\x{c:02x}'" if c < 0x80 else f"'\\u{c:04x}'"


class _Scanner:
    """Go's encoding/json scanner, reduced to finding the first error in the first value."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.i = 0

    def fail(self, context: str) -> _Syntax:
        return _Syntax(f"invalid character {_quote_char(self.data[self.i])} {context}")

    def peek(self) -> int:
        if self.i >= len(self.data):
            raise _Syntax("unexpected EOF")
        return self.data[self.i]

    def skip_ws(self) -> int:
        while self.i < len(self.data) and self.data[self.i] in _WS:
            self.i += 1
        return self.peek()

    def value(self) -> None:
        c = self.skip_ws()
        if c == 0x7B:
            self.i += 1
            if self.skip_ws() == 0x7D:
                self.i += 1
                return
            while True:
                if self.skip_ws() != 0x22:
                    raise self.fail("looking for beginning of object key string")
                self.string()
                if self.skip_ws() != 0x3A:
                    raise self.fail("after object key")
                self.i += 1
                self.value()
                c = self.skip_ws()
                self.i += 1
                if c == 0x7D:
                    return
                if c != 0x2C:
                    self.i -= 1
                    raise self.fail("after object key:value pair")
        elif c == 0x5B:
            self.i += 1
            if self.skip_ws() == 0x5D:
                self.i += 1
                return
            while True:
                self.value()
                c = self.skip_ws()
                self.i += 1
                if c == 0x5D:
                    return
                if c != 0x2C:
                    self.i -= 1
                    raise self.fail("after array element")
        elif c == 0x22:
            self.string()
        elif c == 0x2D or 0x30 <= c <= 0x39:
            self.number()
        elif c in b"tfn":
            word = {0x74: b"true", 0x66: b"false", 0x6E: b"null"}[c]
            for expected in word[1:]:
                self.i += 1
                if self.peek() != expected:
                    expecting = _quote_char(expected)
                    raise self.fail(f"in literal {word.decode()} (expecting {expecting})")
            self.i += 1
        else:
            raise self.fail("looking for beginning of value")

    def string(self) -> None:
        self.i += 1
        while True:
            c = self.peek()
            self.i += 1
            if c == 0x22:
                return
            if c == 0x5C:
                e = self.peek()
                if e == 0x75:
                    for _ in range(4):
                        self.i += 1
                        if self.peek() not in b"0123456789abcdefABCDEF":
                            raise self.fail("in \\u hexadecimal character escape")
                elif e not in b'"\\/bfnrt':
                    raise self.fail("in string escape code")
                self.i += 1
            elif c < 0x20:
                self.i -= 1
                raise self.fail("in string literal")

    def digits(self) -> None:
        while self.i < len(self.data) and 0x30 <= self.data[self.i] <= 0x39:
            self.i += 1

    def number(self) -> None:
        if self.data[self.i] == 0x2D:
            self.i += 1
            if not 0x30 <= self.peek() <= 0x39:
                raise self.fail("in numeric literal")
        if self.data[self.i] == 0x30:
            self.i += 1
        else:
            self.digits()
        if self.i < len(self.data) and self.data[self.i] == 0x2E:
            self.i += 1
            if not 0x30 <= self.peek() <= 0x39:
                raise self.fail("after decimal point in numeric literal")
            self.digits()
        if self.i < len(self.data) and self.data[self.i] in b"eE":
            self.i += 1
            if self.peek() in b"+-":
                self.i += 1
            if not 0x30 <= self.peek() <= 0x39:
                raise self.fail("in exponent of numeric literal")
            self.digits()


def parse_first_value(body: bytes) -> object:
    """The first JSON value of ``body``; RequestError(400) with Go's text when it is not JSON."""
    start = 0
    while start < len(body) and body[start] in _WS:
        start += 1
    if start == len(body):
        raise RequestError(400, "missing request body")
    text = body.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError:
        pass
    scanner = _Scanner(body)
    try:
        scanner.value()
    except _Syntax as exc:
        raise RequestError(400, str(exc)) from None
    value, _ = json.JSONDecoder().raw_decode(body[start : scanner.i].decode("utf-8", "replace"))
    return value


def _json_kind(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _type_error(struct: str, field: str, value: object, kind: str) -> RequestError:
    shown = _json_kind(value)
    if shown == "number" and kind == "int":
        shown = f"number {json.dumps(value)}"
    go_type = _GO_TYPES.get(kind, kind)
    where = f"Go struct field {struct}.{field} of type {go_type}"
    return RequestError(400, f"json: cannot unmarshal {shown} into {where}")


def _check(struct: str, field: str, value: object, kind: str) -> None:
    if value is None or kind == "any":
        return
    ok: bool
    if kind == "string":
        ok = isinstance(value, str)
    elif kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "float":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif kind == "map":
        ok = isinstance(value, dict)
    elif kind in ("[]int", "[]string"):
        if not isinstance(value, list):
            raise _type_error(struct, field, value, kind)
        for item in value:
            _check(struct, field, item, kind[2:])
        return
    elif kind == "messages":
        if not isinstance(value, list):
            raise _type_error(struct, field, value, "[]api.Message")
        for item in value:
            if not isinstance(item, dict) and item is not None:
                raise _type_error(struct, field, item, kind)
            for key in ("role", "content", "thinking", "tool_name"):
                if isinstance(item, dict):
                    _check(struct, f"{field}.{key}", item.get(key), "string")
        return
    else:
        ok = True
    if not ok:
        raise _type_error(struct, field, value, kind)


def decode(body: bytes, struct: str, fields: dict[str, str]) -> dict[str, Any]:
    """Decode a request into ``{field: value}`` for the known ``fields`` (name → kind).

    Kinds: string, bool, int, float, map, any, []int, []string, messages, duration, think.
    A ``duration`` field comes back as nanoseconds (negative = forever) or None.
    """
    value = parse_first_value(body)
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise RequestError(
            400, f"json: cannot unmarshal {_json_kind(value)} into Go value of type api.{struct}"
        )
    folded = {name.lower(): name for name in fields}
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = key if key in fields else folded.get(key.lower())
        if name is None:
            continue
        kind = fields[name]
        if kind == "duration":
            try:
                out[name] = keep_alive_from_json(item)
            except DurationError as exc:
                raise RequestError(400, str(exc)) from None
            continue
        if kind == "think":
            if item is not None and not isinstance(item, bool) and item not in _THINK_LEVELS:
                raise RequestError(
                    400,
                    f"invalid think value: {json.dumps(item)} "
                    '(must be "high", "medium", "low", true, or false)',
                )
        else:
            _check(struct, name, item, kind)
        out[name] = item
    return out


def check_options(options: object) -> dict[str, Any]:
    """``api.Options.FromMap``: unknown keys pass, wrongly typed known keys fail."""
    if not isinstance(options, dict):
        return {}
    for key, val in options.items():
        if val is None:
            continue
        if key in _INT_OPTIONS and (isinstance(val, bool) or not isinstance(val, int | float)):
            raise RequestError(500, f'option "{key}" must be of type integer')
        if key in _FLOAT_OPTIONS and (isinstance(val, bool) or not isinstance(val, int | float)):
            raise RequestError(500, f'option "{key}" must be of type float32')
        if key == "use_mmap" and not isinstance(val, bool):
            raise RequestError(500, f'option "{key}" must be of type boolean')
        if key == "stop":
            if not isinstance(val, list):
                raise RequestError(500, f'option "{key}" must be of type array')
            if not all(isinstance(s, str) for s in val):
                raise RequestError(500, f'option "{key}" must be of an array of strings')
    return options


def num_ctx_of(options: dict[str, Any]) -> int | None:
    """``options.num_ctx`` when it is a number; it decides the loaded context length."""
    value = options.get("num_ctx")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    return None
