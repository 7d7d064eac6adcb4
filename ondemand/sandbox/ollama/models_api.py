"""Model-store routes: tags, ps, show, pull, delete, copy, blobs, version and status."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
from typing import TYPE_CHECKING, Any

from ondemand.asgi import send_bytes
from ondemand.sandbox.ollama import generation
from ondemand.sandbox.ollama.config import ModelSpec
from ondemand.sandbox.ollama.durations import rfc3339
from ondemand.sandbox.ollama.generation import quote
from ondemand.sandbox.ollama.gojson import RequestError, decode
from ondemand.sandbox.ollama.names import parse_name
from ondemand.sandbox.ollama.store import Layer, build_manifest
from ondemand.sandbox.ollama.text import REPLY
from ondemand.sandbox.ollama.watch import Disconnected, Watch
from ondemand.sandbox.ollama.wire import NDJSON_TYPE, Stream, dumps, send_error, send_json

if TYPE_CHECKING:
    from ondemand.sandbox.ollama.state import Call, State
    from ondemand.sandbox.ollama.store import StoredModel

PULL_FIELDS = {
    "model": "string",
    "name": "string",
    "insecure": "bool",
    "stream": "bool",
    "username": "string",
    "password": "string",
}
SHOW_FIELDS = {
    "model": "string",
    "name": "string",
    "system": "string",
    "template": "string",
    "verbose": "bool",
    "options": "map",
}
NAME_FIELDS = {"model": "string", "name": "string"}
COPY_FIELDS = {"source": "string", "destination": "string"}
PULL_TICK = 0.06
"""Seconds between progress lines of one layer, as Ollama's downloader reports."""
MANIFEST_MISSING = "pull model manifest: file does not exist"
BLOB_DIGEST = re.compile(r"sha256[:-][0-9a-fA-F]{64}")


async def tags(state: State, call: Call) -> None:
    await send_json(call.send, 200, {"models": [m.tag_entry() for m in state.store.models()]})


async def ps(state: State, call: Call) -> None:
    await send_json(call.send, 200, {"models": state.residency.ps()})


async def version(state: State, call: Call) -> None:
    await send_json(call.send, 200, {"version": state.config.version})


async def status(_state: State, call: Call) -> None:
    await send_json(call.send, 200, {"cloud": {"disabled": False, "source": "none"}})


async def blob(state: State, call: Call) -> None:
    """``HEAD``/``POST /api/blobs/:digest``: blobs are only remembered, not used by models."""
    digest = call.params["digest"]
    if not BLOB_DIGEST.fullmatch(digest):
        raise RequestError(400, "invalid digest format")
    digest = "sha256:" + digest[7:]
    if call.method == "HEAD":
        status = 200 if digest in state.blobs else 404
        await send_bytes(call.send, status, b"", b"text/plain; charset=utf-8")
        return
    got = "sha256:" + hashlib.sha256(call.body).hexdigest()
    if got != digest:
        raise RequestError(400, f"digest mismatch, expected {quote(digest)}, got {quote(got)}")
    known = digest in state.blobs
    state.blobs.add(digest)
    await send_bytes(call.send, 200 if known else 201, b"", b"text/plain; charset=utf-8")


async def _empty_ok(call: Call) -> None:
    """Go writes nothing here: a bare 200 with no body and no content type."""
    await call.send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]}
    )
    await call.send({"type": "http.response.body", "body": b""})


async def delete(state: State, call: Call) -> None:
    req = decode(call.body, "DeleteRequest", NAME_FIELDS)
    name: str = req.get("model") or req.get("name") or ""
    parsed = parse_name(name)
    if not parsed.valid:
        raise RequestError(400, "invalid model name")
    if not state.store.remove(name):
        raise RequestError(404, f"model '{name}' not found")
    state.residency.unload(parsed.key)
    await _empty_ok(call)


async def copy(state: State, call: Call) -> None:
    req = decode(call.body, "CopyRequest", COPY_FIELDS)
    source: str = req.get("source") or ""
    destination: str = req.get("destination") or ""
    if not parse_name(source).valid:
        raise RequestError(400, f"source {quote(source)} is invalid")
    if not parse_name(destination).valid:
        raise RequestError(400, f"destination {quote(destination)} is invalid")
    found = state.store.find(source)
    if found is None:
        raise RequestError(404, f"model {quote(source)} not found")
    spec = dataclasses.replace(found.spec, origin=found.spec.origin or found.name)
    state.store.add(destination, spec)
    await _empty_ok(call)


def _model_info(state: State, model: StoredModel, verbose: bool) -> dict[str, Any]:
    arch = model.manifest.details["family"]
    embedding = model.spec.kind == "embedding"
    params = model.manifest.size / (2 if embedding else 0.63)
    return {
        "general.architecture": arch,
        "general.basename": model.parsed.model,
        "general.file_type": 1 if embedding else 15,
        "general.parameter_count": int(params),
        "general.quantization_version": 2,
        f"{arch}.block_count": 12 if embedding else 28,
        f"{arch}.context_length": 2048 if embedding else 131072,
        f"{arch}.embedding_length": state.config.embedding_dimensions,
        "tokenizer.ggml.model": "bert" if embedding else "gpt2",
        "tokenizer.ggml.tokens": list(REPLY) if verbose else None,
    }


