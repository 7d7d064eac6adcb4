"""Requests checked against a vendored OpenAPI document, as the vendor's gateway checks them.

One ``Document`` per vendored file. ``Document.check`` validates the path parameters, the query
parameters and the JSON body of one operation and returns the failures, each
``"<where>: <problem>"`` with ``where`` a JSON path (``$.gpu.pools``) or ``query.<name>`` /
``path.<name>``: the form RunPod's problem bodies list in ``errors``.

The schemas are JSON Schema 2020-12 (OpenAPI 3.1) and ``jsonschema`` validates them; the
adapter covers what OpenAPI adds: ``$ref`` into ``#/components`` (the document is one
``referencing`` resource), parameters with their ``style``/``explode`` (a comma-separated
array, a number or boolean in a query string), OpenAPI 3.0's ``nullable``, ``readOnly``
properties (never required in a request), and ``discriminator`` (a ``oneOf`` failure is
reported against the branch the discriminator names, not as "matches none").
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

JSON = dict[str, Any]
RUNPOD = "runpod-rest-v2.openapi.json"
OVHAI = "ovhai-sdk.openapi.json"
_PLACEHOLDER = re.compile(r"{[^}/]+}")


@dataclass(frozen=True)
class _Parameter:
    name: str
    where: str  # "path" | "query"
    required: bool
    exploded: bool
    validator: Draft202012Validator
    schema: JSON
    """The parameter's schema itself: its types say how to read the raw string."""


@dataclass(frozen=True)
class Operation:
    parameters: tuple[_Parameter, ...] = ()
    body: Draft202012Validator | None = None
    body_required: bool = False
    query_names: frozenset[str] = field(default_factory=frozenset)


class Document:
    """A vendored OpenAPI document, its operations keyed by method and path template."""

    def __init__(self, filename: str) -> None:
        text = resources.files(__package__).joinpath(filename).read_text(encoding="utf-8")
        self.raw: JSON = _adapt(json.loads(text))
        self.uri = f"urn:ondemand:vendor:{filename}"
        resource = Resource.from_contents(self.raw, default_specification=DRAFT202012)
        self._registry: Registry[Any] = Registry().with_resource(self.uri, resource)
        self._operations: dict[tuple[str, str], Operation] = {}
        for template, item in self.raw.get("paths", {}).items():
            shared = item.get("parameters", [])
            for method, spec in item.items():
                if method == "parameters":
                    continue
                key = (method.upper(), _PLACEHOLDER.sub("{}", template))
                self._operations[key] = self._operation(template, method, spec, shared)

    def operation(self, method: str, template: str) -> Operation | None:
        return self._operations.get((method.upper(), _PLACEHOLDER.sub("{}", template)))

    def check(
        self,
        method: str,
        template: str,
        params: Mapping[str, str],
        query: Mapping[str, Sequence[str]],
        body: object = None,
        *,
        has_body: bool = False,
    ) -> list[str]:
        """Every failure of this request against the document (empty when it conforms, or
        when the document does not describe the operation)."""
        operation = self.operation(method, template)
        if operation is None:
            return []
        failures: list[str] = []
        values = list(params.values())
        for parameter in operation.parameters:
            if parameter.where == "path":
                raw: Sequence[str] = [values.pop(0)] if values else []
            else:
                raw = query.get(parameter.name, [])
            if not raw:
                if parameter.required:
                    failures.append(f"{parameter.where}.{parameter.name}: is required")
                continue
            value = _coerce(raw, parameter.schema, exploded=parameter.exploded)
            where = f"{parameter.where}.{parameter.name}"
            failures += _messages(parameter.validator.iter_errors(value), where, self.raw)
        if operation.body is not None and (has_body or operation.body_required):
            failures += _messages(operation.body.iter_errors(body), "$", self.raw)
        return failures

    def _operation(self, template: str, method: str, spec: JSON, shared: list[JSON]) -> Operation:
        pointer = f"/paths/{_escape(template)}/{method}"
        own = spec.get("parameters", [])
        found: list[_Parameter] = []
        for index, parameter in enumerate([*shared, *own]):
            if "$ref" in parameter:
                target = parameter["$ref"].removeprefix("#")
                parameter = _resolve(self.raw, target)
                schema_pointer = f"{target}/schema"
            elif index < len(shared):
                schema_pointer = f"/paths/{_escape(template)}/parameters/{index}/schema"
            else:
                schema_pointer = f"{pointer}/parameters/{index - len(shared)}/schema"
            if parameter.get("in") not in ("path", "query"):
                continue
            exploded = parameter.get("explode", parameter.get("style", "form") == "form")
            found.append(
                _Parameter(
                    parameter["name"],
                    parameter["in"],
                    bool(parameter.get("required")),
                    bool(exploded),
                    self._validator(schema_pointer),
                    _deref(self.raw, _resolve(self.raw, schema_pointer)),
                )
            )
        body = None
        content = spec.get("requestBody", {}).get("content", {})
        if "application/json" in content:
            body = self._validator(f"{pointer}/requestBody/content/application~1json/schema")
        return Operation(
            tuple(found),
            body,
            bool(spec.get("requestBody", {}).get("required")),
            frozenset(p.name for p in found if p.where == "query"),
        )

    def _validator(self, pointer: str) -> Draft202012Validator:
        # A $ref into the document, so the schema's own $refs resolve against it.
        return Draft202012Validator({"$ref": f"{self.uri}#{pointer}"}, registry=self._registry)


