"""Checks of the AppSpec's nested objects: probes, strategies, volumes and resources."""

from __future__ import annotations

from typing import Any

from ondemand.sandbox.ovh.checks import Invalid, boolean, keys, obj, text, whole, without_nulls
from ondemand.sandbox.ovh.flavors import (
    DEFAULT_CPU_FLAVOR,
    DEFAULT_GPU_FLAVOR,
    FLAVORS,
    Flavor,
    filled_resources,
)

_RESOURCE_FIELDS = {
    "cpu",
    "gpu",
    "flavor",
    "gpuModel",
    "gpuBrand",
    "gpuMemory",
    "memory",
    "ephemeralStorage",
    "publicNetwork",
    "privateNetwork",
}
_PROBE_FIELDS = {
    "path",
    "port",
    "failureThreshold",
    "initialDelaySeconds",
    "periodSeconds",
    "successThreshold",
    "timeoutSeconds",
}
_AUTOMATIC_FIELDS = {
    "replicasMin",
    "replicasMax",
    "resourceType",
    "averageUsageTarget",
    "customMetrics",
    "scaleUpStabilizationWindowSeconds",
    "scaleDownStabilizationWindowSeconds",
    "cooldownPeriodSeconds",
}
_VOLUME_SOURCES = ("dataStore", "publicGit", "publicSwift", "standalone", "privateSwift")
_MAX_GPU = 4
_MAX_CPU = 12
_MAX_REPLICAS = 10
DEFAULT_DEPLOYMENT = {"maxSurge": "25%", "maxUnavailable": "25%", "progressDeadlineSeconds": 600}


def probe(value: object, where: str) -> dict[str, Any]:
    data = without_nulls(obj(value, where))
    keys(data, _PROBE_FIELDS, where)
    out: dict[str, Any] = {}
    if "path" in data:
        out["path"] = text(data["path"], f"{where}.path")
        if not out["path"].startswith("/"):
            raise Invalid(f"{where}.path must start with '/'")
    if "port" in data:
        out["port"] = whole(data["port"], f"{where}.port", 1, 65535)
    for name in sorted(_PROBE_FIELDS - {"path", "port"}):
        if name in data:
            out[name] = whole(data[name], f"{where}.{name}", 0)
    return out


def deployment_strategy(value: object, where: str = "deploymentStrategy") -> dict[str, Any]:
    data = without_nulls(obj(value, where))
    keys(
        data,
        {"maxSurge", "maxUnavailable", "progressDeadlineSeconds", "terminationGracePeriodSeconds"},
        where,
    )
    out = dict(DEFAULT_DEPLOYMENT)
    for name in ("maxSurge", "maxUnavailable"):
        if name in data:
            item = data[name]
            if isinstance(item, bool) or not isinstance(item, int | str):
                raise Invalid(f"{where}.{name} must be a count or a percentage such as '25%'")
            out[name] = item
    if "progressDeadlineSeconds" in data:
        out["progressDeadlineSeconds"] = whole(
            data["progressDeadlineSeconds"], f"{where}.progressDeadlineSeconds", 1
        )
    if "terminationGracePeriodSeconds" in data:
        out["terminationGracePeriodSeconds"] = whole(
            data["terminationGracePeriodSeconds"], f"{where}.terminationGracePeriodSeconds", 0
        )
    return out


def scaling_strategy(value: object, where: str = "scalingStrategy") -> dict[str, Any]:
    data = without_nulls(obj(value, where))
    keys(data, {"fixed", "automatic"}, where)
    if len(data) != 1:
        raise Invalid(
            f"{where} must have exactly one of 'fixed' or 'automatic'"
            + (" (both were given)" if len(data) == 2 else "")
        )
    if "fixed" in data:
        fixed = without_nulls(obj(data["fixed"], f"{where}.fixed"))
        keys(fixed, {"replicas"}, f"{where}.fixed")
        if "replicas" not in fixed:
            raise Invalid(f"{where}.fixed.replicas is required")
        return {
            "fixed": {
                "replicas": whole(fixed["replicas"], f"{where}.fixed.replicas", 1, _MAX_REPLICAS)
            }
        }
    auto = without_nulls(obj(data["automatic"], f"{where}.automatic"))
    keys(auto, _AUTOMATIC_FIELDS, f"{where}.automatic")
    out: dict[str, Any] = {}
    for name in ("replicasMin", "replicasMax"):
        if name not in auto:
            raise Invalid(f"{where}.automatic.{name} is required")
    out["replicasMin"] = whole(
        auto["replicasMin"], f"{where}.automatic.replicasMin", 0, _MAX_REPLICAS
    )
    out["replicasMax"] = whole(
        auto["replicasMax"],
        f"{where}.automatic.replicasMax",
        max(1, out["replicasMin"]),
        _MAX_REPLICAS,
    )
    if "customMetrics" in auto:
        out["customMetrics"] = obj(auto["customMetrics"], f"{where}.automatic.customMetrics")
    elif "resourceType" not in auto or "averageUsageTarget" not in auto:
        raise Invalid(
            f"{where}.automatic needs resourceType and averageUsageTarget (or customMetrics)"
        )
    if "resourceType" in auto:
        if auto["resourceType"] not in ("CPU", "RAM"):
            raise Invalid(f"{where}.automatic.resourceType must be CPU or RAM")
        out["resourceType"] = auto["resourceType"]
    if "averageUsageTarget" in auto:
        out["averageUsageTarget"] = whole(
            auto["averageUsageTarget"], f"{where}.automatic.averageUsageTarget", 1, 100
        )
    for name in sorted(_AUTOMATIC_FIELDS - set(out) - {"resourceType", "averageUsageTarget"}):
        if name in auto and name != "customMetrics":
            out[name] = whole(auto[name], f"{where}.automatic.{name}", 0, 3600)
    return {"automatic": out}


