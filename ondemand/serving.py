"""Run an ASGI app on a TCP port: blocking for commands, in a thread for tests and benchmarks.

One place decides which ASGI server runs ondemand's apps (see docs/benchmarks.md for why it
is uvicorn with uvloop and httptools), so the proxy and the emulators behave alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import math
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal

from ondemand.errors import NotAvailableError, UsageError
from ondemand.frontdoor import DoorCounts, DoorLimits

if TYPE_CHECKING:
    from ondemand.asgi import ASGIApp

Lifespan = Literal["auto", "on", "off"]


def _uvicorn_config(
    app: ASGIApp,
    *,
    log_level: str,
    lifespan: Lifespan,
    limits: DoorLimits | None = None,
    counts: DoorCounts | None = None,
    **extra: Any,
) -> Any:
    try:
        import uvicorn
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise NotAvailableError(
            "the ASGI server is not installed",
            cause="ondemand was installed without its 'server' extra",
            hint="pip install 'ollama-ondemand[server]'",
        ) from exc
    fast = importlib.util.find_spec("uvloop") is not None
    limits = (limits or DoorLimits()).resolved()
    http: Any = "h11"
    if importlib.util.find_spec("httptools"):
        from ondemand.frontdoor import protocol_class

        http = protocol_class(limits, counts)
    return uvicorn.Config(
        app,
        loop="uvloop" if fast else "asyncio",
        # Header, connection and body limits are enforced in the protocol, before the parser
        # (ondemand/frontdoor.py). Without httptools, h11 at least caps the head's size.
        http=http,
        h11_max_incomplete_event_size=limits.max_head,
        # Ollama's API has no websockets; an Upgrade request stays a plain HTTP request even
        # if a websockets library happens to be installed.
        ws="none",
        lifespan=lifespan,
        log_level=log_level,
        access_log=False,
        server_header=False,
        # X-Forwarded-* from clients must not rewrite who the client is: nothing in front of
        # ondemand is trusted to set them, and the middleware costs time on every request.
        proxy_headers=False,
        # An idle keep-alive waits for its next request's head: one timeout for both, so
        # raising ONDEMAND_HEADER_TIMEOUT is not undone by uvicorn's own keep-alive timer.
        timeout_keep_alive=max(1, math.ceil(limits.header_timeout)),
        **extra,
    )


def bind(host: str, port: int) -> socket.socket:
    """Bind a listening TCP socket, with a clear error when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise _port_taken(host, port, exc) from exc
    sock.listen(2048)
    # Not inheritable (Python's default): under uvloop a child inherits every inheritable
    # descriptor, and Ollama holding the port would keep it taking connections that nobody
    # answers once the server stops. Workers get theirs by name (pass_fds).
    return sock


def listeners(host: str, port: int, count: int = 1) -> list[socket.socket]:
    """``count`` listening sockets on one address, one per serving process, the kernel
    spreading new connections evenly over them (SO_REUSEPORT); with 1, ``bind``'s. One
    listener shared by several processes would not spread a burst: the first process to
    wake accepts every connection waiting.

    The address is first bound alone, without listening (nothing can queue there), so a
    port in use fails with ``bind``'s clear error, port 0 picks the port for all, and no
    other server can have joined the group: it would have had to bind alone too.
    """
    if count == 1:
        return [bind(host, port)]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise _port_taken(host, port, exc) from exc
        port = probe.getsockname()[1]
    group: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            group.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
        for sock in group:
            sock.listen(2048)
    except OSError as exc:
        for sock in group:
            sock.close()
        raise _port_taken(host, port, exc) from exc
    return group


def _port_taken(host: str, port: int, exc: OSError) -> UsageError:
    return UsageError(
        f"cannot listen on {host}:{port}: {exc.strerror or exc}",
        cause="another process already uses that port, or the address is not local",
        hint="choose another port, or stop the process that holds it",
    )


def run(
    app: ASGIApp,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    sock: socket.socket | None = None,
    log_level: str = "warning",
    graceful_timeout: float | None = 10.0,
    lifespan: Lifespan = "off",
    limits: DoorLimits | None = None,
    counts: DoorCounts | None = None,
    more_sockets: tuple[socket.socket, ...] = (),
    on_stop: Callable[[], None] | None = None,
) -> None:
    """Serve ``app`` until SIGINT/SIGTERM. Blocks. The process is the server's: once it
    has started, its heap is settled (``settle_heap``). ``more_sockets``: listeners served
    besides the one on ``host``:``port`` (or ``sock``). ``on_stop``: called when SIGINT or
    SIGTERM arrives, before the drain.

    ``lifespan="on"`` for apps that hold resources (the proxy's upstream pool) and must
    release them on shutdown; the emulators need no lifespan.
    """
    listener = sock if sock is not None else bind(host, port)
    run_loop(
        serve_sockets(
            app, [listener, *more_sockets], log_level=log_level, lifespan=lifespan,
            graceful_timeout=graceful_timeout, limits=limits, counts=counts, on_stop=on_stop,
        )
    )  # fmt: skip


