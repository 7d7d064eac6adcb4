"""Bodies of ``POST /v2/serverless`` and ``PATCH /v2/serverless/{id}``.

The front end has already checked each body against CreateEndpointRequest /
UpdateEndpointRequest of the vendored document (runpod/docs api-reference-v2/openapi.json @
a900806e, Frontdoor v2.9.0); what is left here is the rules the document states in words
(400s) and the defaults. Where these checks and the document disagreed, the document won:

- ``gpu`` is not required by the document (a CPU endpoint sends ``cpu``): a body with
  neither, or with ``cpu``, is a 400 here (CPU endpoints are not emulated), not a 422;
- ``cpu`` and ``templateId`` are fields of both bodies (400 here: not emulated);
- ``workers.idleTimeout`` is 1–3600 (was 0–3600); ``timeout`` has no lower bound;
- ``gpu.excludedTypes`` must name types of the selected pools (400), not any GPU type;
- a PATCH's ``gpu`` may omit ``pools``: the pools and exclusions are then kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ondemand.sandbox.runpod import catalog, schema
from ondemand.sandbox.runpod.container import (
    CONTAINER_FIELDS,
    container,
    data_centers,
    no_template,
    pinned_volumes,
)
from ondemand.sandbox.runpod.model import ENDPOINT_TYPES, LOAD_BALANCER, Volume
from ondemand.sandbox.runpod.problems import ApiError, Invalid

UPDATE_FIELDS = (
    *CONTAINER_FIELDS, "name", "gpu", "workers", "scaling", "flashboot", "timeout",
    "networkVolumes", "dataCenterIds", "cpu", "templateId",
)  # fmt: skip
CREATE_FIELDS = (*UPDATE_FIELDS, "type")
FLASHBOOT = ("OFF", "FLASHBOOT", "PRIORITY_FLASHBOOT")
SCALER_TYPES = ("QUEUE_DELAY", "REQUEST_COUNT")
RELEASE_FIELDS = (*CONTAINER_FIELDS, "gpu", "networkVolumes", "dataCenterIds")
"""Changes that make a new release: workers running the old one are stale."""
WORKER_DEFAULTS = {"min": 0, "max": 3, "idleTimeout": 10}


def create(body: object, volumes: Mapping[str, Volume]) -> tuple[str, str, dict[str, Any]]:
    """(name, type, config) from a create body, defaults filled in."""
    data = schema.obj(body, "$", CREATE_FIELDS, required=("name", "type", "scaling"))
    no_template(data)
    no_cpu(data)
    if "image" not in data:
        raise Invalid("$", "missing properties 'image' (required unless templateId is given)")
    name = schema.text(data["name"], "$.name", min_length=1)
    kind = schema.enum(data["type"], "$.type", ENDPOINT_TYPES)
    config: dict[str, Any] = {
        "image": "", "args": "", "disk": 20, "ports": [], "env": {}, "registry": None,
    }  # fmt: skip
    container(data, config)
    config["gpu"] = gpu(data["gpu"])
    config["workers"] = workers(data.get("workers", {}), dict(WORKER_DEFAULTS))
    config["scaling"] = scaling(data["scaling"], kind, {}, creating=True)
    config["flashboot"] = schema.enum(data.get("flashboot", "OFF"), "$.flashboot", FLASHBOOT)
    config["timeout"] = schema.integer(data.get("timeout", 300000), "$.timeout")
    config["dataCenterIds"] = data_centers(data.get("dataCenterIds", []), "$.dataCenterIds")
    config["networkVolumes"] = volume_ids(data.get("networkVolumes", []), config, volumes)
    return name, kind, config


def update(
    body: object, kind: str, current: Mapping[str, Any], volumes: Mapping[str, Volume]
) -> tuple[str | None, dict[str, Any], bool]:
    """(new name, new config, whether it is a new release) from a PATCH body: only the
    fields present change; ``workers`` and ``scaling`` change key by key."""
    data = schema.obj(body, "$", UPDATE_FIELDS)
    no_template(data)
    if "cpu" in data:
        raise ApiError(400, "the compute family of an endpoint cannot change: it has gpu")
    name = schema.text(data["name"], "$.name", min_length=1) if "name" in data else None
    config = {key: value for key, value in current.items()}
    container(data, config)
    if "gpu" in data:
        config["gpu"] = gpu(data["gpu"], current.get("gpu"))
    if "workers" in data:
        config["workers"] = workers(data["workers"], dict(current["workers"]))
    if "scaling" in data:
        config["scaling"] = scaling(data["scaling"], kind, current["scaling"], creating=False)
    if "flashboot" in data:
        config["flashboot"] = schema.enum(data["flashboot"], "$.flashboot", FLASHBOOT)
    if "timeout" in data:
        config["timeout"] = schema.integer(data["timeout"], "$.timeout")
    if "dataCenterIds" in data:
        config["dataCenterIds"] = data_centers(data["dataCenterIds"], "$.dataCenterIds")
    if "networkVolumes" in data or "dataCenterIds" in data:
        config["networkVolumes"] = volume_ids(
            data.get("networkVolumes", config["networkVolumes"]), config, volumes
        )
    release = any(config.get(key) != current.get(key) for key in RELEASE_FIELDS)
    return name, config, release


def no_cpu(data: dict[str, Any]) -> None:
    if "cpu" in data or "gpu" not in data:
        raise ApiError(
            400,
            "the sandbox emulates GPU endpoints only: send gpu (CPU endpoints are not emulated)",
        )


def gpu(value: object, current: dict[str, Any] | None = None) -> dict[str, Any]:
    """A create's gpu, or a PATCH's merged into ``current`` (pools and their exclusions are
    one selection: kept when ``pools`` is absent, replaced together when it is given)."""
    allowed = ("pools", "count", "excludedTypes", "allowedCudaVersions", "minCudaVersion")
    data = schema.obj(value, "$.gpu", allowed, required=() if current else ("pools",))
    if current and "pools" not in data:
        kept = {k: v for k, v in current.items() if k in ("pools", "excludedTypes")}
        data = {**kept, **data}
    pools = schema.strings(data["pools"], "$.gpu.pools", min_items=1)
    for pool in pools:
        if pool not in catalog.POOLS:
            raise ApiError(
                400,
                f"unknown GPU pool {pool!r} in gpu.pools (pools are not GPU type ids); "
                f"valid pools: {catalog.listed(catalog.POOLS)}",
            )
    out: dict[str, Any] = {
        "pools": pools,
        "count": schema.integer(data.get("count", 1), "$.gpu.count", minimum=1),
    }
    if "excludedTypes" in data:
        excluded = [t.strip() for t in schema.strings(data["excludedTypes"], "$.gpu.excludedTypes")]
        in_pools = [t for pool in pools for t in catalog.POOLS[pool]]
        for type_id in excluded:
            if type_id not in in_pools:
                raise ApiError(
                    400,
                    f"GPU type {type_id!r} in gpu.excludedTypes is not in gpu.pools; valid GPU "
                    f"types: {catalog.listed(in_pools)}",
                )
        if not any(t not in excluded for pool in pools for t in catalog.POOLS[pool]):
            raise ApiError(400, "gpu.excludedTypes excludes every GPU type of gpu.pools")
        out["excludedTypes"] = excluded
    if "allowedCudaVersions" in data:
        out["allowedCudaVersions"] = schema.strings(
            data["allowedCudaVersions"], "$.gpu.allowedCudaVersions"
        )
    if "minCudaVersion" in data:
        out["minCudaVersion"] = schema.text(data["minCudaVersion"], "$.gpu.minCudaVersion")
        if out.get("allowedCudaVersions"):
            raise ApiError(
                400, "gpu.minCudaVersion and a non-empty gpu.allowedCudaVersions exclude each other"
            )
    return out


def workers(value: object, merged: dict[str, Any]) -> dict[str, Any]:
    data = schema.obj(value, "$.workers", ("min", "max", "idleTimeout"))
    if "min" in data:
        merged["min"] = schema.integer(data["min"], "$.workers.min", minimum=0)
    if "max" in data:
        merged["max"] = schema.integer(data["max"], "$.workers.max", minimum=0)
    if "idleTimeout" in data:
        merged["idleTimeout"] = schema.integer(
            data["idleTimeout"], "$.workers.idleTimeout", minimum=1, maximum=3600
        )
    if merged["min"] > merged["max"]:
        raise ApiError(
            400, f"workers.min ({merged['min']}) must not exceed workers.max ({merged['max']})"
        )
    return merged


def scaling(
    value: object, kind: str, current: Mapping[str, Any], *, creating: bool
) -> dict[str, Any]:
    data = schema.obj(value, "$.scaling", ("type", "requestCount", "queueDelay"))
    merged = dict(current)
    if "type" in data and data["type"] != merged.get("type"):
        merged = {}
    merged.update(data)
    if "type" not in merged:
        raise Invalid("$.scaling", "missing properties 'type'")
    scaler = schema.enum(merged["type"], "$.scaling.type", SCALER_TYPES)
    if scaler == "REQUEST_COUNT":
        if "queueDelay" in merged:
            raise Invalid("$.scaling", "additional properties 'queueDelay' not allowed")
        if "requestCount" not in merged:
            raise Invalid("$.scaling", "missing properties 'requestCount'")
        count = schema.integer(merged["requestCount"], "$.scaling.requestCount", minimum=1)
        out: dict[str, Any] = {"type": scaler, "requestCount": count}
    else:
        if "requestCount" in merged:
            raise Invalid("$.scaling", "additional properties 'requestCount' not allowed")
        if "queueDelay" not in merged:
            raise Invalid("$.scaling", "missing properties 'queueDelay'")
        delay = schema.number(merged["queueDelay"], "$.scaling.queueDelay", minimum=0.5)
        out = {"type": scaler, "queueDelay": delay}
    if kind == LOAD_BALANCER and scaler != "REQUEST_COUNT":
        problem = "a LOAD_BALANCER endpoint has no queue: its scaling.type must be REQUEST_COUNT"
        if creating:
            raise Invalid("$.scaling.type", problem)
        raise ApiError(400, problem)
    return out


def volume_ids(
    value: object, config: Mapping[str, Any], volumes: Mapping[str, Volume]
) -> list[str]:
    ids = schema.strings(value, "$.networkVolumes")
    pinned_volumes(ids, volumes, config["dataCenterIds"], "endpoint")
    return ids
