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
import re
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Final, Literal, NoReturn, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
)
from pydantic_core import ErrorDetails

from ondemand.configfile import (
    CONFIG_ENV,
    CONFIG_FILENAME,
    SECRET_IN_FILE,
    FieldPath,
    FileSchema,
    Layer,
    find_file,
    read_file,
    section_model,
    show,
)
from ondemand.configtypes import (
    Duration,
    OptionalText,
    check_env_patterns,
    check_keep_alive,
    check_memory,
    check_models,
    check_name,
    format_duration,
    parse_duration,
)
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

ENV_PREFIX: Final = "ONDEMAND_"
DOCS_HINT: Final = "docs/configuration.md lists every key, its environment variable and its format"

# --------------------------------------------------------------------------------------
# Models

ProviderName = Literal["local", "ovh", "runpod", "runpod-pod", "sandbox"]
PROVIDER_NAMES: Final[tuple[str, ...]] = get_args(ProviderName)


class Model(BaseModel):
    """Base of every config model: unknown keys are errors, and values are immutable."""

    # Numbers coerce to text so `gpu: 4090` or `keep_alive: -1` in YAML read as meant.
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


class OvhSection(Model):
    """Settings that only the ``ovh`` provider reads."""

    # The flavor is derived from `gpu` (L4 -> l4-1-gpu); set it to use another one.
    flavor: OptionalText = None
    # Fixed scaling, unless replicas_min and replicas_max are both set (automatic scaling).
    replicas: int = Field(default=1, ge=1, le=10)
    replicas_min: int | None = Field(default=None, ge=0, le=10)
    replicas_max: int | None = Field(default=None, ge=1, le=10)
    autoscale_resource: Literal["CPU", "RAM"] = "CPU"
    autoscale_target: int = Field(default=75, ge=1, le=100)


class RunpodSection(Model):
    """Settings that only the ``runpod`` and ``runpod-pod`` providers read."""

    # Serverless GPU pools (AMPERE_24, ADA_24, ...); derived from `gpu` when unset.
    gpu_pools: list[str] | None = None
    # GPU type ids never to run on. Unset: the sm_86 cards on which Ollama has been seen to
    # fall back to the CPU (docs/runpod.md); an empty list excludes nothing.
    exclude_gpu_types: list[str] | None = None
    workers_min: int = Field(default=0, ge=0)
    # At least 2, so that one throttled worker cannot make the endpoint unreachable.
    workers_max: int = Field(default=2, ge=1)
    # Seconds a worker stays up after its last request (billed).
    idle_timeout: int = Field(default=60, ge=1, le=3600)
    # In-flight requests per worker before another starts; high, so one worker serves all.
    request_count: int = Field(default=100, ge=1)
    flashboot: bool = True
    # Network volume for the model cache, NAME@DATACENTER; created if it does not exist.
    network_volume: OptionalText = None
    network_volume_size: int = Field(default=50, ge=10, le=4096)
    data_centers: list[str] = Field(default_factory=list)
    container_disk: int = Field(default=20, ge=1)
    # Pods only.
    cloud_type: Literal["SECURE", "COMMUNITY"] = "SECURE"
    pod_volume: int = Field(default=50, ge=0)


def _duration_defaults(schema: dict[str, Any], model: type[BaseModel]) -> None:
    # pydantic writes timedelta defaults as ISO 8601 ("PT15M"); the schema documents
    # ondemand.yml, where they are written "15m".
    for name, info in model.model_fields.items():
        if isinstance(info.default, timedelta):
            schema["properties"][name]["default"] = format_duration(info.default)


class Config(Model):
    """Every non-secret setting, with its default."""

    model_config = ConfigDict(json_schema_extra=_duration_defaults)

    name: Annotated[str, BeforeValidator(check_name)] = "ollama-ondemand"
    provider: ProviderName = "local"
    models: Annotated[list[str], BeforeValidator(check_models)] = Field(default_factory=list)
    image: OptionalText = None
    gpu: str = Field(default="L4", min_length=1)
    gpu_count: int = Field(default=1, ge=1)
    cpu: int = Field(default=4, ge=1)
    memory: Annotated[str, BeforeValidator(check_memory)] = "16Gi"
    region: OptionalText = None
    volume: OptionalText = None
    port: int = Field(default=8080, ge=1, le=65535)
    timeout: Duration = timedelta(minutes=15)
    idle_timeout: Duration = timedelta(minutes=30)
    lease_ttl: Duration = timedelta(hours=3)
    # How long 'down' lets requests in flight end once no lease is left, before it stops
    # anyway (a request without a lease is no reason to keep a GPU).
    drain_timeout: Duration = timedelta(minutes=2)
    max_lifetime: Duration = timedelta(hours=8)
    # 'up' hands out a key of its own, valid only while its lease lives, instead of the
    # deployment's key (docs/safety.md).
    run_key: bool = True
    # The server stops its own deployment when idle (idle_timeout) with no live lease, or
    # past max_lifetime; the provider's credentials then travel in the deployment's env.
    self_stop: bool = False
    keep_alive: Annotated[str | None, BeforeValidator(check_keep_alive)] = None
    max_keep_alive: Annotated[str | None, BeforeValidator(check_keep_alive)] = None
    require_gpu: bool = False
    # Processes serving the deployment's port (docs/proxy.md, "Worker processes").
    proxy_workers: int = Field(default=1, ge=1, le=64)
    export_env: bool = True
    # More of the caller's environment for the local provider's server and its Ollama,
    # beyond what they read (ondemand/childenv.py): names or globs.
    pass_env: Annotated[list[str], BeforeValidator(check_env_patterns)] = Field(
        default_factory=list
    )
    # Price per GPU per hour by GPU model, in the provider's currency, for cost estimates;
    # merged over built-in indicative prices (docs/configuration.md).
    prices: dict[str, float] = Field(default_factory=dict)
    ovh: OvhSection = Field(default_factory=OvhSection)
    runpod: RunpodSection = Field(default_factory=RunpodSection)


