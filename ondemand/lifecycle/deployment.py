"""The deployment a config asks for: the provider to drive, the keys, the spec, and
``deploy`` (create or update), shared by every lifecycle command."""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from ondemand.keys import RUN_KEY_EPOCH_ENV as EPOCH_ENV
from ondemand.providers.base import LABEL_MANAGED_BY, LABEL_NAME, MANAGED_BY, Spec

if TYPE_CHECKING:
    from ondemand.config import ResolvedConfig
    from ondemand.providers.base import Deployment, Provider

Progress = Callable[[str], None]


def quiet(_: str) -> None:
    pass


def make_provider(resolved: ResolvedConfig, env: Mapping[str, str]) -> Provider:
    from ondemand.providers import provider_class

    return provider_class(resolved.config.provider)(env=env, config=resolved)


@contextlib.contextmanager
def opened_provider(resolved: ResolvedConfig, env: Mapping[str, str]) -> Iterator[Provider]:
    """``make_provider`` for a block: its API client is closed at the end (a caller that
    runs many, one per thread, leaks no connections)."""
    provider = make_provider(resolved, env)
    try:
        yield provider
    finally:
        provider.close()


# What a server needs to reach its provider's API and stop itself (ONDEMAND_IDLE_STOP).
_API_URLS = {
    "ovh": ("OVH_AI_API_URL", "OVH_REGION"),
    "sandbox": ("ONDEMAND_SANDBOX_URL",),
    "runpod": ("RUNPOD_API_URL",),
    "runpod-pod": ("RUNPOD_API_URL",),
}
_CREDENTIALS = {
    "ovh": ("ovh_token", "OVH_AI_TOKEN"),
    "runpod": ("runpod_api_key", "RUNPOD_API_KEY"),
    "runpod-pod": ("runpod_api_key", "RUNPOD_API_KEY"),
}


def _self_stop_env(resolved: ResolvedConfig, cli_env: Mapping[str, str]) -> dict[str, str]:
    from ondemand.configtypes import format_duration

    config = resolved.config
    env = {
        "ONDEMAND_IDLE_STOP": format_duration(config.idle_timeout),
        "ONDEMAND_MAX_LIFETIME": format_duration(config.max_lifetime),
        "ONDEMAND_PROVIDER": config.provider,
        "ONDEMAND_NAME": config.name,
    }
    if config.region:
        env["OVH_REGION"] = config.region
    for name in _API_URLS.get(config.provider, ()):
        if cli_env.get(name):
            env[name] = cli_env[name]
    return env


def _self_stop_secrets(resolved: ResolvedConfig) -> dict[str, str]:
    field, env_name = _CREDENTIALS.get(resolved.config.provider, ("", ""))
    value = secret(resolved, field) if field else None
    return {env_name: value} if value else {}


def build_spec(
    resolved: ResolvedConfig,
    api_key: str,
    admin_key: str | None,
    cli_env: Mapping[str, str] | None = None,
    *,
    image: str | None = None,
    epoch: str | None = None,
) -> Spec:
    """The deployment the config asks for. Secrets travel only in ``secret_env``.
    ``image`` is used when the config names none (the image a stopped deployment has);
    ``epoch`` goes into its per-run keys (see ondemand/proxy/runkeys.py)."""
    config = resolved.config
    env: dict[str, str] = {"OLLAMA_PRELOAD_MODELS": ",".join(config.models)}
    if epoch:
        env[EPOCH_ENV] = epoch
    if config.require_gpu:
        env["ONDEMAND_REQUIRE_GPU"] = "1"
        env["ONDEMAND_GPU"] = config.gpu
    if config.keep_alive:
        env["ONDEMAND_KEEP_ALIVE"] = config.keep_alive
    if config.max_keep_alive:
        env["ONDEMAND_MAX_KEEP_ALIVE"] = config.max_keep_alive
    if config.proxy_workers > 1:
        env["ONDEMAND_PROXY_WORKERS"] = str(config.proxy_workers)
    secret_env = {"AUTHORIZATION_APIKEY": api_key}
    if admin_key:
        secret_env["ONDEMAND_ADMIN_KEY"] = admin_key
    if config.self_stop:
        env.update(_self_stop_env(resolved, cli_env or {}))
        secret_env.update(_self_stop_secrets(resolved))
    # The local provider picks a free port unless one was asked for explicitly.
    port_given = resolved.source("port") != "default"
    port = config.port if port_given or config.provider != "local" else 0
    return Spec(
        name=config.name,
        image=config.image or image or "",
        models=tuple(config.models),
        env=env,
        secret_env=secret_env,
        gpu=config.gpu,
        gpu_count=config.gpu_count,
        cpu=config.cpu,
        memory=config.memory,
        port=port,
        region=config.region,
        volume=config.volume,
        labels={LABEL_MANAGED_BY: MANAGED_BY, LABEL_NAME: config.name},
    )


def secret(resolved: ResolvedConfig, name: str) -> str | None:
    value = getattr(resolved.secrets, name)
    return value.get_secret_value() if value is not None else None


def user_key(resolved: ResolvedConfig, provider: Provider, name: str) -> str | None:
    """The user key: ONDEMAND_API_KEY, else the one the deployment was made with."""
    return secret(resolved, "api_key") or provider.stored_secret(name, "AUTHORIZATION_APIKEY")


def admin_key(resolved: ResolvedConfig, provider: Provider, name: str) -> str | None:
    """The admin key (leases, draining): ONDEMAND_ADMIN_KEY, else the deployment's own."""
    return secret(resolved, "admin_key") or provider.stored_secret(name, "ONDEMAND_ADMIN_KEY")


def wanted_spec(
    resolved: ResolvedConfig,
    provider: Provider,
    *,
    image: str | None = None,
    new_run: bool = False,
) -> Spec:
    """The spec to deploy, with the deployment's own keys (minted when it has none). With
    ``new_run`` (it is about to start) the per-run keys of its last run end."""
    from ondemand.keys import mint

    name = resolved.config.name
    deployed = provider.deployed_env(name)  # one look for all three
    api_key = secret(resolved, "api_key") or deployed.get("AUTHORIZATION_APIKEY")
    # Every deployment gets an admin key, so 'up' and 'down' can always take and release
    # leases; it stays with the deployment, like the user key.
    admin = secret(resolved, "admin_key") or deployed.get("ONDEMAND_ADMIN_KEY")
    epoch = None if new_run else deployed.get(EPOCH_ENV)
    return build_spec(
        resolved, api_key or mint(name).key, admin or mint(admin=True).key, provider.env,
        image=image, epoch=epoch or secrets.token_urlsafe(12),
    )  # fmt: skip


def deploy(
    resolved: ResolvedConfig,
    provider: Provider,
    *,
    keep_running: bool = False,
    image: str | None = None,
) -> Deployment:
    """Create the deployment or update it to the config; mint a key if none is given.

    Some clouds start what they create (OVH runs a new app at once). Unless the caller goes
    on to use it (``up``, which starts it: ``keep_running``), a deployment this call
    created is stopped again: deploying must not leave a GPU billing.
    """
    name = resolved.config.name
    spec = wanted_spec(resolved, provider, image=image, new_run=keep_running)
    deployed = provider.deploy(spec)
    if (
        not keep_running
        and deployed.detail in ("created", "recreated")
        and deployed.status.billable
    ):
        stopped = provider.stop(name)
        return dataclasses.replace(stopped, detail=f"{deployed.detail}, then stopped")
    return deployed
