"""Merge a template into a YAML file its user may have edited, as a few text insertions.

ruamel.yaml parses both texts into node trees that know where every key and value starts
and ends (``ondemand.scaffold.yamltext``); the merge walks them side by side and records
edits: a block of template lines inserted where a key or step is missing, or one value's
text replaced. Everything else in the file, comments, blank lines, quoting, indentation, is
left byte for byte (a dump of the loaded document would re-indent the whole file to one
style). The rules are the module docstring of ``ondemand.scaffold``.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterator, Mapping
from typing import Final

from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ondemand.errors import ConfigError, OndemandError
from ondemand.scaffold.templates import Place, Superseded
from ondemand.scaffold.yamltext import (
    Text,
    after_colon,
    as_plain,
    content_end,
    entries,
    entry_last_line,
    inline,
    is_alias,
    is_empty,
    key_text,
    last_line,
    leading_start,
    owns_line,
    parse,
    plain,
    reindent,
    shift,
)

__all__ = ["Merged", "merge"]

_OUR_ACTION: Final = "ollama-ondemand/ollama-ondemand"
_COMMENT: Final = re.compile(r"(^|\s)#")


def _step_ids(step: Node) -> list[str]:
    """How a step is recognised, strongest first: its id, its name, the action it uses."""
    if not isinstance(step, MappingNode):
        return []
    fields = {name: value for name, _, value, _ in entries(step)}
    ids = [f"{key}:{fields[key].value}" for key in ("id", "name")
           if isinstance(fields.get(key), ScalarNode)]  # fmt: skip
    uses = fields.get("uses")
    if isinstance(uses, ScalarNode):
        action = str(uses.value).split("@", 1)[0]
        with_ = fields.get("with")
        if action == _OUR_ACTION and isinstance(with_, MappingNode):
            command = {n: v for n, _, v, _ in entries(with_)}.get("command")
            if isinstance(command, ScalarNode):
                action += "#" + str(command.value)
        ids.append("uses:" + action)
    return ids


def _our_steps(job: Node) -> set[str]:
    """The steps of a job that run our action, as ``_step_ids`` names them."""
    if not isinstance(job, MappingNode):
        return set()
    steps = {name: value for name, _, value, _ in entries(job)}.get("steps")
    if not isinstance(steps, SequenceNode):
        return set()
    return {
        ident
        for step in steps.value
        for ident in _step_ids(step)
        if ident.startswith("uses:" + _OUR_ACTION)
    }


@dataclasses.dataclass
class _Merge:
    user: Text
    template: Text
    superseded: Mapping[Place, tuple[Superseded, ...]]
    display: str
    edits: list[tuple[int, int, int, str]] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    seen: set[int] = dataclasses.field(default_factory=set)

    # -- edits -------------------------------------------------------------------------

    def edit(self, start: int, end: int, text: str) -> None:
        self.edits.append((start, end, len(self.edits), text))

    def result(self) -> str:
        out, at = [], 0
        for start, end, _, text in sorted(self.edits):
            out.append(self.user.text[at:start])
            out.append(text)
            at = max(at, end)
        out.append(self.user.text[at:])
        return "".join(out)

    def note(self, place: Place, message: str) -> None:
        self.notes.append(f"{self.display}: {'.'.join(place)}: {message}")

    def insert_lines(self, at_line: int, block: str) -> None:
        """Insert whole lines before user line ``at_line`` (past the end: append)."""
        past_end = at_line >= len(self.user.lines)
        at = len(self.user.text) if past_end else self.user.line_start(at_line)
        self.edit(at, at, block + "\n")

    def template_block(self, first: int, last: int, delta: int) -> str:
        """Template lines ``first``..``last`` with their comments above, shifted by ``delta``."""
        start = leading_start(first, self.template, blank=True)
        return shift("\n".join(self.template.lines[start : last + 1]), delta)

    def template_entry(self, key: Node, value: Node, delta: int) -> str:
        """A template key and its value as lines to insert, shifted by ``delta``."""
        first, last = int(key.start_mark.line), entry_last_line(key, value, self.template)
        if owns_line(key, self.template):
            return self.template_block(first, last, delta)
        # The first key of a list item (``- name: x``): its line without the dash; the
        # comments above belong to the item.
        lines = self.template.lines[first : last + 1]
        lines[0] = " " * int(key.start_mark.column) + lines[0][int(key.start_mark.column) :]
        return shift("\n".join(lines), delta)

    # -- mappings ----------------------------------------------------------------------

    def mapping(self, user: MappingNode, template: MappingNode, place: Place) -> None:
        if id(user) in self.seen:  # an alias of a mapping merged already
            return
        self.seen.add(id(user))
        present: dict[str, tuple[Node, Node, bool]] = {}
        for own, k, v, merged in entries(user):
            if own not in present or (present[own][2] and not merged):
                present[own] = (k, v, merged)
        claimed: set[str] = set()
        # Each missing template key goes after the user's entry of the template key before
        # it; with none, before the entry of the one after it; else at the end.
        anchors: list[tuple[str, Node, Node] | None] = []
        missing: list[tuple[int, str, Node, Node]] = []
        for key_node, value_node in template.value:
            name = key_text(key_node)
            if name is None:
                continue
            found = present.get(name)
            if found is None and place == ("jobs",):
                found = self.renamed_job(value_node, present, {*_template_keys(template), *claimed})
            if found is None:
                missing.append((len(anchors), name, key_node, value_node))
                anchors.append(None)
                continue
            user_key, user_value, merged = found
            claimed.add(key_text(user_key) or name)
            # A key merged in from an anchor sits elsewhere in the text: no place to insert at.
            anchors.append(None if merged else (name, user_key, user_value))
            # Keys merged in with ``<<: *anchor`` and ``key: *alias`` values are shared
            # with other places: left alone.
            if not merged and not is_alias(user_key, user_value):
                self.value(user_key, user_value, key_node, value_node, (*place, name))
        if not missing:
            return
        if user.flow_style:
            names = ", ".join(name for _, name, _, _ in missing)
            self.note(place, f"not added: {names} (add them by hand: the mapping is {{...}})")
            return
        column = int(user.value[0][0].start_mark.column)
        for index, _name, key_node, value_node in missing:
            delta = column - int(key_node.start_mark.column)
            block = self.template_entry(key_node, value_node, delta)
            before = next((a for a in reversed(anchors[:index]) if a is not None), None)
            after = next((a for a in anchors[index + 1 :] if a is not None), None)
            if before is None and after is not None and not owns_line(after[1], self.user):
                before = after  # nothing can go above the first key of a list item
            if before is not None:
                self.insert_lines(entry_last_line(before[1], before[2], self.user) + 1, block)
            elif after is not None:
                first = leading_start(int(after[1].start_mark.line), self.user, blank=False)
                self.insert_lines(first, block if first else block.lstrip("\n"))
            else:
                last_key, last_value = user.value[-1]
                self.insert_lines(entry_last_line(last_key, last_value, self.user) + 1, block)

    def renamed_job(
        self, template_job: Node, present: Mapping[str, tuple[Node, Node, bool]],
        template_names: set[str],
    ) -> tuple[Node, Node, bool] | None:  # fmt: skip
        """A user job that is the template's under another name: it runs the same steps of
        our action (``up``, ``down``...)."""
        ours = _our_steps(template_job)
        for name, found in present.items():
            if name not in template_names and ours & _our_steps(found[1]):
                return found
        return None

    # -- values ------------------------------------------------------------------------

    def value(self, user_key: Node, user: Node, t_key: Node, template: Node, place: Place) -> None:
        if isinstance(user, MappingNode) and isinstance(template, MappingNode):
            self.mapping(user, template, place)
            return
        steps = len(place) == 3 and place[0] == "jobs" and place[2] == "steps"
        if steps and isinstance(user, SequenceNode) and isinstance(template, SequenceNode):
            self.steps(user, template, place)
            return
        current = plain(user)
        if current == plain(template):
            return
        for old in self.superseded.get(place, ()):
            if current == as_plain(old.value):
                self.replace(user_key, user, t_key, template, old, place)
                return
        # Any other value is the user's: kept.

    def replace(
        self, user_key: Node, user: Node, t_key: Node, template: Node, old: Superseded,
        place: Place,
    ) -> None:  # fmt: skip
        """Put the template's value in place of an old template value the user kept."""
        delta = int(user_key.start_mark.column) - int(t_key.start_mark.column)
        u_empty, t_empty = is_empty(user), is_empty(template)
        if inline(user_key, user) and inline(t_key, template) and not t_empty:
            # From the value to its end, and the old comment if the line still has it.
            start = after_colon(user_key, self.user) if u_empty else int(user.start_mark.index)
            end = start if u_empty else content_end(user, self.user)
            t_start, t_end = int(template.start_mark.index), content_end(template, self.template)
            line_end = self.user.line_end(self.user.line_of(end))
            rest = self.user.text[end:line_end].strip()
            if old.comment is not None and rest == old.comment.strip():
                end = line_end
                t_end = self.template.line_end(self.template.line_of(t_end))
            text = reindent(self.template.text[t_start:t_end], delta)
            self.edit(start, end, (" " if u_empty else "") + text)
            return
        # The layout changes (a value on the key's line, or below it): everything after the
        # colon, to the end of the value's last line.
        start = after_colon(user_key, self.user)
        end = self.user.line_end(entry_last_line(user_key, user, self.user))
        mine = self.user.text[start:end]
        if old.comment is not None:
            mine = mine.replace(old.comment, "", 1)
        if _COMMENT.search(mine):
            self.note(place, "left as it is: it holds your comments; update it by hand")
            return
        t_start = after_colon(t_key, self.template)
        t_end = self.template.line_end(entry_last_line(t_key, template, self.template))
        self.edit(start, end, reindent(self.template.text[t_start:t_end], delta))

    # -- steps -------------------------------------------------------------------------

    def steps(self, user: SequenceNode, template: SequenceNode, place: Place) -> None:
        matched = _match_steps(user.value, template.value)
        missing = [i for i in range(len(template.value)) if i not in matched]
        for index, step in enumerate(template.value):
            if index in matched:
                mine = user.value[matched[index]]
                if isinstance(mine, MappingNode) and isinstance(step, MappingNode):
                    self.mapping(mine, step, (*place, _step_name(step, index)))
        if not missing:
            return
        if user.flow_style or not user.value:
            self.note(place, "not added: template steps (the list is written [...])")
            return
        dash = int(user.start_mark.column)
        t_dash = int(template.start_mark.column)
        for index in missing:
            step = template.value[index]
            block = self.template_block(
                self.dash_line(step, t_dash, self.template),
                last_line(step, self.template),
                dash - t_dash,
            )
            before = next((matched[i] for i in reversed(range(index)) if i in matched), None)
            after = next((matched[i] for i in range(index + 1, len(template.value))
                          if i in matched), None)  # fmt: skip
            if before is not None:
                self.insert_lines(last_line(user.value[before], self.user) + 1, block)
            elif after is not None:
                line = self.dash_line(user.value[after], dash, self.user)
                self.insert_lines(leading_start(line, self.user, blank=False), block.lstrip("\n"))
            else:
                self.insert_lines(last_line(user.value[-1], self.user) + 1, block)

    @staticmethod
    def dash_line(item: Node, dash: int, src: Text) -> int:
        """The line of the ``-`` that starts ``item`` (``-`` may stand alone above it)."""
        line = int(item.start_mark.line)
        while line > 0 and src.lines[line][dash : dash + 1] != "-":
            line -= 1
        return line