def _store(data: dict[str, Any], where: str, required: tuple[str, ...]) -> dict[str, Any]:
    given = without_nulls(data)
    for name in required:
        text(given.get(name), f"{where}.{name}")
    for name, value in given.items():
        if isinstance(value, bool):
            continue
        text(value, f"{where}.{name}", empty=name == "prefix")
    return given


def volumes(value: object, where: str = "volumes") -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise Invalid(f"{where} must be a list")
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, item in enumerate(value):
        at = f"{where}[{index}]"
        data = without_nulls(obj(item, at))
        keys(
            data,
            {
                "mountPath",
                "permission",
                "cache",
                "targetDataStore",
                "targetPrivateSwift",
                *_VOLUME_SOURCES,
            },
            at,
        )
        mount = text(data.get("mountPath"), f"{at}.mountPath")
        if not mount.startswith("/"):
            raise Invalid(f"{at}.mountPath must be an absolute path (start with '/')")
        if mount in seen:
            raise Invalid(f"{at}.mountPath {mount} is mounted twice")
        seen.add(mount)
        if data.get("permission") not in ("RO", "RW", "RWD"):
            raise Invalid(f"{at}.permission must be RO, RW or RWD, got {data.get('permission')!r}")
        sources = [name for name in _VOLUME_SOURCES if name in data]
        if len(sources) != 1:
            raise Invalid(
                f"{at} must have exactly one source ({', '.join(_VOLUME_SOURCES)}); "
                f"got {', '.join(sources) or 'none'}"
            )
        source = sources[0]
        body = obj(data[source], f"{at}.{source}")
        required = {
            "dataStore": ("alias", "container"),
            "publicGit": ("url",),
            "publicSwift": ("url",),
            "standalone": (),
            "privateSwift": ("container", "region"),
        }[source]
        volume: dict[str, Any] = {
            "mountPath": mount,
            "permission": data["permission"],
            "cache": boolean(data.get("cache", False), f"{at}.cache"),
            source: _store(body, f"{at}.{source}", required),
        }
        for target in ("targetDataStore", "targetPrivateSwift"):
            if target in data:
                volume[target] = _store(
                    obj(data[target], f"{at}.{target}"),
                    f"{at}.{target}",
                    ("alias", "container")
                    if target == "targetDataStore"
                    else ("container", "region"),
                )
        out.append(volume)
    return out


def resources(value: object, current: dict[str, Any] | None = None) -> dict[str, Any]:
    """Pick the flavor and the unit count; the rest is the flavor's (not user-tunable)."""
    data = without_nulls(obj(value, "resources"))
    keys(data, _RESOURCE_FIELDS, "resources")
    gpu = whole(data["gpu"], "resources.gpu", 0, _MAX_GPU) if "gpu" in data else None
    cpu = whole(data["cpu"], "resources.cpu", 1, _MAX_CPU) if "cpu" in data else None
    if "flavor" in data:
        name = text(data["flavor"], "resources.flavor")
        if name not in FLAVORS:
            raise Invalid(f"unknown flavor {name!r}: this region offers {', '.join(FLAVORS)}")
        flavor = FLAVORS[name]
    elif current is not None:
        flavor = FLAVORS[current["flavor"]]
        if gpu == 0 and flavor.is_gpu:
            flavor = FLAVORS[DEFAULT_CPU_FLAVOR]
        elif gpu and not flavor.is_gpu:
            flavor = FLAVORS[DEFAULT_GPU_FLAVOR]
    elif gpu == 0 or (gpu is None and cpu is not None):
        flavor = FLAVORS[DEFAULT_CPU_FLAVOR]
    else:
        flavor = FLAVORS[DEFAULT_GPU_FLAVOR]
    return filled_resources(flavor, _units(flavor, gpu, cpu, data, current))


def _units(
    flavor: Flavor,
    gpu: int | None,
    cpu: int | None,
    data: dict[str, Any],
    current: dict[str, Any] | None,
) -> int:
    if flavor.is_gpu:
        if gpu == 0:
            raise Invalid(f"flavor {flavor.id} is a GPU flavor: resources.gpu must be 1-{_MAX_GPU}")
        model = data.get("gpuModel")
        if model is not None and model != flavor.gpu_model:
            raise Invalid(
                f"resources.gpuModel {model!r} does not match flavor {flavor.id} "
                f"({flavor.gpu_model})"
            )
        same = current is not None and current.get("flavor") == flavor.id
        units = gpu if gpu is not None else (int(current["gpu"]) if same and current else 1)
    else:
        if gpu:
            raise Invalid(f"flavor {flavor.id} has no GPU: resources.gpu must be 0")
        same = current is not None and current.get("flavor") == flavor.id
        units = cpu if cpu is not None else (int(current["cpu"]) if same and current else 1)
    if units > flavor.max:
        raise Invalid(f"flavor {flavor.id} allows at most {flavor.max} per app, got {units}")
    return units