class Secrets(Model):
    """Credentials: read only from the environment or flags, never from the file."""

    api_key: SecretStr | None = None
    admin_key: SecretStr | None = None
    ovh_token: SecretStr | None = None
    runpod_api_key: SecretStr | None = None
    # A restricted RunPod key scoped to the endpoint: what test steps get, not the account key.
    runpod_client_key: SecretStr | None = None
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


def _leaf_paths(model: type[BaseModel], prefix: FieldPath = ()) -> Iterator[FieldPath]:
    for key, info in model.model_fields.items():
        section = section_model(info.annotation)
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
    "runpod_client_key": ("RUNPOD_CLIENT_KEY",),
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

# What the file reader checks keys against: ondemand.configfile cannot import this module.
_FILE_SCHEMA: Final = FileSchema(
    model=Config, paths=_CONFIG_PATHS, secrets=Secrets, secret_env=_SECRET_ENV
)


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
# Validating layers
def _nest(values: Mapping[FieldPath, object]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for path, value in values.items():
        target = nested
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = value
    return nested


def _validate(
    model: type[Model], layer: Layer, problems: list[str], *, model_level: bool
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


def _describe(error: ErrorDetails, layer: Layer, *, model_level: bool) -> str | None:
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
        return f"{simple[kind]}, got {show(value)}"
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}, got {show(value)}"
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
        return f"must be {words} {ctx[key]}, got {show(value)}"
    message = error["msg"]
    return f"{message[:1].lower()}{message[1:]}, got {show(value)}"


# --------------------------------------------------------------------------------------
# Environment and flags


def _field_annotation(path: FieldPath) -> object:
    model: type[BaseModel] = Config
    annotation: object = None
    for key in path:
        annotation = model.model_fields[key].annotation
        model = section_model(annotation) or model
    return annotation


def _from_text(path: FieldPath, value: object) -> object:
    """Env and flag text for a list setting is comma-separated; for a table, ``k=v,k=v``."""
    if not isinstance(value, str):
        return value
    annotation = _field_annotation(path)
    # `list[str] | None`: the list inside the optional.
    inner = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) in (Union, UnionType) and len(inner) == 1:
        annotation = inner[0]
    origin = get_origin(annotation)
    if origin is list:
        return [item.strip() for item in value.split(",") if item.strip()]
    if origin is dict:
        pairs = [item.partition("=") for item in value.split(",") if item.strip()]
        if all(sep for _, sep, _ in pairs):
            return {key.strip(): item.strip() for key, _, item in pairs}
        # A pair without "=" is left to validation, which then names the setting.
    return value


def _read_env(env: Mapping[str, str], *, secret: bool) -> Layer:
    layer = Layer()
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


def _read_flags(flags: Mapping[str, object], problems: list[str]) -> tuple[Layer, Layer]:
    config, secrets = Layer(), Layer()
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
    exists. ``flags`` maps field paths (``"timeout"``, ``"runpod.workers_max"``, ``"api_key"``)
    to values the user gave, parsed or raw text. Raises :class:`ConfigError` listing every
    problem found, one per line.
    """
    base = cwd if cwd is not None else Path.cwd()

    file_layer, file_problems = Layer(), list[str]()
    found = find_file(path, env, base)
    if found is not None:
        file_path, display, origin = found
        read_file(
            file_path, display, origin or CONFIG_FILENAME, file_layer, file_problems, _FILE_SCHEMA
        )
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


def _merge(*layers: Layer) -> Layer:
    """Later layers win, per field; each value keeps the labels of the layer it came from."""
    merged = Layer()
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
    if any(SECRET_IN_FILE in line for line in problems):
        raise ConfigError(
            "\n".join(problems),
            cause="ondemand.yml is meant to be committed, so a secret in it is readable by "
            "anyone who can read the repository",
            hint="pass secrets as environment variables from GitHub secrets, e.g. "
            "`env: RUNPOD_API_KEY: ${{ secrets.RUNPOD_API_KEY }}`, and rotate any secret "
            "that was committed",
        )
    raise ConfigError("\n".join(problems), hint=DOCS_HINT)
