"""The configuration cascade: defaults < ``ondemand.yml`` < environment < flags.

The pydantic models are the schema and their field defaults are the defaults layer. Each
other layer is read into a flat ``{field path: raw value}`` map that remembers where every
value came from, validated on its own (so a problem is reported against the file line,
variable or flag that caused it, even when a later layer overrides it), then the layers are
merged and validated once more. All problems are collected into one ``ConfigError``.

Secrets never come from the file. The environment is always injected, never read here.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Final, Literal, NoReturn, get_args, get_origin

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    ValidationError,
    WithJsonSchema,
)
from pydantic_core import ErrorDetails, PydanticCustomError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ondemand.errors import ConfigError

__all__ = [
    "CONFIG_ENV",
    "CONFIG_FILENAME",
    "ENV_VARS",
    "PROVIDER_NAMES",
    "Config",
    "Duration",
    "EnvVar",
    "Model",
    "OvhSection",
    "ProviderName",
    "ResolvedConfig",
    "RunpodSection",
    "Secrets",
    "env_name",
    "flag_name",
    "format_duration",
    "load_config",
    "parse_duration",
]

CONFIG_FILENAME: Final = "ondemand.yml"
CONFIG_ENV: Final = "ONDEMAND_CONFIG"
ENV_PREFIX: Final = "ONDEMAND_"
DOCS_HINT: Final = "docs/configuration.md lists every key, its environment variable and its format"

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


def _check_name(value: object) -> object:
    if isinstance(value, str) and not _NAME_RE.fullmatch(value):
        raise _custom(
            "must be lowercase letters, digits and '-', not starting or ending with '-', "
            f"at most 63 characters, got {value!r}"
        )
    return value


_MEMORY_RE: Final = re.compile(r"[1-9][0-9]*(Mi|Gi)")


def _check_memory(value: object) -> object:
    if isinstance(value, str) and not _MEMORY_RE.fullmatch(value):
        raise _custom(f"must be a size in Mi or Gi, like 16Gi or 512Mi, got {value!r}")
    return value


# Ollama passes keep_alive to Go's time.ParseDuration, or takes a number of seconds
# (negative: keep loaded forever), so this is the Go grammar, not ours: no "d" unit.
_GO_DURATION_RE: Final = re.compile(
    r"[-+]?[0-9]+(\.[0-9]+)?|[-+]?(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|ms|s|m|h))+"
)


def _check_keep_alive(value: object) -> object:
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


def _check_models(value: object) -> object:
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


ProviderName = Literal["local", "ovh", "runpod", "runpod-pod", "sandbox"]
PROVIDER_NAMES: Final[tuple[str, ...]] = get_args(ProviderName)

# --------------------------------------------------------------------------------------
# Models


class Model(BaseModel):
    """Base of every config model: unknown keys are errors, and values are immutable."""

    # Numbers coerce to text so `gpu: 4090` or `keep_alive: -1` in YAML read as meant.
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


class OvhSection(Model):
    """Settings that only the ``ovh`` provider reads."""


class RunpodSection(Model):
    """Settings that only the ``runpod`` and ``runpod-pod`` providers read."""


def _duration_defaults(schema: dict[str, Any], model: type[BaseModel]) -> None:
    # pydantic writes timedelta defaults as ISO 8601 ("PT15M"); the schema documents
    # ondemand.yml, where they are written "15m".
    for name, info in model.model_fields.items():
        if isinstance(info.default, timedelta):
            schema["properties"][name]["default"] = format_duration(info.default)


class Config(Model):
    """Every non-secret setting, with its default."""

    model_config = ConfigDict(json_schema_extra=_duration_defaults)

    name: Annotated[str, BeforeValidator(_check_name)] = "ollama-ondemand"
    provider: ProviderName = "local"
    models: Annotated[list[str], BeforeValidator(_check_models)] = Field(default_factory=list)
    image: OptionalText = None
    gpu: str = Field(default="L4", min_length=1)
    gpu_count: int = Field(default=1, ge=1)
    cpu: int = Field(default=4, ge=1)
    memory: Annotated[str, BeforeValidator(_check_memory)] = "16Gi"
    region: OptionalText = None
    volume: OptionalText = None
    port: int = Field(default=8080, ge=1, le=65535)
    timeout: Duration = timedelta(minutes=15)
    idle_timeout: Duration = timedelta(minutes=30)
    lease_ttl: Duration = timedelta(hours=3)
    max_lifetime: Duration = timedelta(hours=8)
    keep_alive: Annotated[str | None, BeforeValidator(_check_keep_alive)] = None
    max_keep_alive: Annotated[str | None, BeforeValidator(_check_keep_alive)] = None
    require_gpu: bool = False
    export_env: bool = True
    ovh: OvhSection = Field(default_factory=OvhSection)
    runpod: RunpodSection = Field(default_factory=RunpodSection)


class Secrets(Model):
    """Credentials: read only from the environment or flags, never from the file."""

    api_key: SecretStr | None = None
    admin_key: SecretStr | None = None
    ovh_token: SecretStr | None = None
    runpod_api_key: SecretStr | None = None
    github_token: SecretStr | None = None

    def secret_values(self) -> list[str]:
        """The values that are set, for ``gha.Actions.mask``."""
        values = (getattr(self, name) for name in type(self).model_fields)
        return [value.get_secret_value() for value in values if value is not None]


# --------------------------------------------------------------------------------------
# The field table: paths, env names and aliases


@dataclasses.dataclass(frozen=True, kw_only=True)
class EnvVar:
    """One setting's environment variable, for docs, ``--help`` and lookups."""

    path: str
    name: str
    aliases: tuple[str, ...] = ()
    secret: bool = False


