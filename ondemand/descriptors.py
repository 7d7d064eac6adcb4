"""The open-file budget of a server process, and how many client connections it affords."""

from __future__ import annotations

# Descriptors kept for everything that is not a client connection: the listening sockets,
# logs, the keys file, Ollama's pipes, the webhook and the pool's spare connections.
RESERVED = 256
# Where the hard limit is "unlimited" (macOS), a soft limit the kernel accepts.
_UNLIMITED_TARGET = 10240


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one and return the soft limit now in force
    (0 where none is known). Go does the same for every program since 1.19 (its
    release notes, "os" package); Python leaves the soft limit, often 1024, as it found it."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 0
    target = _UNLIMITED_TARGET if hard == resource.RLIM_INFINITY else hard
    if soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    return target


def affordable_connections(open_files: int) -> int:
    """Client connections that ``open_files`` descriptors can hold when every one of them
    is busy (a busy connection holds a second descriptor, to Ollama); 0 means no limit is
    known, and then nothing lowers the default."""
    if open_files <= 0:
        return 1 << 30
    return max(16, (open_files - RESERVED) // 2)
