"""An Ollama API emulator: the real server's routes, bodies and timing, without a GPU or model.

Users rehearse deployments with it, demos and tests run against it, and the proxy benchmark
uses it as its upstream. It follows Ollama v0.33 (``/work/shared/reference/ollama-api.md``):
native ``/api/*`` routes with NDJSON streams, the OpenAI-compatible ``/v1/*`` routes with SSE,
gin's plain-text 404/405, Go decoder error texts, ``keep_alive`` rules and ``/api/ps`` expiry,
pull progress, and cancellation when a client disconnects.

In process::

    from ondemand.sandbox.ollama import EmulatorConfig, create_app
    from ondemand.serving import BackgroundServer

    app = create_app(EmulatorConfig(tokens_per_second=0, ttft=0.0))
    with BackgroundServer(app) as server:
        ...  # server.url; app.stats, app.config, app.cancels(), app.loaded()

As a process (a stand-in for the ``ollama`` binary)::

    OLLAMA_HOST=127.0.0.1:11434 python -m ondemand.sandbox.ollama serve
    python -m ondemand.sandbox.ollama --version | list | ps | show M | pull M | rm M | stop M
    python -m ondemand.sandbox.ollama run [--keepalive=D] M [PROMPT]

``write_standin(directory)`` writes an executable ``ollama`` that runs the above, for
``OLLAMA_BIN`` or ``PATH``.

Environment (read by ``EmulatorConfig.from_env`` and the ``serve`` command):

- ``OLLAMA_HOST``: listen address, parsed as Ollama does: default ``127.0.0.1:11434``;
  ``0.0.0.0`` → port 11434; ``:11434`` → every interface; ``http://x`` → port 80,
  ``https://x`` → 443. Client commands connect to it, with unspecified addresses as loopback.
- ``OLLAMA_KEEP_ALIVE``: default keep-alive of a newly loaded model (``5m``); a Go duration
  or whole seconds; negative means forever.
- ``OLLAMA_MODELS``: if set, the present models persist there as
  ``manifests/registry.ollama.ai/library/<model>/<tag>`` (and each manifest's config blob under
  ``blobs/``); pulls and copies write them, deletes remove them, and a restart reads them back.
- ``OLLAMA_EMULATOR_MODELS``: comma list of present models (default
  ``llama3.2,nomic-embed-text``; empty for none). ``name=embed`` (or any name containing
  ``embed``) is an embedding model, ``name=think`` a thinking model, ``name=text`` plain.
- ``OLLAMA_EMULATOR_TOKENS_PER_SECOND``: tokens per second per stream (100; 0 = unpaced).
- ``OLLAMA_EMULATOR_TTFT``: seconds before the first token (0.02).
- ``OLLAMA_EMULATOR_LOAD_TIME``: seconds to load a model that is not loaded (0.1).
- ``OLLAMA_EMULATOR_RESPONSE_TOKENS``: tokens per reply (24).
- ``OLLAMA_EMULATOR_PULL_SECONDS``: duration of a pull of a model not yet present (0.5).
- ``OLLAMA_EMULATOR_PULL_FAIL``: comma list of models whose pull fails like a missing
  manifest. Any other valid name can be pulled.
- ``OLLAMA_EMULATOR_CPU_MODELS``: comma list of models loaded on the CPU (``size_vram: 0``);
  the others are fully in VRAM (``size_vram == size``).
- ``OLLAMA_EMULATOR_FAULTS``: a JSON list of faults, as in a ``/_emulator/config`` patch,
  e.g. ``[{"path": "/api/pull", "error_after_lines": 2}]``.
- ``OLLAMA_EMULATOR_VERSION``: version reported by ``/api/version`` and ``--version``
  (``0.33.0``).

Control routes (not part of Ollama; for tests and benchmarks, never proxied by ondemand):

- ``GET /_emulator/stats`` → ``{"requests", "routes": {"POST /api/chat": n}, "active",
  "completed", "cancelled", "tokens", "loads", "unloads", "pulls", "faults", "events": [...],
  "loaded": [<ps entries>]}``. Events are ``{"type", "time", ...}``; a cancel event is
  ``{"type": "cancel", "time": <time.time() when the disconnect was seen>, "route", "model",
  "tokens_sent", "phase": "load"|"generate"|"pull"}``.
- ``GET /_emulator/config`` → the configuration as JSON; ``POST /_emulator/config`` with
  ``{field: value}`` changes those fields (same names as ``EmulatorConfig``; ``models`` takes
  ``{name: {"kind", "thinking", "size"} | "embed" | null}`` or a list of names; ``faults`` a
  list of ``Fault`` objects) and answers the new configuration, or 400 ``{"error"}``.
- ``POST /_emulator/reset`` → ``{"status": "reset"}``: clears counters, events, loaded models
  and pending faults.
"""

from __future__ import annotations

from ondemand.sandbox.ollama.app import Emulator, create_app
from ondemand.sandbox.ollama.config import EmulatorConfig, Fault, ModelSpec
from ondemand.sandbox.ollama.standin import write_standin
from ondemand.sandbox.ollama.stats import Stats

__all__ = [
    "Emulator",
    "EmulatorConfig",
    "Fault",
    "ModelSpec",
    "Stats",
    "create_app",
    "write_standin",
]
