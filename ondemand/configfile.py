"""Finding ``ondemand.yml`` and reading it into a layer, with the line of each value and problem."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Final

from pydantic import BaseModel
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ondemand.errors import ConfigError

__all__ = [
    "CONFIG_ENV",
    "CONFIG_FILENAME",
    "SECRET_IN_FILE",
    "FieldPath",
    "FileSchema",
    "Layer",
    "find_file",
    "read_file",
    "section_model",
    "show",
]

CONFIG_FILENAME: Final = "ondemand.yml"
CONFIG_ENV: Final = "ONDEMAND_CONFIG"

# --------------------------------------------------------------------------------------
# Layers, and what the file is checked against

FieldPath = tuple[str, ...]


def section_model(annotation: object) -> type[BaseModel] | None:
    """The model of a nested section (``ovh``, ``runpod``); ``None`` for a setting."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


@dataclasses.dataclass
class Layer:
    """One source of values: what it sets, and how to name each value in messages."""

    values: dict[FieldPath, object] = dataclasses.field(default_factory=dict)
    # Field path -> "ondemand.yml:3" / "env ONDEMAND_TIMEOUT" / "flag --timeout".
    sources: dict[FieldPath, str] = dataclasses.field(default_factory=dict)
    # (Field path | list item path) -> the prefix of an error about that value.
    labels: dict[tuple[str | int, ...], str] = dataclasses.field(default_factory=dict)

    def set(self, path: FieldPath, value: object, *, source: str, label: str) -> None:
        self.values[path] = value
        self.sources[path] = source
        self.labels[path] = label


def show(value: object) -> str:
    """A value as messages quote it: its ``repr``, cut to 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclasses.dataclass(frozen=True, kw_only=True)
class FileSchema:
    """What the file is checked against, built by ``ondemand.config`` from its models."""

    model: type[BaseModel]
    """The model whose fields are the file's keys: ``Config``."""
    paths: tuple[FieldPath, ...]
    """Every setting's path, to suggest where a misplaced key belongs."""
    secrets: type[BaseModel]
    """The model of the secrets, which the file must not hold."""
    secret_env: Mapping[str, tuple[str, ...]]
    """Each secret's environment variables, to say where it goes instead."""


# --------------------------------------------------------------------------------------
# The file


_SECRET_WORDS: Final = ("token", "password", "passwd", "secret", "apikey", "api_key", "credential")


SECRET_IN_FILE: Final = "secrets are never read from the file"


def _looks_secret(key: str, schema: FileSchema) -> bool:
    norm = key.lower().replace("-", "_")
    return (
        norm in schema.secrets.model_fields
        or norm == "key"
        or norm.endswith("_key")
        or any(word in norm for word in _SECRET_WORDS)
    )


def _secret_problem(where: str, path: FieldPath, schema: FileSchema) -> str:
    dotted = ".".join(path)
    joined = "_".join(path).lower().replace("-", "_")
    leaf = path[-1].lower().replace("-", "_")
    known = schema.secret_env.get(joined) or schema.secret_env.get(leaf)
    instead = (
        f"set {known[0]} in the environment" if known else "pass it in an environment variable"
    )
    return (
        f"{where}: {dotted}: {SECRET_IN_FILE}; remove it and {instead} "
        "(in a workflow, from a GitHub secret)"
    )


def _suggest(key: str, model: type[BaseModel], prefix: FieldPath, schema: FileSchema) -> str | None:
    fields = list(model.model_fields)
    norm = key.lower().replace("-", "_")
    if norm in fields:
        return ".".join((*prefix, norm))
    close = difflib.get_close_matches(norm, fields, n=1, cutoff=0.6)
    if close:
        return ".".join((*prefix, close[0]))
    # A known key placed under the wrong section.
    for path in schema.paths:
        if path[-1] == norm:
            return ".".join(path)
    return None


def _position(mapping: CommentedMap, key: object, index: int) -> int:
    """1-based line of a key (index 0) or its value (index 2).

    Keys brought in by a YAML merge (``<<: *anchor``) have no position in the mapping that
    uses them; they are reported at the line of the anchored mapping that defines them.
    """
    data = mapping.lc.data or {}  # None for some flow-style mappings
    if key in data:
        return int(data[key][index]) + 1
    for entry in getattr(mapping, "merge", ()):
        # ruamel lists merge sources as (position, mapping) pairs in older releases and as
        # the mappings themselves in newer ones.
        source = entry[1] if isinstance(entry, tuple) else entry
        if isinstance(source, CommentedMap) and key in source:
            return _position(source, key, index)
    return int(mapping.lc.line) + 1


def _line(mapping: CommentedMap, key: object) -> int:
    return _position(mapping, key, 0)


def _plain(value: object) -> object:
    """ruamel's round-trip types -> plain Python, so validation sees ordinary values."""
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return value


