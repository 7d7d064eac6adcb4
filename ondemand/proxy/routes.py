"""Which paths the proxy forwards, and who may use them.

The proxy is default-deny: a path that is not in Ollama's route table is answered here with
404 and never reaches Ollama, because newer Ollama releases keep adding routes (some of them
reach out to ollama.com). Paths are canonicalised from the raw bytes the client sent, so
``/api/%70ull``, ``//api/pull`` or ``/api/./pull`` cannot slip past the admin check: the
decoded form is classified, and only the decoded, re-encoded form is sent upstream.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote_to_bytes


class Access(enum.Enum):
    USER = "user"
    ADMIN = "admin"


class BadPath(ValueError):
    """The request path is malformed or tries to traverse."""


@dataclass(frozen=True, slots=True)
class Route:
    access: Access
    path: str  # decoded, canonical
    upstream_path: str  # what is sent upstream (percent-encoded where needed)
    family: str  # "native" or "openai": decides the shape of error bodies
    stream_body: bool = False  # forward the request body without buffering it

    @property
    def label(self) -> str:
        """The route as a metrics label: path parameters collapsed, so the set is bounded."""
        for prefix, name in _PARAMETERS:
            if self.path.startswith(prefix):
                return prefix + name
        return self.path


_PARAMETERS = (
    ("/v1/models/", "{model}"),
    ("/api/blobs/", "{digest}"),
    ("/api/user/keys/", "{key}"),
)
_USER_EXACT = frozenset(
    {
        "/",
        "/api/version",
        "/api/status",
        "/api/tags",
        "/api/show",
        "/api/ps",
        "/api/generate",
        "/api/chat",
        "/api/embed",
        "/api/embeddings",
        "/api/experimental/model-recommendations",
    }
)
_ADMIN_EXACT = frozenset(
    {
        "/api/pull",
        "/api/push",
        "/api/create",
        "/api/copy",
        "/api/delete",
        "/api/me",
        "/api/signout",
        "/api/experimental/web_search",
        "/api/experimental/web_fetch",
    }
)
_OPENAI_EXACT = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/responses",
        "/v1/messages",
        "/v1/audio/transcriptions",
    }
)
# The methods Ollama's router serves (ollama/ollama server/routes.go at fb30760, v0.33.0-rc2):
# TRACE, PUT, OPTIONS and the rest are answered 405 here, never sent on.
METHODS = frozenset({"GET", "HEAD", "POST", "DELETE"})
ALLOW = b"GET, HEAD, POST, DELETE"
_BLOB = re.compile(r"^/api/blobs/[^/]+$")
_USER_KEY = re.compile(r"^/api/user/keys/[^/]+$")


# Ollama's longest paths are a blob digest or a model name; anything far longer is not a
# client of ours, and must not sit in the resolve cache.
MAX_PATH_BYTES = 2048


def _segments(raw_path: bytes) -> list[str]:
    if len(raw_path) > MAX_PATH_BYTES:
        raise BadPath("path is too long")
    if not raw_path.startswith(b"/"):
        raise BadPath("path must start with '/'")
    if b"\\" in raw_path or b"\x00" in raw_path:
        raise BadPath("path contains a forbidden character")
    parts = raw_path[1:].split(b"/")
    out: list[str] = []
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if not part:
            if last and index == 0:  # the root "/"
                break
            raise BadPath("empty path segment")
        try:
            text = unquote_to_bytes(part).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadPath("path is not valid UTF-8") from exc
        if text in (".", "..") or "\\" in text or "\x00" in text:
            raise BadPath("path traversal is not allowed")
        out.append(text)
    return out


# Clients use a handful of paths, so resolving each once saves work on every request; the
# bound keeps a client that sends endless distinct paths from growing memory.
@functools.lru_cache(maxsize=1024)
def resolve(raw_path: bytes) -> Route | None:
    """Classify a raw request path; None when the proxy does not forward it.

    Raises ``BadPath`` for paths that no Ollama client sends: empty segments, dot segments
    (encoded or not), backslashes, NUL, invalid UTF-8.
    """
    segments = _segments(raw_path)
    upstream = "/" + "/".join(quote(s, safe=":@!$&'()*+,;=-._~") for s in segments)
    # A decoded "/" inside a segment is only meaningful as a model name in /v1/models/{model}.
    if len(segments) == 3 and segments[:2] == ["v1", "models"]:
        return Route(Access.USER, "/v1/models/" + segments[2], upstream, "openai")
    if any("/" in s for s in segments):
        raise BadPath("encoded '/' in path")
    path = "/" + "/".join(segments)
    if path in _USER_EXACT:
        return Route(Access.USER, path, upstream, "native")
    if path in _ADMIN_EXACT:
        return Route(Access.ADMIN, path, upstream, "native")
    if _BLOB.match(path):
        return Route(Access.ADMIN, path, upstream, "native", stream_body=True)
    if _USER_KEY.match(path):
        return Route(Access.ADMIN, path, upstream, "native")
    if path in _OPENAI_EXACT:
        return Route(Access.USER, path, upstream, "openai")
    return None