async def show(state: State, call: Call) -> None:
    req = decode(call.body, "ShowRequest", SHOW_FIELDS)
    name: str = req.get("model") or req.get("name") or ""
    if not name:
        raise RequestError(400, "model is required")
    parsed = parse_name(name)
    if not parsed.valid:
        raise RequestError(400, "invalid model name")
    model = state.store.find(name)
    if model is None:
        raise RequestError(404, f"model '{parsed.display}' not found")
    blob = model.manifest.model_layer.digest.replace(":", "-")
    template = "{{ .Prompt }}"
    stop = "" if model.spec.kind == "embedding" else 'PARAMETER stop "<|eot_id|>"\n'
    modelfile = (
        '# Modelfile generated by "ollama show"\n'
        "# To build a new Modelfile based on this, replace FROM with:\n"
        f"# FROM {model.name}\n\n"
        f"FROM /root/.ollama/models/blobs/{blob}\n"
        f'TEMPLATE """{template}"""\n{stop}'
        'LICENSE """Emulated model: no weights, no license terms."""\n'
    )
    await send_json(
        call.send,
        200,
        {
            "license": "Emulated model: no weights, no license terms.",
            "modelfile": modelfile,
            "parameters": "" if not stop else 'stop                           "<|eot_id|>"',
            "template": template,
            "details": model.manifest.details,
            "model_info": _model_info(state, model, bool(req.get("verbose"))),
            "capabilities": model.capabilities,
            "modified_at": rfc3339(int(model.modified_at * 1e9)),
        },
    )


class _Stop(Exception):
    pass


async def pull(state: State, call: Call) -> None:
    req = decode(call.body, "PullRequest", PULL_FIELDS)
    name: str = req.get("model") or req.get("name") or ""
    parsed = parse_name(name)
    if not parsed.valid:
        raise RequestError(400, "invalid model name")
    streaming = req.get("stream") is not False
    state.stats.pulls += 1
    watch = Watch(call.receive, call.send, state.stats, call.path, name)
    watch.phase = "pull"
    out = Stream(watch, NDJSON_TYPE)
    fault = call.fault
    last: dict[str, Any] = {}

    async def emit(line: dict[str, Any]) -> None:
        nonlocal last
        last = line
        if not streaming:
            return
        cut = generation.due(fault, watch.sent)
        if cut == "close":
            await out.cut()
            raise _Stop
        if cut == "error" and fault is not None:
            await out.end(dumps({"error": fault.message}) + b"\n")
            raise _Stop
        await out.line(dumps(line) + b"\n")
        watch.sent += 1
        state.stats.tokens += 1

    completed = False
    try:
        existing = state.store.find(name)
        spec = dataclasses.replace(existing.spec) if existing else ModelSpec.for_name(name)
        origin = spec.origin or parsed.display
        manifest = build_manifest(origin, spec.kind, spec.thinking, spec.byte_size)
        config_layer = Layer(
            "application/vnd.docker.container.image.v1+json",
            "sha256:" + hashlib.sha256(manifest.config_blob).hexdigest(),
            len(manifest.config_blob),
        )
        await emit({"status": "pulling manifest"})
        await watch.sleep(min(0.05, state.config.pull_seconds / 20))
        if state.config.pull_fails(name):
            if not streaming:
                watch.finishing()
                await send_error(watch.send, 500, MANIFEST_MISSING)
            else:
                await out.end(dumps({"error": MANIFEST_MISSING}) + b"\n")
            completed = True
            return
        layers = [*manifest.layers, config_layer]
        total_size = sum(layer.size for layer in layers)
        for layer in layers:
            status = f"pulling {layer.digest[7:19]}"
            base = {"status": status, "digest": layer.digest, "total": layer.size}
            if existing is not None:
                await emit({**base, "completed": layer.size})
                continue
            seconds = state.config.pull_seconds * layer.size / total_size
            began = time.monotonic()
            await emit(base)
            while True:
                share = (time.monotonic() - began) / seconds if seconds > 0 else 1.0
                done = min(layer.size, int(layer.size * share))
                if done > 0:
                    await emit({**base, "completed": done})
                if done >= layer.size:
                    break
                await watch.sleep(min(PULL_TICK, max(0.0, began + seconds - time.monotonic())))
        for status in ("verifying sha256 digest", "writing manifest"):
            await emit({"status": status})
        state.store.add(name, spec)
        await emit({"status": "success"})
        if streaming:
            await out.end(b"")
        else:
            watch.finishing()
            await send_json(watch.send, 200, last)
        completed = True
    except (Disconnected, _Stop):
        pass
    finally:
        await watch.close(completed=completed)
