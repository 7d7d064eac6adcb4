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


def safe_part(part: str) -> str:
    cleaned = _UNSAFE.sub("_", part)
    return "_" if cleaned in ("", ".", "..") else cleaned


def volume_dir(app_dir: Path, index: int) -> Path:
    """The app's own copy of its volume ``index`` in this run (see ``datasync.py``)."""
    return app_dir / "volumes" / str(index)


def models_dir(spec: dict[str, Any], app_dir: Path) -> Path:
    """The app's own model store; or, when ``OLLAMA_MODELS`` points into a mounted
    datastore volume, that volume's copy: pulled from the bucket when the app started, and
    pushed back only by a data sync."""
    env = {e["name"]: e["value"] for e in spec.get("envVars", [])}
    wanted = str(env.get("OLLAMA_MODELS") or "")
    for index, volume in enumerate(spec.get("volumes", [])):
        mount = volume["mountPath"].rstrip("/")
        if not volume.get("dataStore") or not wanted:
            continue
        if not (wanted == mount or wanted.startswith(mount + "/")):
            continue
        base = volume_dir(app_dir, index)
        for part in wanted[len(mount) :].split("/"):
            if part:
                base = base / safe_part(part)
        return base
    return app_dir / "models"
