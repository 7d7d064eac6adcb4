"""Model names as Ollama looks them up, so allow-lists and preload lists compare alike."""

from __future__ import annotations

_DEFAULT_HOST = "registry.ollama.ai/"


def canonical(name: str) -> str:
    """The key Ollama finds a model by: default host and namespace dropped, ``:latest``
    added when there is no tag, case folded.

    ``LLAMA3.2`` == ``llama3.2:latest`` == ``registry.ollama.ai/library/llama3.2``.
    """
    name = name.strip().lower()
    name = name.removeprefix(_DEFAULT_HOST).removeprefix("library/")
    tail = name.rsplit("/", 1)[-1]
    return name if ":" in tail else name + ":latest"