def _template_keys(mapping: MappingNode) -> Iterator[str]:
    for key, _ in mapping.value:
        name = key_text(key)
        if name is not None:
            yield name


def _step_name(step: Node, index: int) -> str:
    for name, _, value, _ in entries(step) if isinstance(step, MappingNode) else ():
        if name == "name" and isinstance(value, ScalarNode):
            return str(value.value)
    return f"#{index}"


def _match_steps(user: list[Node], template: list[Node]) -> dict[int, int]:
    """Template step index -> user step index: by id, then name, then the action used."""
    matched: dict[int, int] = {}
    taken: set[int] = set()
    user_ids = [_step_ids(step) for step in user]
    for kind in ("id:", "name:", "uses:"):
        for t_index, step in enumerate(template):
            if t_index in matched:
                continue
            wanted = [i for i in _step_ids(step) if i.startswith(kind)]
            for u_index, ids in enumerate(user_ids):
                if u_index not in taken and any(i in ids for i in wanted):
                    matched[t_index] = u_index
                    taken.add(u_index)
                    break
    return matched


@functools.lru_cache(maxsize=8)
def _template_tree(template: str, display: str) -> Node | None:
    """Templates are parsed once: their trees are only read."""
    return parse(template, f"the template of {display}")


@dataclasses.dataclass(frozen=True)
class Merged:
    """The merged text, and what could not be merged (for the user to do by hand)."""

    text: str
    notes: list[str]


