"""How an update changes a stored spec, and where an app's models live on disk."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ondemand.sandbox.ovh import validate

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def apply_update(spec: dict[str, Any], patch: dict[str, Any]) -> None:
    """Apply a checked UpdateInput: ``url`` is the image, ``envVars`` a patch (an empty or
    null value removes the variable), an empty ``command`` resets it. Invalid when the
    resulting resources are (e.g. a GPU count on a CPU flavor)."""
    if "envVars" in patch:
        current = {e["name"]: e["value"] for e in spec.get("envVars", [])}
        for entry in patch["envVars"]:
            if entry["value"]:
                current[entry["name"]] = entry["value"]
            else:
                current.pop(entry["name"], None)
        patch = {**patch, "envVars": [{"name": k, "value": v} for k, v in current.items()]}
    wanted = {k: patch[k] for k in ("flavor", "gpu", "cpu") if k in patch}
    if wanted:
        patch = {**patch, "resources": validate.resources(wanted, current=spec["resources"])}
    if "url" in patch:
        spec["image"] = patch["url"]
    for name in (
        "envVars",
        "resources",
        "defaultHttpPort",
        "grpcPort",
        "probe",
        "livenessProbe",
        "deploymentStrategy",
    ):
        if name in patch:
            spec[name] = patch[name]
    if "command" in patch:
        if patch["command"]:
            spec["command"] = patch["command"]
        else:
            spec.pop("command", None)


def _safe(part: str) -> str:
    cleaned = _UNSAFE.sub("_", part)
    return "_" if cleaned in ("", ".", "..") else cleaned


def models_dir(spec: dict[str, Any], app_dir: Path, datastores: Path) -> Path:
    """The app's own model store; or, when ``OLLAMA_MODELS`` points into a mounted
    datastore volume, a directory standing for that bucket: shared by every app that mounts
    it and kept when the app is deleted, as a bucket is."""
    env = {e["name"]: e["value"] for e in spec.get("envVars", [])}
    wanted = str(env.get("OLLAMA_MODELS") or "")
    for volume in spec.get("volumes", []):
        store = volume.get("dataStore")
        mount = volume["mountPath"].rstrip("/")
        if not store or not wanted or not (wanted == mount or wanted.startswith(mount + "/")):
            continue
        base = datastores / _safe(store["alias"]) / _safe(store["container"])
        for part in f"{store.get('prefix', '')}/{wanted[len(mount) :]}".split("/"):
            if part:
                base = base / _safe(part)
        return base
    return app_dir / "models"
