"""CI jobs as threads against the sandbox: each runs the library's ``up`` and ``down`` as
the CLI does, with its own provider client and holder name, and chats while it 'tests'."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import httpx

from ondemand.config import ResolvedConfig, load_config
from ondemand.lifecycle import DownResult, UpResult, down, opened_provider, up
from ondemand.providers.base import Provider
from ondemand.sandbox.server import SandboxServer

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}


@contextlib.contextmanager
def lifecycle_of(env: Mapping[str, str]) -> Iterator[tuple[ResolvedConfig, Provider]]:
    """The config and a provider client for ``env``, closed at the end."""
    resolved = load_config(path=None, env=env, flags={}, cwd=None)
    with opened_provider(resolved, env) as provider:
        yield resolved, provider


def job_env(running: SandboxServer, name: str, **extra: str) -> dict[str, str]:
    return {
        **running.env,
        "ONDEMAND_PROVIDER": "sandbox",
        "ONDEMAND_NAME": name,
        "ONDEMAND_MODELS": "llama3.2",
        "ONDEMAND_TIMEOUT": "60s",
        **extra,
    }


@dataclass
class Job:
    """One CI job: ``up``, chats, ``down``; every failure it saw is kept, not raised."""

    env: Mapping[str, str]
    holder: str
    result: UpResult | None = None
    down_result: DownResult | None = None
    failures: list[str] = field(default_factory=list)
    chats: int = 0

    def up(self, *, lease: bool = True) -> UpResult:
        with lifecycle_of(self.env) as (resolved, provider):
            self.result = up(resolved, provider, holder=self.holder, lease=lease)
        return self.result

    def chat(self) -> bool:
        assert self.result is not None
        try:
            answer = httpx.post(
                self.result.url + "/api/chat",
                headers={"X-API-Key": self.result.api_key or ""},
                json=CHAT,
                timeout=10,
            )
        except httpx.HTTPError as exc:
            self.failures.append(f"{self.holder}: chat failed: {exc!r}")
            return False
        if answer.status_code != 200:
            self.failures.append(f"{self.holder}: chat answered {answer.status_code}")
            return False
        self.chats += 1
        return True

    def down(self, *, force: bool = False, delete: bool = False) -> DownResult:
        lease = self.result.lease.id if self.result and self.result.lease else None
        with lifecycle_of(self.env) as (resolved, provider):
            self.down_result = down(
                resolved, provider, lease_ids=[lease] if lease else None,
                holder=None if lease else self.holder, force=force,
                delete_after=delete,
            )  # fmt: skip
        return self.down_result


def run_threads(*targets: object) -> list[BaseException]:
    """Run callables in threads at once; the exceptions they raised."""
    errors: list[BaseException] = []

    def wrap(target: object) -> None:
        try:
            assert callable(target)
            target()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return errors