def merge(
    current: str,
    template: str,
    superseded: Mapping[Place, tuple[Superseded, ...]],
    display: str,
) -> Merged:
    """``current`` with what ``template`` has and it lacks; see ``ondemand.scaffold``."""
    user_root = parse(current, display)
    template_root = _template_tree(template, display)
    if not isinstance(template_root, MappingNode):
        raise OndemandError(f"the template of {display} is not a mapping (a bug in ondemand)")
    if user_root is None:  # only comments, or nothing: the template goes below them
        prefix = current if not current.strip() or current.endswith("\n") else current + "\n"
        return Merged(prefix + template if current.strip() else template, [])
    if not isinstance(user_root, MappingNode):
        raise ConfigError(
            f"{display}:{int(user_root.start_mark.line) + 1}: the top level is not a mapping "
            "(key: value)",
            hint=f"fix or remove {display} and run `ondemand init` again; no file was changed",
        )
    # Lines are inserted whole: a last line needs its line break (added only on a change).
    ended = current if current.endswith("\n") else current + "\n"
    work = _Merge(Text(ended), Text(template), superseded, display)
    work.mapping(user_root, template_root, ())
    text = work.result() if work.edits else current
    if text != current:
        try:
            parse(text, display)
        except ConfigError as exc:  # our edit broke the file: write nothing
            raise OndemandError(
                f"could not update {display} without breaking it: {exc.message}",
                cause="its layout is one this version of `ondemand init` cannot edit",
                hint="this is a bug in ondemand: please report it; the file was not changed",
            ) from None
    return Merged(text, work.notes)
