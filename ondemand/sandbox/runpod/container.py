"""The container settings every v2 resource shares (the spec's ContainerConfig), and the
placement rules that pods and endpoints both apply (data centers, network volumes)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ondemand.sandbox.runpod import catalog, schema
from ondemand.sandbox.runpod.model import Volume
from ondemand.sandbox.runpod.problems import ApiError

CONTAINER_FIELDS = ("image", "args", "disk", "ports", "env", "registry")
_PORT = re.compile(r"(\d{1,5})/(http|tcp)")


def container(body: Mapping[str, Any], out: dict[str, Any]) -> None:
    """Validate the container fields present in ``body`` into ``out``."""
    if "image" in body:
        out["image"] = schema.text(body["image"], "$.image", min_length=1)
    if "args" in body:
        out["args"] = schema.text(body["args"], "$.args")
    if "disk" in body:
        out["disk"] = schema.integer(body["disk"], "$.disk", minimum=1)
    if "ports" in body:
        out["ports"] = ports(body["ports"])
    if "env" in body:
        out["env"] = schema.string_map(body["env"], "$.env")
    if "registry" in body:
        out["registry"] = schema.optional_text(body["registry"], "$.registry")


def ports(value: object) -> list[str]:
    entries = schema.strings(value, "$.ports")
    seen: set[str] = set()
    for entry in entries:
        found = _PORT.fullmatch(entry)
        if found is None or not 0 < int(found[1]) < 65536:
            raise ApiError(
                400,
                f"invalid port {entry!r}: expected '<port>/http' or '<port>/tcp', e.g. 11434/http",
            )
        if found[1] in seen:
            raise ApiError(400, f"port {found[1]} is listed twice")
        seen.add(found[1])
    return entries


def no_template(body: Mapping[str, Any]) -> None:
    if "templateId" in body:
        template = schema.text(body["templateId"], "$.templateId")
        raise ApiError(
            400,
            f"template {template} not found (the sandbox has no templates: send image and "
            "the container fields instead)",
        )


def data_centers(value: object, where: str) -> list[str]:
    ids = schema.strings(value, where)
    for dc in ids:
        if dc not in catalog.DATA_CENTER_IDS:
            raise ApiError(
                400,
                f"unknown data center {dc!r}; valid data centers: "
                f"{catalog.listed(catalog.DATA_CENTER_IDS)}",
            )
    return ids


def pinned_volumes(
    ids: list[str], volumes: Mapping[str, Volume], dcs: list[str], what: str
) -> list[Volume]:
    """The volumes named, each in a distinct data center that the placement allows: a
    volume is locked to its data center, so it pins the workers or the pod there."""
    found: list[Volume] = []
    for volume_id in ids:
        volume = volumes.get(volume_id)
        if volume is None:
            raise ApiError(400, f"network volume {volume_id} not found")
        if any(v.data_center == volume.data_center for v in found):
            raise ApiError(
                400,
                f"network volumes {found[0].id} and {volume.id} are both in "
                f"{volume.data_center}: attach at most one network volume per data center",
            )
        if dcs and volume.data_center not in dcs:
            raise ApiError(
                400,
                f"network volume {volume.id} is in {volume.data_center}, which is not in the "
                f"{what}'s dataCenterIds ({catalog.listed(dcs)})",
            )
        found.append(volume)
    return found
