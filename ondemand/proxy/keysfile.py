"""``ONDEMAND_KEYS_FILE``: named keys with their models, role and limits, from one YAML file.

```yaml
- name: ci
  sha256: sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
  models: [llama3.2, nomic-embed-text]
  max_concurrency: 4
  rpm: 120
- name: ops
  key: plain-text-key-also-accepted
  admin: true
```
Store the ``sha256:`` form (``ondemand keys new`` prints it) so the file holds no secret.
"""

from __future__ import annotations

from pathlib import Path

from ondemand.envvalues import secret_problem
from ondemand.errors import ConfigError
from ondemand.modelnames import canonical
from ondemand.proxy.auth import KeyEntry, digest, parse_sha256, valid_key_name

_FIELDS = {"name", "key", "sha256", "models", "admin", "max_concurrency", "rpm"}


def _problem(path: Path, line: int | None, text: str) -> str:
    return f"{path}:{line}: {text}" if line is not None else f"{path}: {text}"


def _positive_int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return None
    return value


def parse_keys_file(path: Path) -> list[KeyEntry]:
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap, CommentedSeq
    from ruamel.yaml.error import YAMLError

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read the keys file {path}: {exc.strerror or exc}",
            hint="check ONDEMAND_KEYS_FILE and the file's permissions",
        ) from exc
    try:
        data = YAML(typ="rt").load(text)
    except YAMLError as exc:
        raise ConfigError(f"the keys file {path} is not valid YAML: {exc}") from exc
    if data is None:
        data = CommentedSeq()
    if not isinstance(data, CommentedSeq):
        raise ConfigError(
            f"the keys file {path} must be a YAML list of keys",
            hint="start each key with '- name: ...'; see docs/proxy.md",
        )
    problems: list[str] = []
    entries: list[KeyEntry] = []
    for index, item in enumerate(data):
        line = data.lc.item(index)[0] + 1
        if not isinstance(item, CommentedMap):
            problems.append(_problem(path, line, "each key must be a mapping with a 'name'"))
            continue
        unknown = sorted(set(map(str, item)) - _FIELDS)
        for key in unknown:
            problems.append(
                _problem(path, item.lc.key(key)[0] + 1, f"unknown field {key!r} in a key entry")
            )
        name = item.get("name")
        if not isinstance(name, str) or not valid_key_name(name):
            problems.append(
                _problem(path, line, "'name' is required: letters, digits, '_', '.', '@', '-'")
            )
            continue
        where = f"key {name!r}"
        has_key, has_sha = "key" in item, "sha256" in item
        key_digest: bytes | None = None
        if has_key == has_sha:
            problems.append(_problem(path, line, f"{where}: give exactly one of 'key' or 'sha256'"))
        elif has_key:
            value = item["key"]
            # The same rule as a key variable's (envvalues.secret_problem), and the
            # message never quotes the key.
            problem = secret_problem(value) if isinstance(value, str) else "is not a string"
            if problem:
                key_line = item.lc.key("key")[0] + 1
                problems.append(_problem(path, key_line, f"{where}: 'key' {problem}"))
            else:
                key_digest = digest(value)
        else:
            value = item["sha256"]
            key_digest = parse_sha256(value) if isinstance(value, str) else None
            if key_digest is None:
                problems.append(
                    _problem(path, line, f"{where}: 'sha256' must be 'sha256:' and 64 hex digits")
                )
        models_raw = item.get("models")
        models: frozenset[str] | None = None
        if models_raw is not None:
            if not isinstance(models_raw, list) or not all(
                isinstance(m, str) and m.strip() for m in models_raw
            ):
                problems.append(_problem(path, line, f"{where}: 'models' must be a list of names"))
            else:
                models = frozenset(canonical(m) for m in models_raw)
        admin = item.get("admin", False)
        if not isinstance(admin, bool):
            problems.append(_problem(path, line, f"{where}: 'admin' must be true or false"))
        limits: dict[str, int | None] = {}
        for limit in ("max_concurrency", "rpm"):
            raw = item.get(limit)
            limits[limit] = None if raw is None else _positive_int(raw)
            if raw is not None and limits[limit] is None:
                problems.append(
                    _problem(path, line, f"{where}: {limit!r} must be a whole number ≥ 1")
                )
        if key_digest is not None:
            entries.append(
                KeyEntry(
                    name,
                    key_digest,
                    admin=admin is True,
                    models=models,
                    max_concurrency=limits["max_concurrency"],
                    rpm=limits["rpm"],
                    source=f"{path}:{line}",
                )
            )
    if problems:
        raise ConfigError(
            "the keys file has problems:\n" + "\n".join(problems),
            hint="fix the lines above; see docs/proxy.md for the format",
        )
    return entries
