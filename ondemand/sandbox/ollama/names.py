"""Ollama model names: parsing, validity, display form and lookup key (types/model/name.go)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"


@dataclass(frozen=True, slots=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str

    @property
    def valid(self) -> bool:
        return (
            _valid_part(self.host, "host")
            and _valid_part(self.namespace, "namespace")
            and _valid_part(self.model, "model")
            and _valid_part(self.tag, "tag")
        )

    @property
    def display(self) -> str:
        """The shortest form Ollama shows: always tagged, namespace only when not ``library``."""
        if self.host.lower() != DEFAULT_HOST:
            prefix = f"{self.host}/{self.namespace}/"
        elif self.namespace.lower() != DEFAULT_NAMESPACE:
            prefix = f"{self.namespace}/"
        else:
            prefix = ""
        return f"{prefix}{self.model}:{self.tag}"

    @property
    def key(self) -> str:
        """Identity for lookups: every part compares case-insensitively."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}".lower()

    @property
    def manifest_parts(self) -> tuple[str, str, str, str]:
        return (self.host, self.namespace, self.model, self.tag)


@functools.lru_cache(maxsize=4096)
def parse_name(text: str) -> ModelName:
    """Parse ``[host/][namespace/]model[:tag][@digest]`` and fill in the defaults."""
    s = text.split("@", 1)[0] if "@" in text else text
    tag = ""
    # "/" cannot appear in a tag, so a colon after the last slash starts the tag.
    if s.rfind(":") > s.rfind("/"):
        s, tag = s.rsplit(":", 1)
    host = namespace = ""
    parts = s.rsplit("/", 2)
    if len(parts) == 3:
        host, namespace, model = parts
        host = host.split("://", 1)[-1]
    elif len(parts) == 2:
        namespace, model = parts
    else:
        model = parts[0]
    return ModelName(
        host=host or DEFAULT_HOST,
        namespace=namespace or DEFAULT_NAMESPACE,
        model=model,
        tag=tag or DEFAULT_TAG,
    )


def display_name(text: str) -> str:
    return parse_name(text).display


def name_key(text: str) -> str:
    return parse_name(text).key


def _alnum_or_underscore(c: str) -> bool:
    return c == "_" or ("a" <= c <= "z") or ("A" <= c <= "Z") or ("0" <= c <= "9")


def _valid_part(s: str, kind: str) -> bool:
    limit = 350 if kind == "host" else 80
    if not 1 <= len(s) <= limit:
        return False
    if not _alnum_or_underscore(s[0]):
        return False
    for c in s[1:]:
        if c in "_-":
            continue
        if c == ".":
            if kind == "namespace":
                return False
            continue
        if c == ":":
            if kind != "host":
                return False
            continue
        if not _alnum_or_underscore(c):
            return False
    return True