def _walk_mapping(
    mapping: CommentedMap,
    model: type[BaseModel],
    prefix: FieldPath,
    display: str,
    layer: Layer,
    problems: list[str],
    schema: FileSchema,
) -> None:
    for key, value in mapping.items():
        where = f"{display}:{_line(mapping, key)}"
        if not isinstance(key, str):
            problems.append(f"{where}: keys must be text, got {show(_plain(key))}")
            continue
        path = (*prefix, key)
        dotted = ".".join(path)
        info = model.model_fields.get(key)
        if info is None:
            if _looks_secret(key, schema):
                problems.append(_secret_problem(where, path, schema))
                continue
            suggestion = _suggest(key, model, prefix, schema)
            hint = f" — did you mean '{suggestion}'?" if suggestion else ""
            problems.append(f"{where}: unknown key '{dotted}'{hint}")
            continue
        if value is None:  # `key:` with nothing after it means "not set", as an empty env var
            continue
        section = section_model(info.annotation)
        if section is not None and isinstance(value, CommentedMap):
            _walk_mapping(value, section, path, display, layer, problems, schema)
            continue
        value_line = _position(mapping, key, 2)
        layer.set(path, _plain(value), source=where, label=f"{display}:{value_line}: {dotted}")
        if isinstance(value, CommentedSeq):
            for index in range(len(value)):
                item_line = int(value.lc.item(index)[0]) + 1
                layer.labels[(*path, index)] = f"{display}:{item_line}: {dotted}[{index}]"


def _duplicates(node: Node | None, display: str, prefix: FieldPath = ()) -> Iterator[str]:
    """Duplicate keys, found on the node tree: the loaded mapping has already lost them."""
    if isinstance(node, MappingNode):
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, ScalarNode) else None
            if key is not None and key != "<<":
                line = int(key_node.start_mark.line) + 1
                if key in first:
                    dotted = ".".join((*prefix, key))
                    yield (
                        f"{display}:{line}: duplicate key '{dotted}' "
                        f"(first set on line {first[key]})"
                    )
                else:
                    first[key] = line
            yield from _duplicates(value_node, display, (*prefix, key or "?"))
    elif isinstance(node, SequenceNode):
        for item in node.value:
            yield from _duplicates(item, display, prefix)


def _yaml_problem(exc: YAMLError, display: str) -> str:
    # Built from the parts, not str(exc): that quotes the offending source line, which may
    # hold a secret, and adds ruamel's advice for its own API.
    if not isinstance(exc, MarkedYAMLError):
        return f"{display}: invalid YAML: {type(exc).__name__}"
    mark = exc.problem_mark or exc.context_mark
    where = f"{display}:{int(mark.line) + 1}" if mark is not None else display
    text = f"{where}: invalid YAML: {exc.problem or exc.context or 'cannot parse'}"
    if exc.problem and exc.context and exc.context_mark is not None:
        text += f" ({exc.context} that starts on line {int(exc.context_mark.line) + 1})"
    return text


def read_file(
    path: Path, display: str, origin: str, layer: Layer, problems: list[str], schema: FileSchema
) -> None:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(
            f"config file not found: {display}",
            cause=f"{origin} names a file that does not exist",
            hint=f"check the path, or drop {origin} to use ./{CONFIG_FILENAME} when present",
        ) from None
    except IsADirectoryError:
        raise ConfigError(
            f"config file is a directory: {display}",
            hint=f"point {origin} at the YAML file itself",
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(
            f"cannot read {display}: not UTF-8 text", hint="save the file as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read {display}: {exc.strerror or exc}",
            hint="check the file's permissions",
        ) from None

    try:
        problems.extend(_duplicates(YAML(typ="rt").compose(text), display))
        loader = YAML(typ="rt")
        # Duplicates are reported above, with both lines; loading anyway lets the other
        # problems be found in the same run.
        loader.allow_duplicate_keys = True
        data = loader.load(text)
    except YAMLError as exc:
        problems.append(_yaml_problem(exc, display))
        return
    if data is None:
        return
    if not isinstance(data, CommentedMap):
        kind = "a list" if isinstance(data, list) else f"{show(_plain(data))}"
        problems.append(
            f"{display}:1: the top level must be a mapping of settings (key: value), got {kind}"
        )
        return
    _walk_mapping(data, schema.model, (), display, layer, problems, schema)


def find_file(
    path: Path | None, env: Mapping[str, str], cwd: Path
) -> tuple[Path, str, str | None] | None:
    """The file to read, its name for messages, and who named it (None: found in cwd)."""
    if path is not None:
        return cwd / path, str(path), "--config"
    named = env.get(CONFIG_ENV, "").strip()
    if named:
        return cwd / named, named, CONFIG_ENV
    default = cwd / CONFIG_FILENAME
    if default.is_file():
        return default, CONFIG_FILENAME, None
    return None
