"""Bodies of ``POST /v2/network-volumes`` and ``PATCH /v2/network-volumes/{id}``."""

from __future__ import annotations

from typing import Any

from ondemand.sandbox.runpod import catalog, schema
from ondemand.sandbox.runpod.catalog import HIGH_PERFORMANCE, STANDARD
from ondemand.sandbox.runpod.problems import ApiError, Invalid

MIN_SIZE, MAX_SIZE = 10, 4096


def create(body: object) -> tuple[str, int, str, str]:
    """(name, size, data center, type)."""
    required = ("name", "size", "dataCenter")
    data = schema.obj(body, "$", (*required, "type"), required)
    name = schema.text(data["name"], "$.name", min_length=1)
    size = schema.integer(data["size"], "$.size", minimum=MIN_SIZE, maximum=MAX_SIZE)
    dc_id = schema.text(data["dataCenter"], "$.dataCenter", min_length=1)
    dc = catalog.DATA_CENTER_IDS.get(dc_id)
    if dc is None or not dc.volume_types:
        why = "is not a data center" if dc is None else "does not support network volumes"
        raise ApiError(
            400,
            f"{dc_id!r} {why}; data centers with network volumes: "
            f"{catalog.listed(catalog.VOLUME_DATA_CENTERS)}",
        )
    kind = dc.volume_types[0]
    if "type" in data:
        kind = schema.enum(data["type"], "$.type", (STANDARD, HIGH_PERFORMANCE))
        if kind not in dc.volume_types:
            raise ApiError(
                400,
                f"{dc_id} has no {kind} network volumes; its types: "
                f"{catalog.listed(dc.volume_types)}",
            )
    return name, size, dc_id, kind


def update(body: object, size_now: int) -> dict[str, Any]:
    data = schema.obj(body, "$", ("name", "size"))
    if not data:
        raise Invalid("$", "at least one of 'name', 'size' is required")
    out: dict[str, Any] = {}
    if "name" in data:
        out["name"] = schema.text(data["name"], "$.name", min_length=1)
    if "size" in data:
        size = schema.integer(data["size"], "$.size", minimum=MIN_SIZE, maximum=MAX_SIZE)
        if size < size_now:
            raise ApiError(
                400, f"a network volume cannot shrink: size {size} is below its {size_now} GB"
            )
        out["size"] = size
    return out
