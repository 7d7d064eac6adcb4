"""What an OVH AI Deploy app is made of: its flavor, volumes and image, and when a change
to it needs the app recreated rather than updated."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ondemand.errors import ConfigError

# GPU models as users name them -> the flavor that carries one such GPU.
FLAVORS = {
    "L4": "l4-1-gpu", "L40S": "l40s-1-gpu", "A100": "a100-1-gpu", "A100-80GB": "a100-1-gpu",
    "H100": "h100-1-gpu", "V100S": "ai1-1-gpu", "TESLA-V100S": "ai1-1-gpu",
}  # fmt: skip
_VOLUME = re.compile(
    r"^(?P<container>[^@:]+)@(?P<alias>[A-Za-z0-9_-]+)(?:/(?P<prefix>[^:]*))?"
    r":(?P<mount>/[^:]*)(?::(?P<perm>ro|rw|rwd))?(?::(?P<cache>cache|no-cache))?$",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class Volume:
    container: str
    alias: str
    prefix: str | None
    mount: str
    permission: str
    cache: bool

    def to_api(self) -> dict[str, object]:
        source: dict[str, object] = {"alias": self.alias, "container": self.container}
        if self.prefix:
            source["prefix"] = self.prefix
        return {
            "dataStore": source,
            "mountPath": self.mount,
            "permission": self.permission,
            "cache": self.cache,
        }


def parse_volume(text: str) -> Volume:
    """``bucket@ALIAS[/prefix]:/mount[:ro|rw|rwd][:cache|no-cache]``, as ``ovhai -v`` reads
    it, except that the permission defaults to rw: Ollama must write its model cache."""
    match = _VOLUME.match(text.strip())
    if match is None or not match["mount"].strip("/"):
        raise ConfigError(
            f"invalid volume {text!r}",
            cause="OVH volumes are written container@ALIAS:/mount/path[:ro|rw|rwd][:cache]",
            hint="e.g. OLLAMA_VOLUME=ollama-cache@GRA:/var/lib/ollama:rw (ALIAS as "
            "'ovhai datastore list' shows it, in its case)",
        )
    return Volume(
        container=match["container"],
        # As written: OVH's own S3 guide names custom datastores in lower case
        # (``s3-gra-1az@1azgra``), and an alias is matched as the datastore was added.
        alias=match["alias"],
        prefix=match["prefix"] or None,
        mount=match["mount"].rstrip("/") or "/",
        permission=(match["perm"] or "rw").upper(),
        cache=(match["cache"] or "").lower() == "cache",
    )


def flavor_for(gpu: str, override: str | None) -> str:
    if override:
        return override
    flavor = FLAVORS.get(gpu.strip().upper())
    if flavor is None:
        raise ConfigError(
            f"OVH AI Deploy does not offer the GPU {gpu!r}",
            hint="use one of " + ", ".join(sorted(FLAVORS)) + ", or set ovh.flavor to a "
            "flavor id from 'ovhai capabilities flavor list'",
        )
    return flavor


def check_image(image: str | None) -> str:
    if not image:
        raise ConfigError(
            "no image to deploy",
            hint="build and push one with 'ondemand build --push -t REGISTRY/NAME:TAG', then "
            "set image in ondemand.yml, ONDEMAND_IMAGE or --image",
        )
    tail = image.rsplit("/", 1)[-1]
    if ":" not in tail and "@" not in tail:
        raise ConfigError(
            f"the image {image!r} has no tag",
            cause="AI Deploy nodes cache images by tag, so an untagged (latest) image may start "
            "an old build",
            hint="deploy a unique tag or a digest, e.g. the NAME:TAG that 'ondemand build' pushed",
        )
    return image


def digest(body: Mapping[str, object]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def update_body(current: Mapping[str, Any], body: Mapping[str, Any]) -> dict[str, object]:
    """The UpdateInput for going from ``current`` to ``body``: only the fields that changed,
    and only fields an update carries. The AI API's SDK knows ``url``, ``defaultHttpPort``,
    ``grpcPort``, ``deploymentStrategy`` (github.com/ovh/ovhai-python-sdk
    ``ovhai/models/app_update.py`` @8a58fd0); the OVH API's newer UpdateInput adds
    ``envVars`` (a patch: an empty value removes one), ``flavor``, ``gpu``, ``cpu`` and
    ``command`` (ovh/manager pci-ai-tools ``types/cloud/project/ai/app/UpdateInput.ts``).
    The probe is in neither: a probe change recreates the app (``needs_recreate``)."""
    update: dict[str, object] = {}
    if current.get("image") != body["image"]:
        update["url"] = body["image"]
    if current.get("defaultHttpPort") != body["defaultHttpPort"]:
        update["defaultHttpPort"] = body["defaultHttpPort"]
    wanted_strategy = body.get("deploymentStrategy")
    if wanted_strategy and any(
        (current.get("deploymentStrategy") or {}).get(k) != v for k, v in wanted_strategy.items()
    ):
        update["deploymentStrategy"] = wanted_strategy
    had, wants = current.get("resources") or {}, body["resources"]
    if had.get("flavor") != wants["flavor"] or had.get("gpu") != wants["gpu"]:
        update["flavor"], update["gpu"] = wants["flavor"], wants["gpu"]
    wanted = {e["name"]: e["value"] for e in body["envVars"]}
    have = {e.get("name"): e.get("value") for e in current.get("envVars") or []}
    env_patch = [{"name": k, "value": v} for k, v in wanted.items() if have.get(k) != v]
    env_patch += [{"name": k, "value": ""} for k in have if k not in wanted and k]
    if env_patch:
        update["envVars"] = env_patch
    return update


def needs_recreate(current: Mapping[str, Any], body: Mapping[str, Any]) -> bool:
    """Volumes, the access mode and the probe cannot be changed by an update."""

    def volumes(items: object) -> list[tuple[object, ...]]:
        out = []
        for item in items if isinstance(items, list) else []:
            store = item.get("dataStore") or {}
            permission = str(item.get("permission", "")).upper()
            source = (store.get("alias"), store.get("container"), store.get("prefix"))
            out.append((*source, item.get("mountPath"), permission))
        return sorted(out, key=repr)

    def probe(spec: Mapping[str, Any]) -> tuple[object, object]:
        given = spec.get("probe") or {}
        return given.get("path") or "/", given.get("port") or spec.get("defaultHttpPort")

    return (
        volumes(current.get("volumes")) != volumes(body["volumes"])
        or bool(current.get("unsecureHttp")) != bool(body["unsecureHttp"])
        or probe(current) != probe(body)
    )