@cache
def document(filename: str) -> Document:
    """The parsed document (parsed once per process: it is read-only)."""
    return Document(filename)


# -- OpenAPI specifics -----------------------------------------------------------------------


def _adapt(node: Any) -> Any:
    """OpenAPI 3.0's ``nullable`` as a JSON Schema type, and readOnly properties out of
    ``required`` (a request never has to send what only the server writes)."""
    if isinstance(node, list):
        return [_adapt(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _adapt(value) for key, value in node.items()}
    if out.pop("nullable", False) is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    properties = out.get("properties")
    if isinstance(properties, dict) and isinstance(out.get("required"), list):
        written = {k for k, v in properties.items() if isinstance(v, dict) and v.get("readOnly")}
        out["required"] = [name for name in out["required"] if name not in written]
    return out


def _coerce(raw: Sequence[str], schema: JSON, *, exploded: bool) -> object:
    """A query or path value as the JSON value its schema types it as."""
    kinds = _types(schema)
    if "array" in kinds:
        values = list(raw) if exploded else [v for item in raw for v in item.split(",")]
        items = schema.get("items", {})
        return [_scalar(v, _types(items)) for v in values]
    return _scalar(raw[-1], kinds)


def _scalar(value: str, kinds: set[str]) -> object:
    if "integer" in kinds and re.fullmatch(r"-?\d+", value):
        return int(value)
    if "number" in kinds:
        try:
            return float(value)
        except ValueError:
            return value
    if "boolean" in kinds and value in ("true", "false"):
        return value == "true"
    return value


def _types(schema: JSON) -> set[str]:
    kind = schema.get("type")
    if isinstance(kind, str):
        return {kind}
    if isinstance(kind, list):
        return set(kind)
    for key in ("allOf", "anyOf", "oneOf"):
        for part in schema.get(key, []):
            if isinstance(part, dict) and "$ref" not in part:
                return _types(part)
    return set()


# -- messages --------------------------------------------------------------------------------


def _messages(errors: Iterable[ValidationError], root: str, raw: JSON) -> list[str]:
    leaves = sorted(_leaves(errors), key=lambda e: [str(p) for p in e.absolute_path])
    typed = {tuple(e.absolute_path) for e in leaves if e.validator == "type"}
    out: list[str] = []
    for error in leaves:
        if error.validator in ("enum", "const") and tuple(error.absolute_path) in typed:
            continue  # "expected a string, got null" already says it
        problem = _problem(error, raw)
        line = f"{_where(root, error.absolute_path)}: {problem}"
        if problem and line not in out:
            out.append(line)
    return out


def _leaves(errors: Iterable[ValidationError]) -> Iterator[ValidationError]:
    """The errors to report: a oneOf failure is replaced by its discriminated branch's."""
    for error in errors:
        if error.validator == "oneOf" and error.context:
            yield from _leaves(_branch(error))
        else:
            yield error


def _branch(error: ValidationError) -> list[ValidationError]:
    schema: Any = error.schema
    instance = error.instance
    discriminator = schema.get("discriminator") if isinstance(schema, dict) else None
    if not isinstance(discriminator, dict) or not isinstance(instance, dict):
        best = best_match(error.context or [])
        return [best] if best is not None else [error]
    name = str(discriminator.get("propertyName", ""))
    mapping: dict[str, str] = discriminator.get("mapping", {})
    value = instance.get(name)
    refs = [part.get("$ref") for part in schema.get("oneOf", [])]
    target = mapping.get(value) if isinstance(value, str) else None
    if target in refs:
        index = refs.index(target)
        return [e for e in error.context or [] if e.relative_schema_path[0] == index]
    if name not in instance:
        problem, path = f"missing properties '{name}'", list(error.absolute_path)
    else:
        problem = f"value must be one of {_listed(sorted(mapping))}, got {value!r}"
        path = [*error.absolute_path, name]
    return [ValidationError(problem, path=path, validator="discriminator")]


def _where(root: str, path: Iterable[object]) -> str:
    out = root
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _problem(error: ValidationError, raw: JSON) -> str:
    """The vendor's wording for one failure; empty for a failure that only echoes another."""
    rule, value = error.validator, error.instance
    expected: Any = error.validator_value
    if rule in ("additionalProperties", "unevaluatedProperties") and isinstance(value, dict):
        # A property of a subschema that failed counts as unevaluated (JSON Schema drops
        # the annotations of a failed subschema): only names no subschema declares are
        # unknown; the others' own failures are reported at their place.
        known = _declared(error.schema, raw) if rule == "unevaluatedProperties" else set()
        listed = re.findall(r"'([^']*)'", error.message.split("(")[-1])
        names = [name for name in listed if name not in known]
        return f"additional properties {_listed(names)} not allowed" if names else ""
    if rule == "required" and isinstance(value, dict):
        return f"missing properties {_listed([n for n in expected if n not in value])}"
    if rule == "type":
        wanted = expected if isinstance(expected, list) else [expected]
        return f"expected {' or '.join(_article(w) for w in wanted)}, got {_kind(value)}"
    if rule == "enum":
        return f"value must be one of {_listed(expected)}, got {value!r}"
    if rule == "const":
        return f"value must be one of {_listed([expected])}, got {value!r}"
    if rule in ("minimum", "exclusiveMinimum"):
        return f"must be >= {_plain(expected)}, got {_plain(value)}"
    if rule in ("maximum", "exclusiveMaximum"):
        return f"must be <= {_plain(expected)}, got {_plain(value)}"
    if rule == "minItems":
        return f"must have at least {expected} item(s)"
    if rule == "maxItems":
        return f"must have at most {expected} item(s)"
    if rule == "minLength":
        return f"length must be >= {expected}"
    if rule == "maxLength":
        return f"length must be <= {expected}"
    if rule == "minProperties":
        return f"must have at least {expected} propert{'y' if expected == 1 else 'ies'}"
    if rule == "pattern":
        return f"{value!r} does not match pattern {expected!r}"
    if rule == "uniqueItems":
        return "items must be unique"
    if rule == "dependentRequired" and isinstance(value, dict):
        given = next((k for k, needs in expected.items() if k in value), "")
        missing = [n for n in expected.get(given, []) if n not in value]
        return f"missing properties {_listed(missing)} (required with '{given}')"
    return str(error.message)


def _declared(schema: object, raw: JSON, seen: frozenset[str] = frozenset()) -> set[str]:
    """The property names a schema declares, through $ref, allOf/anyOf/oneOf and if/then."""
    if not isinstance(schema, dict):
        return set()
    names = set(schema.get("properties", {}))
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#") and ref not in seen:
        names |= _declared(_resolve(raw, ref[1:]), raw, seen | {ref})
    for key in ("allOf", "anyOf", "oneOf"):
        for part in schema.get(key, []):
            names |= _declared(part, raw, seen)
    for key in ("if", "then", "else"):
        names |= _declared(schema.get(key), raw, seen)
    return names


def _listed(names: Iterable[object]) -> str:
    return ", ".join(repr(name) for name in names)


def _article(kind: str) -> str:
    return {"integer": "an integer", "object": "an object", "array": "an array",
            "null": "null"}.get(kind, f"a {kind}")  # fmt: skip


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _plain(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _escape(template: str) -> str:
    return template.replace("~", "~0").replace("/", "~1")


def _deref(root: JSON, schema: JSON) -> JSON:
    while "$ref" in schema and str(schema["$ref"]).startswith("#"):
        schema = _resolve(root, str(schema["$ref"])[1:])
    return schema


def _resolve(root: JSON, pointer: str) -> JSON:
    node: Any = root
    for part in pointer.strip("/").split("/"):
        key = part.replace("~1", "/").replace("~0", "~")
        node = node[int(key)] if isinstance(node, list) else node[key]
    return dict(node)
