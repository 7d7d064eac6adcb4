"""The model store: manifests, digests, details and, with ``OLLAMA_MODELS``, files on disk.

``EmulatorConfig.models`` is the list of present models; this module derives what Ollama
shows about each one and mirrors the set to ``<models_dir>/manifests/<host>/<ns>/<model>/<tag>``
(real manifest JSON) plus each manifest's small config blob, so a restarted emulator pointed at
the same directory finds the same models, digests and modification times.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ondemand.sandbox.ollama.config import EmulatorConfig, ModelSpec
from ondemand.sandbox.ollama.durations import rfc3339
from ondemand.sandbox.ollama.names import ModelName, parse_name

_MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
_CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
_TEXT_LAYERS = (("model", 0), ("template", 1_429), ("license", 7_711), ("params", 96))
_EMBED_LAYERS = (("model", 0), ("license", 11_357), ("params", 17))


@dataclass(frozen=True, slots=True)
class Layer:
    media_type: str
    digest: str
    size: int


@dataclass(frozen=True, slots=True)
class Manifest:
    layers: tuple[Layer, ...]
    config_blob: bytes
    body: bytes
    digest: str
    """Bare sha256 hex of ``body``, as ``/api/tags`` shows it."""
    details: dict[str, Any]

    @property
    def size(self) -> int:
        return len(self.config_blob) + sum(layer.size for layer in self.layers)

    @property
    def model_layer(self) -> Layer:
        return self.layers[0]


@dataclass(frozen=True, slots=True)
class StoredModel:
    name: str
    """Display name as stored, e.g. ``llama3.2:latest``."""
    parsed: ModelName
    spec: ModelSpec
    manifest: Manifest
    modified_at: float

    @property
    def key(self) -> str:
        return self.parsed.key

    @property
    def capabilities(self) -> list[str]:
        if self.spec.kind == "embedding":
            return ["embedding"]
        return ["completion", "thinking"] if self.spec.thinking else ["completion"]

    def tag_entry(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.name,
            "modified_at": rfc3339(int(self.modified_at * 1e9)),
            "size": self.manifest.size,
            "digest": self.manifest.digest,
            "details": self.manifest.details,
        }


def _details(name: ModelName, spec: ModelSpec, size: int) -> dict[str, Any]:
    letters = re.match(r"[a-z]+", name.model.lower())
    family = letters.group(0) if letters else "llama"
    if spec.kind == "embedding":
        family = "nomic-bert" if family == "nomic" else "bert"
        params, quant = size / 2, "F16"
    else:
        params, quant = size / 0.63, "Q4_K_M"
    shown = f"{params / 1e9:.1f}B" if params >= 1e9 else f"{params / 1e6:.0f}M"
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": shown,
        "quantization_level": quant,
    }


@functools.lru_cache(maxsize=1024)
def build_manifest(origin: str, kind: str, thinking: bool, size: int) -> Manifest:
    """Deterministic from its arguments, so copies and restarts keep the same digest."""
    parsed = parse_name(origin)
    spec = ModelSpec(kind="embedding" if kind == "embedding" else "text", thinking=thinking)
    details = _details(parsed, spec, size)
    config: dict[str, Any] = {
        "model_format": "gguf",
        "model_family": details["family"],
        "model_families": details["families"],
        "model_type": details["parameter_size"],
        "file_type": details["quantization_level"],
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
        "emulator": {"kind": kind, "thinking": thinking, "origin": origin},
    }
    config_blob = json.dumps(config, separators=(",", ":")).encode()
    roles = _EMBED_LAYERS if kind == "embedding" else _TEXT_LAYERS
    fixed = len(config_blob) + sum(s for _, s in roles)
    layers = []
    for role, layer_size in roles:
        digest = hashlib.sha256(f"{parsed.key}/{role}".encode()).hexdigest()
        media = f"application/vnd.ollama.image.{role}"
        layers.append(Layer(media, f"sha256:{digest}", layer_size or max(1, size - fixed)))
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": _MANIFEST_TYPE,
            "config": {
                "mediaType": _CONFIG_TYPE,
                "digest": "sha256:" + hashlib.sha256(config_blob).hexdigest(),
                "size": len(config_blob),
            },
            "layers": [
                {"mediaType": x.media_type, "digest": x.digest, "size": x.size} for x in layers
            ],
        },
        separators=(",", ":"),
    ).encode()
    return Manifest(tuple(layers), config_blob, body, hashlib.sha256(body).hexdigest(), details)


def _write_atomic(path: Path, data: bytes) -> None:
    """Several emulators may share one store (an app's replicas, apps mounting one bucket):
    one starting up while another pulls must read a whole file or none, never half of one.
    The temporary name starts with a dot, which no model name part may, so a reader skips
    it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        Path(tmp).replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
        raise


class ModelStore:
    """Present models, looked up the way Ollama does (every name part case-insensitive)."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self._written: set[Path] = set()
        if config.models_dir is not None:
            self._read_disk(config.models_dir)
        self._stamp()
        self.sync_disk()

    def _stamp(self) -> None:
        now = time.time()
        missing = [spec for spec in self.config.models.values() if spec.modified_at is None]
        # Configured order reads newest first in /api/tags, as if pulled in reverse order.
        for i, spec in enumerate(missing):
            spec.modified_at = now - i

    def _stored(self, name: str, spec: ModelSpec) -> StoredModel:
        parsed = parse_name(name)
        origin = spec.origin or parsed.display
        manifest = build_manifest(origin, spec.kind, spec.thinking, spec.byte_size)
        return StoredModel(parsed.display, parsed, spec, manifest, spec.modified_at or time.time())

    def find(self, name: str) -> StoredModel | None:
        key = parse_name(name).key
        for stored_name, spec in self.config.models.items():
            if parse_name(stored_name).key == key:
                self._stamp()
                return self._stored(stored_name, spec)
        return None

    def models(self) -> list[StoredModel]:
        """Newest first, like ``/api/tags``."""
        self._stamp()
        found = [self._stored(name, spec) for name, spec in self.config.models.items()]
        return sorted(found, key=lambda m: m.modified_at, reverse=True)

    def add(self, name: str, spec: ModelSpec) -> StoredModel:
        self._stamp()
        self.remove(name, persist=False)
        spec.modified_at = time.time()
        display = parse_name(name).display
        self.config.models[display] = spec
        self.sync_disk()
        return self._stored(display, spec)

    def remove(self, name: str, *, persist: bool = True) -> bool:
        key = parse_name(name).key
        doomed = [n for n in self.config.models if parse_name(n).key == key]
        for n in doomed:
            del self.config.models[n]
        if doomed and persist:
            self.sync_disk()
        return bool(doomed)

    def _manifest_path(self, root: Path, parsed: ModelName) -> Path:
        host, namespace, model, tag = parsed.manifest_parts
        return root / "manifests" / host / namespace / model / tag

    def sync_disk(self) -> None:
        """Make ``models_dir`` hold exactly the present models' manifests."""
        root = self.config.models_dir
        if root is None:
            return
        self._stamp()
        wanted: set[Path] = set()
        for name, spec in self.config.models.items():
            stored = self._stored(name, spec)
            path = self._manifest_path(root, stored.parsed)
            wanted.add(path)
            if not path.is_file() or path.read_bytes() != stored.manifest.body:
                blob_hex = hashlib.sha256(stored.manifest.config_blob).hexdigest()
                # The blob first: a manifest another emulator reads names a blob that is there.
                _write_atomic(root / "blobs" / f"sha256-{blob_hex}", stored.manifest.config_blob)
                _write_atomic(path, stored.manifest.body)
            # Another emulator on this store may have deleted it since.
            with contextlib.suppress(FileNotFoundError):
                os.utime(path, (stored.modified_at, stored.modified_at))
        for path in self._written - wanted:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._written = wanted

    def _read_disk(self, root: Path) -> None:
        base = root / "manifests"
        if not base.is_dir():
            return
        for path in sorted(base.glob("*/*/*/*")):
            if not path.is_file():
                continue
            host, namespace, model, tag = path.relative_to(base).parts
            name = ModelName(host, namespace, model, tag)
            if not name.valid:
                continue
            spec = self._spec_from_manifest(root, name, path)
            if spec is None:
                continue
            self._written.add(path)
            present = next(
                (s for n, s in self.config.models.items() if parse_name(n).key == name.key), None
            )
            if present is not None:
                present.modified_at = spec.modified_at
            else:
                self.config.models[name.display] = spec

    def _spec_from_manifest(self, root: Path, name: ModelName, path: Path) -> ModelSpec | None:
        try:
            manifest = json.loads(path.read_bytes())
            layers = manifest["layers"]
            config_ref = manifest["config"]
            size = int(config_ref["size"]) + sum(int(layer["size"]) for layer in layers)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        spec = ModelSpec.for_name(name.display)
        spec.size = size
        spec.modified_at = path.stat().st_mtime
        blob = root / "blobs" / str(config_ref.get("digest", "")).replace(":", "-", 1)
        with contextlib.suppress(OSError, ValueError, AttributeError):
            extra = json.loads(blob.read_bytes()).get("emulator", {})
            spec.kind = "embedding" if extra.get("kind") == "embedding" else "text"
            spec.thinking = bool(extra.get("thinking", False))
            origin = extra.get("origin")
            spec.origin = origin if isinstance(origin, str) and origin != name.display else None
        return spec
