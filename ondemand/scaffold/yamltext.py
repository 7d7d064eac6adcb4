"""Where things are in a YAML text: the node tree with positions, and the text around it.

ruamel.yaml's composer gives every node its start and end (line, column, index) in the
source. The helpers here turn those into what an edit needs: the last line of a value, the
comments above a key, the text after a colon, a block of lines shifted to another column.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator, Mapping

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ondemand.errors import ConfigError

__all__ = [
    "Text",
    "after_colon",
    "as_plain",
    "content_end",
    "entries",
    "entry_last_line",
    "inline",
    "is_alias",
    "is_empty",
    "key_text",
    "last_line",
    "leading_start",
    "on_key_line",
    "owns_line",
    "parse",
    "plain",
    "reindent",
    "shift",
]


def parse(text: str, display: str) -> Node | None:
    """The node tree of ``text``; a syntax error is a ``ConfigError`` naming file and line."""
    try:
        node: Node | None = YAML(typ="rt").compose(text)
    except YAMLError as exc:
        where, what = display, "cannot parse"
        if isinstance(exc, MarkedYAMLError):
            mark = exc.problem_mark or exc.context_mark
            if mark is not None:
                where = f"{display}:{int(mark.line) + 1}"
            what = str(exc.problem or exc.context or what)
        # Built from the parts, not str(exc), which quotes the source line.
        raise ConfigError(
            f"{where}: invalid YAML: {what}",
            hint=f"fix {display} and run `ondemand init` again; no file was changed",
        ) from None
    return node


class Text:
    """A text, its lines and where they start."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lines = text.split("\n")
        self._starts = [0]
        for line in self.lines[:-1]:
            self._starts.append(self._starts[-1] + len(line) + 1)

    def line_start(self, line: int) -> int:
        return self._starts[min(line, len(self._starts) - 1)] if line >= 0 else 0

    def line_end(self, line: int) -> int:
        """Where ``line``'s text ends, before its line break."""
        return self.line_start(line) + len(self.lines[line])

    def line_of(self, index: int) -> int:
        return bisect.bisect_right(self._starts, index) - 1


def is_empty(node: Node) -> bool:
    """``key:`` with nothing after it: its node starts wherever the next token is."""
    return isinstance(node, ScalarNode) and node.value == "" and node.style is None


def is_alias(key: Node, value: Node) -> bool:
    """``key: *alias``: the value is the anchored node, which is found earlier in the text."""
    return bool(value.start_mark.index < key.start_mark.index)


def on_key_line(key: Node, value: Node) -> bool:
    """``key:`` alone, or ``key: *alias``: nothing of the value is on later lines."""
    return is_empty(value) or is_alias(key, value)


def entry_last_line(key: Node, value: Node, src: Text) -> int:
    return int(key.start_mark.line) if on_key_line(key, value) else last_line(value, src)


def last_line(node: Node, src: Text) -> int:
    """The last line holding text of ``node`` (not a trailing comment or blank line)."""
    if isinstance(node, MappingNode | SequenceNode) and node.value and not node.flow_style:
        last = node.value[-1]
        if isinstance(last, tuple):
            key, value = last
            return entry_last_line(key, value, src)
        return last_line(last, src)
    end = node.end_mark
    line = int(end.line) if end.column else int(end.line) - 1
    keeps_blanks = isinstance(node, ScalarNode) and re.match(
        r"[|>][0-9]*\+", src.text[node.start_mark.index : node.start_mark.index + 3]
    )
    while not keeps_blanks and line > node.start_mark.line and not src.lines[line].strip():
        line -= 1
    return line


def content_end(node: Node, src: Text) -> int:
    """The index just after the last character of ``node``'s own text."""
    if isinstance(node, ScalarNode) and node.style not in ("|", ">"):
        return int(node.end_mark.index)
    if isinstance(node, MappingNode | SequenceNode) and node.flow_style:
        return int(node.end_mark.index)
    if isinstance(node, MappingNode | SequenceNode) and node.value:
        last = node.value[-1]
        if isinstance(last, tuple):
            key, value = last
            if on_key_line(key, value):
                return src.line_end(int(key.start_mark.line))
            return content_end(value, src)
        return content_end(last, src)
    return src.line_end(last_line(node, src))


def leading_start(line: int, src: Text, *, blank: bool) -> int:
    """The first line of the comment lines (and with ``blank`` one blank line) above ``line``."""
    lines = src.lines
    while line > 0 and lines[line - 1].strip().startswith("#"):
        line -= 1
    if blank and line > 0 and not lines[line - 1].strip():
        line -= 1
    return line


def plain(node: Node) -> object:
    """A node as a comparable value: scalars as (tag, text), so 1 differs from "1"."""
    if isinstance(node, MappingNode):
        return {repr(plain(k)): plain(v) for k, v in node.value}
    if isinstance(node, SequenceNode):
        return [plain(item) for item in node.value]
    return (str(node.tag).rsplit(":", 1)[-1], str(node.value))


def as_plain(value: object) -> object:
    """A Python value as ``plain`` gives it, for comparing with ``Superseded.value``."""
    if isinstance(value, Mapping):
        return {repr(as_plain(k)): as_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_plain(item) for item in value]
    if value is None:
        return ("null", "")
    if isinstance(value, bool):
        return ("bool", "true" if value else "false")
    if isinstance(value, int):
        return ("int", str(value))
    if isinstance(value, float):
        return ("float", repr(value))
    return ("str", str(value))


def key_text(node: Node) -> str | None:
    return str(node.value) if isinstance(node, ScalarNode) else None


def entries(mapping: MappingNode) -> Iterator[tuple[str, Node, Node, bool]]:
    """``(key, key node, value node, merged)``; keys from ``<<: *anchor`` have merged=True."""
    for key_node, value_node in mapping.value:
        key = key_text(key_node)
        if key is None:
            continue
        if str(key_node.tag).endswith(":merge"):
            sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
            for source in sources:
                if isinstance(source, MappingNode):
                    for name, k, v, _ in entries(source):
                        yield name, k, v, True
            continue
        yield key, key_node, value_node, False


def inline(key: Node, value: Node) -> bool:
    """The value starts on the key's line (a scalar, ``[...]``, ``|``), or is empty."""
    return on_key_line(key, value) or value.start_mark.line == key.start_mark.line


def after_colon(key: Node, src: Text) -> int:
    """Just after the ``:`` that follows ``key``."""
    index = int(key.end_mark.index)
    while index < len(src.text) and src.text[index] in " \t":
        index += 1
    return index + 1 if src.text[index : index + 1] == ":" else index


def owns_line(node: Node, src: Text) -> bool:
    """Nothing but spaces before ``node`` on its line (not ``- key``, not ``{key``)."""
    line = src.lines[int(node.start_mark.line)]
    return not line[: int(node.start_mark.column)].strip()


def reindent(text: str, delta: int) -> str:
    """Shift every line but the first (which continues a line already placed) by ``delta``."""
    first, newline, rest = text.partition("\n")
    return first + newline + shift(rest, delta) if newline else first


def shift(text: str, delta: int) -> str:
    if delta == 0:
        return text
    out = []
    for line in text.split("\n"):
        if not line.strip():
            out.append(line)
        elif delta > 0:
            out.append(" " * delta + line)
        else:
            spaces = len(line) - len(line.lstrip(" "))
            out.append(line[min(spaces, -delta) :])
    return "\n".join(out)