async def serve_sockets(
    app: ASGIApp,
    sockets: list[socket.socket],
    *,
    log_level: str = "warning",
    graceful_timeout: float | None = 10.0,
    lifespan: Lifespan = "off",
    limits: DoorLimits | None = None,
    counts: DoorCounts | None = None,
    on_stop: Callable[[], None] | None = None,
) -> None:
    """``run`` on listeners already bound, in the caller's event loop (on the main thread:
    it takes SIGINT/SIGTERM)."""
    timeout = None if graceful_timeout is None else max(1, round(graceful_timeout))
    config = _uvicorn_config(
        app, log_level=log_level, lifespan=lifespan, limits=limits, counts=counts,
        timeout_graceful_shutdown=timeout,
    )  # fmt: skip
    await _graceful_server(config, on_stop=on_stop).serve(sockets=sockets)


def settle_heap() -> None:
    """Take what a server holds from its start out of the cyclic collector's sight.

    Modules, settings and the app live as long as the process, yet every full collection
    walks them all: pauses of 20-50 ms every thousand-odd requests in the proxy under load
    (docs/benchmarks.md, "Per-request cost"). Frozen, they are never walked again.
    """
    gc.collect()
    gc.freeze()


def _graceful_server(
    config: Any,
    *,
    own_signals: bool = True,
    settle: bool = True,
    on_stop: Callable[[], None] | None = None,
) -> Any:
    """A uvicorn server whose graceful stop on SIGTERM/SIGINT ends with exit status 0.

    uvicorn re-raises the signal once it has shut down, so the process would die by the
    signal (status -15) although it stopped cleanly, and supervisors and CI logs would
    report a crash that did not happen. With ``own_signals=False`` it leaves signals alone:
    the caller decides when it stops (``should_exit``), e.g. to drain before stopping Ollama.
    ``on_stop`` is called as the signal arrives, before the server's own drain.
    """
    import uvicorn

    class GracefulServer(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)  # the app's lifespan start runs first
            if settle:
                settle_heap()

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if not own_signals or threading.current_thread() is not threading.main_thread():
                yield
                return
            handled = (signal.SIGINT, signal.SIGTERM)

            def stopping(sig: int, frame: Any) -> None:
                if on_stop is not None:
                    on_stop()
                self.handle_exit(sig, frame)

            original = {sig: signal.signal(sig, stopping) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return GracefulServer(config)


def embedded_server(
    app: ASGIApp,
    *,
    log_level: str = "warning",
    graceful_timeout: float = 10.0,
    lifespan: Lifespan = "off",
    limits: DoorLimits | None = None,
    counts: DoorCounts | None = None,
    settle: bool = False,
) -> Any:
    """A uvicorn server to run inside a caller's event loop: ``await server.serve(sockets)``.

    It installs no signal handlers; set ``server.should_exit = True`` to stop it. In-flight
    requests then get up to ``graceful_timeout`` seconds to finish. ``settle``: the process
    is this server's alone, so its start-up heap is frozen once it has started.
    """
    config = _uvicorn_config(
        app,
        log_level=log_level,
        lifespan=lifespan,
        limits=limits,
        counts=counts,
        timeout_graceful_shutdown=max(1, round(graceful_timeout)),
    )
    return _graceful_server(config, own_signals=False, settle=settle)


def run_loop(main: Any) -> Any:
    """Run a coroutine on uvloop when it is installed (as the servers above do)."""
    if importlib.util.find_spec("uvloop") is not None:
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


class BackgroundServer:
    """An ASGI app served on 127.0.0.1 from a daemon thread; for tests and benchmarks.

    >>> with BackgroundServer(app) as srv:
    ...     httpx.get(srv.url + "/")
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        lifespan: Lifespan = "off",
        limits: DoorLimits | None = None,
    ) -> None:
        import uvicorn

        self.app = app
        self._sock = bind(host, port)
        self.host, self.port = self._sock.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"
        config = _uvicorn_config(app, log_level="error", lifespan=lifespan, limits=limits)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name=f"asgi:{self.port}", daemon=True)

    def _run(self) -> None:
        asyncio.run(self._server.serve(sockets=[self._sock]))

    def start(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"ASGI server on port {self.port} did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        with contextlib.suppress(OSError):
            self._sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def serve_in_thread(app: ASGIApp, *, lifespan: Lifespan = "off") -> Iterator[BackgroundServer]:
    with BackgroundServer(app, lifespan=lifespan) as server:
        yield server