FieldPath = tuple[str, ...]


def _section(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _leaf_paths(model: type[BaseModel], prefix: FieldPath = ()) -> Iterator[FieldPath]:
    for key, info in model.model_fields.items():
        section = _section(info.annotation)
        if section is None:
            yield (*prefix, key)
        else:
            yield from _leaf_paths(section, (*prefix, key))


# Names the seed script `ollama-app.sh` reads; an ONDEMAND_ name wins when both are set.
_SEED_ALIASES: Final[dict[str, tuple[str, ...]]] = {
    "models": ("PRELOAD_MODELS",),
    "gpu": ("GPU_MODEL",),
    "gpu_count": ("GPU_COUNT",),
    "cpu": ("CPU_COUNT",),
    "memory": ("MEMORY_SIZE",),
    "volume": ("OLLAMA_VOLUME",),
    "region": ("OVH_REGION",),
}

_SECRET_ENV: Final[dict[str, tuple[str, ...]]] = {
    "api_key": ("ONDEMAND_API_KEY",),
    "admin_key": ("ONDEMAND_ADMIN_KEY",),
    "ovh_token": ("OVH_AI_TOKEN",),
    "runpod_api_key": ("RUNPOD_API_KEY",),
    "github_token": ("ONDEMAND_GITHUB_TOKEN", "GITHUB_TOKEN"),
}

_CONFIG_PATHS: Final[tuple[FieldPath, ...]] = tuple(_leaf_paths(Config))

ENV_VARS: Final[tuple[EnvVar, ...]] = (
    *(
        EnvVar(
            path=".".join(path),
            name=ENV_PREFIX + "_".join(path).upper(),
            aliases=_SEED_ALIASES.get(".".join(path), ()),
        )
        for path in _CONFIG_PATHS
    ),
    *(
        EnvVar(path=key, name=names[0], aliases=names[1:], secret=True)
        for key, names in _SECRET_ENV.items()
    ),
)
"""Every setting's environment variable(s), settings first, then secrets."""

_BY_PATH: Final[dict[str, EnvVar]] = {var.path: var for var in ENV_VARS}


def env_name(field_path: str) -> str:
    """The main environment variable of a setting: ``"timeout"`` -> ``ONDEMAND_TIMEOUT``."""
    try:
        return _BY_PATH[field_path].name
    except KeyError:
        raise KeyError(f"no setting {field_path!r}") from None


def flag_name(field_path: str) -> str:
    """The flag as it appears in messages: ``"gpu_count"`` -> ``--gpu-count``."""
    return "--" + field_path.replace("_", "-")


# --------------------------------------------------------------------------------------
# The result


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResolvedConfig:
    """The effective configuration, its secrets, and where each value came from."""

    config: Config
    secrets: Secrets
    file: Path | None = None
    sources: dict[str, str] = dataclasses.field(default_factory=dict)

    def source(self, field_path: str) -> str:
        return self.sources.get(field_path, "default")

    def summary(self) -> list[tuple[str, str, str]]:
        """``(key, value, source)`` for every setting and secret; secret values redacted."""
        rows = []
        for path in _CONFIG_PATHS:
            value: Any = self.config
            for key in path:
                value = getattr(value, key)
            dotted = ".".join(path)
            rows.append((dotted, _display(value), self.source(dotted)))
        for key in Secrets.model_fields:
            shown = "-" if getattr(self.secrets, key) is None else "***"
            rows.append((key, shown, self.source(key)))
        return rows


def _display(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, list):
        return ", ".join(str(item) for item in value) or "-"
    return str(value)


# --------------------------------------------------------------------------------------
# Layers


@dataclasses.dataclass
class _Layer:
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


def _nest(values: Mapping[FieldPath, object]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for path, value in values.items():
        target = nested
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = value
    return nested


def _validate(
    model: type[Model], layer: _Layer, problems: list[str], *, model_level: bool
) -> Model | None:
    """Validate a layer, appending one line per error; ``None`` when it failed."""
    try:
        return model.model_validate(_nest(layer.values))
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            line = _describe(error, layer, model_level=model_level)
            if line is not None:
                problems.append(line)
        return None


def _describe(error: ErrorDetails, layer: _Layer, *, model_level: bool) -> str | None:
    loc = tuple(error["loc"])
    for end in range(len(loc), 0, -1):
        label = layer.labels.get(loc[:end])
        if label is not None:
            rest = "".join(
                f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc[end:]
            )
            return f"{label}{rest}: {_explain(error)}"
    # Errors that belong to no single value (cross-field checks) are judged on the merged
    # result only: a lone layer cannot know what the others set.
    if not model_level:
        return None
    where = ".".join(str(part) for part in loc) or "configuration"
    return f"{where}: {_explain(error)}"


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _explain(error: ErrorDetails) -> str:
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if kind == "ondemand":
        return str(ctx["message"])
    simple = {
        "int_parsing": "must be an integer",
        "int_type": "must be an integer",
        "int_from_float": "must be a whole number",
        "bool_parsing": "must be true or false",
        "bool_type": "must be true or false",
        "string_type": "must be text",
        "list_type": "must be a list",
        "model_type": "must be a mapping of settings",
        "model_attributes_type": "must be a mapping of settings",
        "dict_type": "must be a mapping",
    }
    if kind in simple:
        return f"{simple[kind]}, got {_show(value)}"
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}, got {_show(value)}"
    if kind == "string_too_short":
        return "must not be empty"
    bounds = {
        "greater_than_equal": ("at least", "ge"),
        "greater_than": ("more than", "gt"),
        "less_than_equal": ("at most", "le"),
        "less_than": ("less than", "lt"),
    }
    if kind in bounds:
        words, key = bounds[kind]
        return f"must be {words} {ctx[key]}, got {_show(value)}"
    message = error["msg"]
    return f"{message[:1].lower()}{message[1:]}, got {_show(value)}"


# --------------------------------------------------------------------------------------
# The file


_SECRET_WORDS: Final = ("token", "password", "passwd", "secret", "apikey", "api_key", "credential")


_SECRET_IN_FILE: Final = "secrets are never read from the file"


def _looks_secret(key: str) -> bool:
    norm = key.lower().replace("-", "_")
    return (
        norm in Secrets.model_fields
        or norm == "key"
        or norm.endswith("_key")
        or any(word in norm for word in _SECRET_WORDS)
    )


def _secret_problem(where: str, path: FieldPath) -> str:
    dotted = ".".join(path)
    joined = "_".join(path).lower().replace("-", "_")
    leaf = path[-1].lower().replace("-", "_")
    known = _SECRET_ENV.get(joined) or _SECRET_ENV.get(leaf)
    instead = (
        f"set {known[0]} in the environment" if known else "pass it in an environment variable"
    )
    return (
        f"{where}: {dotted}: {_SECRET_IN_FILE}; remove it and {instead} "
        "(in a workflow, from a GitHub secret)"
    )


def _suggest(key: str, model: type[BaseModel], prefix: FieldPath) -> str | None:
    fields = list(model.model_fields)
    norm = key.lower().replace("-", "_")
    if norm in fields:
        return ".".join((*prefix, norm))
    close = difflib.get_close_matches(norm, fields, n=1, cutoff=0.6)
    if close:
        return ".".join((*prefix, close[0]))
    # A known key placed under the wrong section.
    for path in _CONFIG_PATHS:
        if path[-1] == norm:
            return ".".join(path)
    return None


def _line(mapping: CommentedMap, key: object) -> int:
    return int(mapping.lc.key(key)[0]) + 1


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
    layer: _Layer,
    problems: list[str],
) -> None:
    for key, value in mapping.items():
        where = f"{display}:{_line(mapping, key)}"
        if not isinstance(key, str):
            problems.append(f"{where}: keys must be text, got {_show(_plain(key))}")
            continue
        path = (*prefix, key)
        dotted = ".".join(path)
        info = model.model_fields.get(key)
        if info is None:
            if _looks_secret(key):
                problems.append(_secret_problem(where, path))
                continue
            suggestion = _suggest(key, model, prefix)
            hint = f" — did you mean '{suggestion}'?" if suggestion else ""
            problems.append(f"{where}: unknown key '{dotted}'{hint}")
            continue
        if value is None:  # `key:` with nothing after it means "not set", as an empty env var
            continue
        section = _section(info.annotation)
        if section is not None and isinstance(value, CommentedMap):
            _walk_mapping(value, section, path, display, layer, problems)
            continue
        value_line = int(mapping.lc.value(key)[0]) + 1
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


