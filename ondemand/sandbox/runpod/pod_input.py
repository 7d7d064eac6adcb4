"""Bodies of ``POST /v2/pods`` and ``PATCH /v2/pods/{id}`` (the spec's CreatePodRequest and
UpdatePodRequest, with the mount rules its Mounts schema describes).

The front end has checked the shape against the vendored document first. Where these checks
disagreed with it, the document won: ``startSsh`` and ``startJupyter`` are create fields
(accepted; the emulated pods have no SSH or Jupyter), and a PATCH may carry ``templateId``
(400 here: templates are not emulated). Mount paths must be absolute: the document is
silent, the sandbox keeps the rule."""

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
from ondemand.sandbox.runpod.model import Volume
from ondemand.sandbox.runpod.problems import ApiError, Invalid

CREATE_FIELDS = (
    *CONTAINER_FIELDS, "name", "mounts", "gpu", "cpu", "cloud", "dataCenterIds",
    "globalNetworking", "templateId", "startSsh", "startJupyter",
)  # fmt: skip
UPDATE_FIELDS = (*CONTAINER_FIELDS, "name", "mounts", "locked", "globalNetworking", "templateId")
CLOUDS = ("SECURE", "COMMUNITY")


def create(body: object, volumes: Mapping[str, Volume]) -> tuple[str, dict[str, Any], str]:
    """(name, spec, data center) from a create body."""
    data = schema.obj(body, "$", CREATE_FIELDS, required=("name", "image"))
    no_template(data)
    name = schema.text(data["name"], "$.name", min_length=1)
    if ("gpu" in data) == ("cpu" in data):
        raise ApiError(400, "exactly one of gpu or cpu must be set")
    if "cpu" in data:
        raise ApiError(400, "the sandbox emulates GPU pods only: send gpu, not cpu")
    spec: dict[str, Any] = {
        "image": "", "args": "", "disk": 50, "ports": [], "env": {}, "registry": None,
    }  # fmt: skip
    container(data, spec)
    spec["cloud"] = schema.enum(data.get("cloud", "SECURE"), "$.cloud", CLOUDS)
    spec["gpu"] = gpu(data["gpu"], spec["cloud"])
    spec["dataCenterIds"] = data_centers(data.get("dataCenterIds", []), "$.dataCenterIds")
    spec["globalNetworking"] = schema.boolean(
        data.get("globalNetworking", False), "$.globalNetworking"
    )
    spec["locked"] = False
    mounts = mounts_of(data.get("mounts", {}))
    spec["mounts"] = mounts
    place = spec["dataCenterIds"][0] if spec["dataCenterIds"] else catalog.DEFAULT_DATA_CENTER
    network = [m["volumeId"] for m in mounts.get("network", [])]
    if network:
        if spec["cloud"] != "SECURE":
            raise ApiError(400, "network volumes can only be attached to SECURE cloud pods")
        (volume,) = pinned_volumes(network, volumes, spec["dataCenterIds"], "pod")
        place = volume.data_center
    return name, spec, place


def update(body: object, current: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """(new name, new spec): only the fields present change."""
    data = schema.obj(body, "$", UPDATE_FIELDS)
    no_template(data)
    name = schema.text(data["name"], "$.name", min_length=1) if "name" in data else None
    spec = dict(current)
    container(data, spec)
    if "locked" in data:
        spec["locked"] = schema.boolean(data["locked"], "$.locked")
    if "globalNetworking" in data:
        spec["globalNetworking"] = schema.boolean(data["globalNetworking"], "$.globalNetworking")
    if "mounts" in data:
        spec["mounts"] = patched_mounts(data["mounts"], current.get("mounts") or {})
    return name, spec


def gpu(value: object, cloud: str) -> dict[str, Any]:
    allowed = ("id", "count", "allowedCudaVersions", "minCudaVersion")
    data = schema.obj(value, "$.gpu", allowed, required=("id",))
    type_id = schema.text(data["id"], "$.gpu.id")
    found = catalog.GPUS.get(type_id)
    if found is None:
        pools = f" ({type_id} looks like a serverless pool id)" if type_id in catalog.POOLS else ""
        raise ApiError(
            400,
            f"unknown GPU type {type_id!r}{pools}; valid GPU types: {catalog.listed(catalog.GPUS)}",
        )
    count = schema.integer(data.get("count", 1), "$.gpu.count", minimum=1)
    limit = found.to_api()["maxCount"]["community" if cloud == "COMMUNITY" else "secure"]
    if count > limit:
        raise ApiError(
            400, f"{type_id} offers at most {limit} GPU(s) per pod on {cloud} cloud, not {count}"
        )
    out: dict[str, Any] = {"id": type_id, "count": count}
    if "allowedCudaVersions" in data:
        out["allowedCudaVersions"] = schema.strings(
            data["allowedCudaVersions"], "$.gpu.allowedCudaVersions"
        )
    if "minCudaVersion" in data:
        out["minCudaVersion"] = schema.text(data["minCudaVersion"], "$.gpu.minCudaVersion")
    return out


def mounts_of(value: object) -> dict[str, Any]:
    data = schema.obj(value, "$.mounts", ("persistent", "network"))
    out: dict[str, Any] = {}
    if "persistent" in data:
        persistent = schema.obj(
            data["persistent"], "$.mounts.persistent", ("size", "path"), ("size", "path")
        )
        out["persistent"] = {
            "size": schema.integer(persistent["size"], "$.mounts.persistent.size", minimum=10),
            "path": _path(persistent["path"], "$.mounts.persistent.path"),
        }
    if "network" in data:
        entries = data["network"]
        if not isinstance(entries, list):
            raise Invalid("$.mounts.network", "expected an array")
        if len(entries) > 1:
            raise Invalid("$.mounts.network", "must have at most 1 item(s)")
        network = []
        for index, entry in enumerate(entries):
            where = f"$.mounts.network[{index}]"
            item = schema.obj(entry, where, ("volumeId", "path"), ("volumeId", "path"))
            network.append(
                {
                    "volumeId": schema.text(item["volumeId"], f"{where}.volumeId"),
                    "path": _path(item["path"], f"{where}.path"),
                }
            )
        out["network"] = network
    if "persistent" in out and "network" in out:
        raise ApiError(400, "mounts.persistent and mounts.network are mutually exclusive")
    return out


def patched_mounts(value: object, current: Mapping[str, Any]) -> dict[str, Any]:
    wanted = mounts_of(value)
    if "network" in wanted and not wanted["network"]:
        raise ApiError(400, "mounts.network: [] would clear the mount, which is not supported")
    for kind in wanted:
        if kind not in current:
            raise ApiError(
                400, f"mounts.{kind}: the kind of mount is fixed when the pod is created"
            )
    if "network" in wanted:
        old, new = current["network"][0]["volumeId"], wanted["network"][0]["volumeId"]
        if old != new:
            raise ApiError(400, f"mounts.network: the volume of a pod ({old}) cannot change")
    return {**current, **wanted}


def _path(value: object, where: str) -> str:
    path = schema.text(value, where, min_length=1)
    if not path.startswith("/"):
        raise ApiError(400, f"{where[2:]}: a mount path must be absolute, got {path!r}")
    return path
