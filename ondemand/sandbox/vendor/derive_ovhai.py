"""Derive an OpenAPI 3.1 document from OVHcloud's generated AI SDK (ovh/ovhai-python-sdk).

OVH publishes no OpenAPI document for the AI API in a repository; its Python SDK is generated
from one (openapi-python-client), so the document can be read back out of it mechanically:

* a model class (``ovhai/models/*.py``, an ``attrs`` class) is an object schema: its annotated
  fields are the properties, a field without a default is required, the JSON names are the
  keys ``from_dict`` pops; ``Union[..., None]`` adds ``null``, ``Unset`` marks it optional;
* a ``(str, Enum)`` class is a string enum;
* every generated model keeps ``additional_properties``, which the generator emits unless the
  source schema said ``additionalProperties: false``: the objects are therefore left open;
* an operation (``ovhai/api/*/*.py``) is its ``_get_kwargs``: the method and URL it builds,
  its positional arguments (path parameters), its keyword-only ones (query parameters, with
  the names ``params[...]`` gives them) and the model of its ``body`` argument.

Run: ``python -m ondemand.sandbox.vendor.derive_ovhai <sdk checkout> <commit> > out.json``.
Nothing is executed from the SDK: its files are parsed, never imported.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path
from typing import Any

JSON = dict[str, Any]
_SCALARS: dict[str, JSON] = {
    "str": {"type": "string"},
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "bool": {"type": "boolean"},
    "datetime": {"type": "string", "format": "date-time"},
    "datetime.datetime": {"type": "string", "format": "date-time"},
    "Any": {},
    "File": {"type": "string", "format": "binary"},
}


def _json_keys(cls: ast.ClassDef) -> dict[str, str]:
    """Python field name -> JSON key, from what ``to_dict`` writes: ``{"key": field}`` and
    ``field_dict["key"] = field``."""
    keys: dict[str, str] = {}
    to_dict = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "to_dict")
    for node in ast.walk(to_dict):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and isinstance(value, ast.Name):
                    keys[value.id] = str(key.value)
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.targets[0], ast.Subscript)
            and ast.unparse(node.targets[0].value) == "field_dict"
            and isinstance(node.targets[0].slice, ast.Constant)
            and isinstance(node.value, ast.Name)
        ):
            keys[node.value.id] = str(node.targets[0].slice.value)
    return keys


def _type(node: ast.expr | None, enums: dict[str, JSON]) -> tuple[JSON, bool, bool]:
    """(schema, nullable, optional) of an annotation."""
    if node is None:
        return {}, False, False
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return _type(ast.parse(node.value, mode="eval").body, enums)
    if isinstance(node, ast.Constant) and node.value is None:
        return {}, True, False
    name = ast.unparse(node)
    if name == "Unset":
        return {}, False, True
    if name in _SCALARS:
        return dict(_SCALARS[name]), False, False
    if isinstance(node, ast.Subscript):
        outer = ast.unparse(node.value)
        inner = node.slice
        if outer == "Union":
            parts = inner.elts if isinstance(inner, ast.Tuple) else [inner]
            schemas, nullable, optional = [], False, False
            for part in parts:
                schema, null, unset = _type(part, enums)
                nullable, optional = nullable or null, optional or unset
                if schema or not (null or unset):
                    schemas.append(schema)
            if len(schemas) == 1:
                return schemas[0], nullable, optional
            return {"anyOf": schemas}, nullable, optional
        if outer in ("List", "list"):
            items, null, _ = _type(inner, enums)
            return {"type": "array", "items": _nullable(items) if null else items}, False, False
        if outer in ("Dict", "dict"):
            value = inner.elts[1] if isinstance(inner, ast.Tuple) else None
            values, null, _ = _type(value, enums)
            values = _nullable(values) if null else values
            return {"type": "object", "additionalProperties": values or True}, False, False
    if name in enums:
        return dict(enums[name]), False, False
    return {"$ref": f"#/components/schemas/{name}"}, False, False


def _nullable(schema: JSON) -> JSON:
    if "type" in schema and isinstance(schema["type"], str):
        return {**schema, "type": [schema["type"], "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def _model(cls: ast.ClassDef, enums: dict[str, JSON]) -> JSON:
    keys = _json_keys(cls)
    properties: JSON = {}
    required: list[str] = []
    extra: JSON | bool = True
    for stmt in cls.body:
        if not isinstance(stmt, ast.AnnAssign) or not isinstance(stmt.target, ast.Name):
            continue
        field = stmt.target.id
        schema, nullable, optional = _type(stmt.annotation, enums)
        if field == "additional_properties":
            extra = schema.get("additionalProperties", True)
            continue
        json_name = keys.get(field, field)
        properties[json_name] = _nullable(schema) if nullable else schema
        if stmt.value is None and not optional:
            required.append(json_name)
    out: JSON = {"type": "object", "properties": properties}
    if required:
        out["required"] = required
    if extra is not True:
        out["additionalProperties"] = extra
    return out


def _operation(tree: ast.Module, enums: dict[str, JSON]) -> tuple[str, str, JSON]:
    func = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_get_kwargs")
    method = url = ""
    query_names: dict[str, str] = {}
    for node in ast.walk(func):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "method":
                    method = str(ast.literal_eval(value)).lower()
                if isinstance(key, ast.Constant) and key.value == "url":
                    url = _template(value)
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.targets[0], ast.Subscript)
            and ast.unparse(node.targets[0].value) == "params"
            and isinstance(node.targets[0].slice, ast.Constant)
        ):
            source = ast.unparse(node.value).removeprefix("json_")
            query_names[source] = str(node.targets[0].slice.value)
    parameters: list[JSON] = []
    for arg in func.args.args:
        schema, _, _ = _type(arg.annotation, enums)
        parameters.append({"name": arg.arg, "in": "path", "required": True, "schema": schema})
    operation: JSON = {}
    for arg, default in zip(func.args.kwonlyargs, func.args.kw_defaults, strict=True):
        schema, nullable, optional = _type(arg.annotation, enums)
        if arg.arg == "body":
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": schema}},
            }
            continue
        if arg.arg in ("client",):
            continue
        parameters.append({
            "name": query_names.get(arg.arg, arg.arg),
            "in": "query",
            "required": default is None and not optional,
            "schema": _nullable(schema) if nullable else schema,
        })  # fmt: skip
    # The generator names path parameters after the URL's placeholders, snake-cased.
    for param in parameters:
        if param["in"] == "path":
            param["name"] = next(
                (p for p in re.findall(r"{(\w+)}", url) if _snake(p) == param["name"]),
                param["name"],
            )
    if parameters:
        operation["parameters"] = parameters
    return url, method, operation


def _template(node: ast.expr) -> str:
    if isinstance(node, ast.Constant):
        return str(node.value)
    assert isinstance(node, ast.JoinedStr)
    parts = []
    for value in node.values:
        if isinstance(value, ast.Constant):
            parts.append(str(value.value))
        elif isinstance(value, ast.FormattedValue):
            parts.append("{" + ast.unparse(value.value) + "}")
    return "".join(parts)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def derive(sdk: Path, commit: str) -> JSON:
    enums: dict[str, JSON] = {}
    classes: dict[str, ast.ClassDef] = {}
    for path in sorted((sdk / "ovhai" / "models").glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if not isinstance(node, ast.ClassDef):
                continue
            bases = {ast.unparse(b) for b in node.bases}
            if "Enum" in bases:
                values = [
                    s.value.value
                    for s in node.body
                    if isinstance(s, ast.Assign) and isinstance(s.value, ast.Constant)
                ]
                kind = "integer" if all(isinstance(v, int) for v in values) else "string"
                enums[node.name] = {"type": kind, "enum": values}
            else:
                classes[node.name] = node
    schemas: JSON = {name: _model(cls, enums) for name, cls in sorted(classes.items())}
    schemas.update({name: schema for name, schema in sorted(enums.items())})
    paths: JSON = {}
    for path in sorted((sdk / "ovhai" / "api").glob("*/*.py")):
        if path.name == "__init__.py":
            continue
        url, method, operation = _operation(ast.parse(path.read_text()), enums)
        operation["operationId"] = path.stem
        paths.setdefault(url, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "OVHcloud AI API (derived from the generated Python SDK)",
            "version": commit,
            "description": (
                "Derived mechanically by ondemand/sandbox/vendor/derive_ovhai.py from "
                f"github.com/ovh/ovhai-python-sdk at {commit} (Apache-2.0). Objects are open "
                "(the SDK keeps additional properties)."
            ),
        },
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": schemas},
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m ondemand.sandbox.vendor.derive_ovhai <sdk checkout> <commit>")
        return 2
    document = derive(Path(argv[0]), argv[1])
    sys.stdout.write(json.dumps(document, indent=1, sort_keys=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
