"""Request bodies checked as a strict server would: required fields, types, ranges, known
flavors, unknown fields refused. Every failure is an ``Invalid`` whose text is the 400
``message``; a client that sends what production would refuse must fail here first."""

from __future__ import annotations

from typing import Any

from ondemand.sandbox.ovh.checks import (
    Invalid,
    boolean,
    command,
    env_vars,
    generated_name,
    keys,
    label_key,
    label_value,
    labels,
    obj,
    text,
    whole,
    without_nulls,
)
from ondemand.sandbox.ovh.parts import (
    deployment_strategy,
    probe,
    resources,
    scaling_strategy,
    volumes,
)

__all__ = [
    "Invalid",
    "app_spec",
    "keys",
    "label_key",
    "label_value",
    "obj",
    "resources",
    "scaling_strategy",
    "text",
    "update_input",
]

_SPEC_FIELDS = {
    "image",
    "name",
    "command",
    "envVars",
    "grpcPort",
    "defaultHttpPort",
    "unsecureHttp",
    "labels",
    "probe",
    "livenessProbe",
    "resources",
    "scalingStrategy",
    "deploymentStrategy",
    "volumes",
    "partnerId",
}
_UPDATE_FIELDS = {
    "url",
    "envVars",
    "defaultHttpPort",
    "grpcPort",
    "flavor",
    "gpu",
    "cpu",
    "probe",
    "livenessProbe",
    "command",
    "deploymentStrategy",
}
DEFAULT_HTTP_PORT = 8080


def app_spec(body: object) -> dict[str, Any]:
    """A create body (AppSpec) → the spec as stored and echoed, defaults filled in."""
    data = without_nulls(obj(body, "the request body"))
    if "region" in data:
        raise Invalid(
            "unknown field(s) in AppSpec: region (the AI API takes the region from "
            "its host; 'region' belongs to the OVHcloud API's AppSpecInput)"
        )
    keys(data, _SPEC_FIELDS, "AppSpec")
    if "image" not in data:
        raise Invalid("image is required")
    port = data.get("defaultHttpPort", DEFAULT_HTTP_PORT)
    spec: dict[str, Any] = {
        "image": text(data["image"], "image"),
        "name": text(data["name"], "name") if "name" in data else generated_name(),
        "defaultHttpPort": whole(port, "defaultHttpPort", 1, 65535),
        "unsecureHttp": boolean(data.get("unsecureHttp", False), "unsecureHttp"),
        "envVars": env_vars(data.get("envVars", []), "envVars"),
        "labels": labels(data.get("labels", {})),
        "resources": resources(data.get("resources", {})),
        "scalingStrategy": scaling_strategy(
            data.get("scalingStrategy", {"fixed": {"replicas": 1}})
        ),
        "deploymentStrategy": deployment_strategy(data.get("deploymentStrategy", {})),
        "volumes": volumes(data.get("volumes", [])),
    }
    if "command" in data:
        spec["command"] = command(data["command"])
    if "grpcPort" in data:
        spec["grpcPort"] = whole(data["grpcPort"], "grpcPort", 1, 65535)
    for name in ("probe", "livenessProbe"):
        if name in data:
            spec[name] = probe(data[name], name)
    if "partnerId" in data:
        spec["partnerId"] = text(data["partnerId"], "partnerId")
    return spec


def update_input(body: object) -> dict[str, Any]:
    """A flat UpdateInput, checked; applying it is the engine's part."""
    data = obj(body, "the request body")
    keys(data, _UPDATE_FIELDS, "UpdateInput")
    out: dict[str, Any] = {}
    given = without_nulls(data)
    if "url" in given:
        out["url"] = text(given["url"], "url")
    if "envVars" in given:
        out["envVars"] = env_vars(given["envVars"], "envVars", patch=True)
    for name in ("defaultHttpPort", "grpcPort"):
        if name in given:
            out[name] = whole(given[name], name, 1, 65535)
    for name in ("flavor", "gpu", "cpu"):
        if name in given:
            out[name] = given[name]
    for name in ("probe", "livenessProbe"):
        if name in given:
            out[name] = probe(given[name], name)
    if "command" in given:
        out["command"] = command(given["command"])
    if "deploymentStrategy" in given:
        out["deploymentStrategy"] = deployment_strategy(given["deploymentStrategy"])
    return out
