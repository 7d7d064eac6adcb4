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

import re
from pathlib import Path

from ondemand.envvalues import secret_problem
from ondemand.errors import ConfigError
from ondemand.modelnames import canonical
from ondemand.proxy.auth import KeyEntry, digest, parse_sha256, valid_key_name

_FIELDS = {"name", "key", "sha256", "models", "admin", "max_concurrency", "rpm"}


def _problem(path: Path, where: tuple[int, int], text: str) -> str:
    """``file:line:column: text``; ``where`` is ruamel's 0-based (line, column)."""
    return f"{path}:{where[0] + 1}:{where[1] + 1}: {text}"


# What a YAML error is about, by its kind: the parser's own message quotes the file (a key,
# a duplicate value, an alias name), so only messages that quote nothing are shown as is.
_YAML_KINDS = {
    "DuplicateKeyError": "a field appears twice in one entry",
    "ScannerError": "a character or quote that cannot be read here",
    "ParserError": "the structure is broken (indentation, a missing ':' or '-')",
    "ComposerError": "an anchor or alias that does not resolve",
    "ConstructorError": "a value of a type the keys file does not use",
}


def _yaml_problem(path: Path, exc: Exception) -> str:
    """Where the YAML is broken (file, line, column) and what kind of break, never the
    text around it: that text is often the key itself."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None)
    what = next(
        (
            text
            for kind, text in _YAML_KINDS.items()
            if kind in {c.__name__ for c in type(exc).__mro__}
        ),
        "the YAML cannot be read",
    )
    if isinstance(problem, str) and problem and not re.search(r"['\"\\`]", problem):
        what = problem
    if mark is None:
        return f"{path}: not valid YAML: {what}"
    return f"{path}:{mark.line + 1}:{mark.column + 1}: not valid YAML: {what}"


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
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}:{line}: the keys file is not UTF-8 text",
            hint="save it as UTF-8; see docs/proxy.md for the format",
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read the keys file {path}: {exc.strerror or exc}",
            hint="check ONDEMAND_KEYS_FILE and the file's permissions",
        ) from exc
    try:
        data = YAML(typ="rt").load(text)
    except YAMLError as exc:
        # "from None": a traceback printed later would show the parser's quoted snippet.
        raise ConfigError(
            _yaml_problem(path, exc), hint="fix that line; see docs/proxy.md for the format"
        ) from None
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
        line = data.lc.item(index)
        if not isinstance(item, CommentedMap):
            problems.append(_problem(path, line, "each key must be a mapping with a 'name'"))
            continue
        # The field's name is not shown: a key pasted in the wrong place becomes a field name.
        for key in (k for k in item if str(k) not in _FIELDS):
            problems.append(
                _problem(
                    path,
                    item.lc.key(key),
                    "unknown field in a key entry (known: " + ", ".join(sorted(_FIELDS)) + ")",
                )
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
                problems.append(_problem(path, item.lc.key("key"), f"{where}: 'key' {problem}"))
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
                    source=f"{path}:{line[0] + 1}",
                )
            )
    if problems:
        raise ConfigError(
            "the keys file has problems:\n" + "\n".join(problems),
            hint="fix the lines above; see docs/proxy.md for the format",
        )
    return entries
