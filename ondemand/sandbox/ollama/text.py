"""The emulator's deterministic "model": reply tokens, token counts and embedding vectors."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
import struct
from collections.abc import Sequence

REPLY = (
    "Hello", "!", " This", " reply", " comes", " from", " the", " Ollama", " emulator", ",",
    " which", " streams", " one", " token", " at", " a", " time", " so", " proxies", " and",
    " clients", " rehearse", " offline", ".",
)  # fmt: skip
"""24 distinct tokens; longer replies repeat the sentence."""

THOUGHTS = (
    "Okay", ",", " the", " user", " wants", " a", " short", " answer", ".",
)  # fmt: skip
"""Reasoning tokens for thinking models, sent before the reply."""


def reply_tokens(count: int) -> list[str]:
    tokens: list[str] = []
    while len(tokens) < count:
        chunk = list(REPLY[: count - len(tokens)])
        if tokens:
            chunk[0] = " " + chunk[0]
        tokens.extend(chunk)
    return tokens


def json_fragment(text: str) -> bytes:
    """``text`` escaped for splicing between JSON quotes."""
    return json.dumps(text)[1:-1].encode()


def count_tokens(text: str) -> int:
    """A tokenizer stand-in: about four characters per token, as for English BPE."""
    return (len(text) + 3) // 4


def prompt_tokens(texts: Sequence[str], overhead: int) -> int:
    """Prompt size after a chat template adds its ``overhead`` per text."""
    return sum(count_tokens(t) + overhead for t in texts) + overhead


def context_ids(prompt: str, count: int) -> list[int]:
    """Stand-in token ids for the deprecated ``context`` field."""
    seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big")
    return [(seed >> (i % 48) ^ i * 7919) % 128_000 for i in range(count)]


def _gaussians(text: str, dims: int) -> list[float]:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest(), "big")
    rng = random.Random(seed)
    return [rng.gauss(0.0, 1.0) for _ in range(dims)]


def _normalised(values: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    # Nine significant digits: what a float32 carries, as in Ollama's JSON.
    return [float(f"{v / norm:.9g}") for v in values]


def embedding(text: str, dims: int, truncate_to: int | None = None) -> list[float]:
    """An L2-normalised vector that depends only on ``text`` (and the sizes)."""
    values = _gaussians(text, dims)
    if truncate_to is not None and 0 < truncate_to < dims:
        values = values[:truncate_to]
    return _normalised(values)


def legacy_embedding(text: str, dims: int) -> list[float]:
    """``/api/embeddings`` vectors are float64 and not normalised."""
    return [v * 0.37 for v in _gaussians(text, dims)]


def to_base64(vector: Sequence[float]) -> str:
    """OpenAI ``encoding_format: base64``: little-endian float32 bytes."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
