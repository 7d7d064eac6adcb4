from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ondemand.sandbox.ollama import Emulator, EmulatorConfig, create_app
from ondemand.serving import BackgroundServer

Serve = Callable[..., tuple[Emulator, str]]


def fast_config(**fields: Any) -> EmulatorConfig:
    """No pacing, no load time: tests that measure time set their own values."""
    config = EmulatorConfig(tokens_per_second=0.0, ttft=0.0, load_time=0.0, pull_seconds=0.05)
    for name, value in fields.items():
        setattr(config, name, value)
    return config


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start emulators on loopback; all stopped at the end of the test."""
    servers: list[BackgroundServer] = []

    def start(config: EmulatorConfig | None = None, **fields: Any) -> tuple[Emulator, str]:
        app = create_app(config if config is not None else fast_config(**fields))
        server = BackgroundServer(app).start()
        servers.append(server)
        return app, server.url

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def _shared() -> Iterator[tuple[Emulator, str]]:
    app = create_app(fast_config())
    with BackgroundServer(app) as server:
        yield app, server.url


@pytest.fixture
def emulator(_shared: tuple[Emulator, str]) -> tuple[Emulator, str]:
    """One server for the session, put back to a fresh ``fast_config()`` for every test."""
    app, url = _shared
    fresh = fast_config()
    for field in dataclasses.fields(fresh):
        setattr(app.config, field.name, getattr(fresh, field.name))
    app.reset()
    return app, url