def _read_file(path: Path, display: str, origin: str, layer: _Layer, problems: list[str]) -> None:
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
        kind = "a list" if isinstance(data, list) else f"{_show(_plain(data))}"
        problems.append(
            f"{display}:1: the top level must be a mapping of settings (key: value), got {kind}"
        )
        return
    _walk_mapping(data, Config, (), display, layer, problems)


def _find_file(
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


# --------------------------------------------------------------------------------------
# Environment and flags


def _field_annotation(path: FieldPath) -> object:
    model: type[BaseModel] = Config
    annotation: object = None
    for key in path:
        annotation = model.model_fields[key].annotation
        model = _section(annotation) or model
    return annotation


def _from_text(path: FieldPath, value: object) -> object:
    """Env and flag text for a list setting is comma-separated."""
    if isinstance(value, str) and get_origin(_field_annotation(path)) is list:
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _read_env(env: Mapping[str, str], *, secret: bool) -> _Layer:
    layer = _Layer()
    for var in ENV_VARS:
        if var.secret != secret:
            continue
        for name in (var.name, *var.aliases):
            raw = env.get(name, "").strip()
            if raw:  # empty counts as unset, as in most shells' ${VAR:-default}
                path = tuple(var.path.split("."))
                value = raw if secret else _from_text(path, raw)
                layer.set(path, value, source=f"env {name}", label=name)
                break
    return layer


def _read_flags(flags: Mapping[str, object], problems: list[str]) -> tuple[_Layer, _Layer]:
    config, secrets = _Layer(), _Layer()
    for dotted, value in flags.items():
        if value is None:
            continue
        flag = flag_name(dotted)
        path = tuple(dotted.split("."))
        if dotted in Secrets.model_fields:
            raw = value.get_secret_value() if isinstance(value, SecretStr) else value
            if not isinstance(raw, str):
                problems.append(f"{flag}: must be text")  # never echo a secret
            elif raw.strip():
                secrets.set(path, raw.strip(), source=f"flag {flag}", label=flag)
        elif path in _CONFIG_PATHS:
            config.set(path, _from_text(path, value), source=f"flag {flag}", label=flag)
        else:
            problems.append(f"{flag}: unknown setting '{dotted}'")
    return config, secrets


# --------------------------------------------------------------------------------------
# The cascade


def load_config(
    *,
    path: Path | None,
    env: Mapping[str, str],
    flags: Mapping[str, object] | None = None,
    cwd: Path | None = None,
) -> ResolvedConfig:
    """Resolve defaults < ``ondemand.yml`` < env < flags into a :class:`ResolvedConfig`.

    ``path`` is ``--config``; without it ``ONDEMAND_CONFIG``, then ``cwd/ondemand.yml`` if it
    exists. ``flags`` maps field paths (``"timeout"``, ``"runpod.workers"``, ``"api_key"``)
    to values the user gave, parsed or raw text. Raises :class:`ConfigError` listing every
    problem found, one per line.
    """
    base = cwd if cwd is not None else Path.cwd()

    file_layer, file_problems = _Layer(), list[str]()
    found = _find_file(path, env, base)
    if found is not None:
        file_path, display, origin = found
        _read_file(file_path, display, origin or CONFIG_FILENAME, file_layer, file_problems)
        _validate(Config, file_layer, file_problems, model_level=False)
    # Structure and value problems are found in two passes; the user reads them in file order.
    problems = sorted(file_problems, key=_line_number)

    env_layer = _read_env(env, secret=False)
    _validate(Config, env_layer, problems, model_level=False)
    secret_env = _read_env(env, secret=True)
    flag_layer, secret_flags = _read_flags(flags or {}, problems)
    _validate(Config, flag_layer, problems, model_level=False)

    merged = _merge(file_layer, env_layer, flag_layer)
    secret_merged = _merge(secret_env, secret_flags)
    if problems:
        _raise(problems)

    config = _validate(Config, merged, problems, model_level=True)
    secrets = _validate(Secrets, secret_merged, problems, model_level=True)
    if problems or not isinstance(config, Config) or not isinstance(secrets, Secrets):
        _raise(problems or ["configuration: does not validate"])
    sources = {".".join(p): s for p, s in (merged.sources | secret_merged.sources).items()}
    return ResolvedConfig(
        config=config,
        secrets=secrets,
        file=found[0] if found is not None else None,
        sources=sources,
    )


def _line_number(problem: str) -> int:
    match = re.match(r".*?:([0-9]+): ", problem)
    return int(match.group(1)) if match else 0


def _merge(*layers: _Layer) -> _Layer:
    """Later layers win, per field; each value keeps the labels of the layer it came from."""
    merged = _Layer()
    for layer in layers:
        for path in layer.values:
            merged.labels = {
                key: label for key, label in merged.labels.items() if key[: len(path)] != path
            }
        merged.values.update(layer.values)
        merged.sources.update(layer.sources)
        merged.labels.update(layer.labels)
    return merged


def _raise(problems: list[str]) -> NoReturn:
    if any(_SECRET_IN_FILE in line for line in problems):
        raise ConfigError(
            "\n".join(problems),
            cause="ondemand.yml is meant to be committed, so a secret in it is readable by "
            "anyone who can read the repository",
            hint="pass secrets as environment variables from GitHub secrets, e.g. "
            "`env: RUNPOD_API_KEY: ${{ secrets.RUNPOD_API_KEY }}`, and rotate any secret "
            "that was committed",
        )
    raise ConfigError("\n".join(problems), hint=DOCS_HINT)
