"""Path canonicalisation: whatever bytes a client sends, admin routes stay behind the admin key."""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ondemand.proxy.routes import Access, BadPath, resolve

ADMIN_PATHS = {"/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete"}

# Pieces that make up the tricks people try: encodings, dots, slashes, case, admin names.
PIECES = ["/", "//", ".", "..", "%2e", "%2E", "%2f", "%2F", "%25", "%70", "%5c", "\\", "%00",
          "api", "API", "pull", "pul", "l", "p", "v1", "models", "blobs", "delete", "tags",
          "chat", "sha256:", "a", ";", "?", "#", " ", "%20", "ü", "%ff"]  # fmt: skip


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(PIECES), min_size=1, max_size=8))
def test_no_encoding_reaches_an_admin_route_as_a_user_route(pieces: list[str]) -> None:
    raw = ("/" + "".join(pieces)).encode()
    try:
        route = resolve(raw)
    except BadPath:
        return
    if route is None:
        return
    # What Ollama would route on: the upstream path as its server decodes it.
    decoded = unquote(route.upstream_path)
    if route.access is Access.USER:
        assert decoded not in ADMIN_PATHS
        assert not decoded.startswith("/api/blobs/")
    assert "//" not in route.upstream_path
    assert "/./" not in decoded + "/"
    assert "/../" not in decoded + "/"
    if not route.path.startswith("/v1/models/"):
        assert decoded == route.path


def test_overlong_paths_are_refused_before_they_are_cached() -> None:
    with pytest.raises(BadPath, match="too long"):
        resolve(b"/v1/models/" + b"m" * 4096)
    assert resolve(b"/v1/models/" + b"m" * 1000) is not None


@pytest.mark.parametrize(
    ("raw", "path", "access"),
    [
        (b"/", "/", Access.USER),
        (b"/api/tags", "/api/tags", Access.USER),
        (b"/api/%70ull", "/api/pull", Access.ADMIN),
        (b"/api/blobs/sha256:abc", "/api/blobs/sha256:abc", Access.ADMIN),
        (b"/api/user/keys/abc", "/api/user/keys/abc", Access.ADMIN),
        (b"/v1/models/hf.co%2Forg%2Frepo:Q4", "/v1/models/hf.co/org/repo:Q4", Access.USER),
    ],
)
def test_known_routes(raw: bytes, path: str, access: Access) -> None:
    route = resolve(raw)
    assert route is not None
    assert (route.path, route.access) == (path, access)
