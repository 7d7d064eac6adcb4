"""What ``ondemand init`` writes: the files, their text for a provider, and retired values.

``render`` is the one entry point: relative path -> text. ``SUPERSEDED`` is the memory of
the templates: when a value changes here, its old value goes there, so that a re-run updates
the files that still hold it (and only those: a value a user changed is theirs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Final

from ondemand.scaffold import workflows

__all__ = [
    "CONFIG_FILE",
    "FILES",
    "MANUAL_WORKFLOW",
    "NIGHTLY_WORKFLOW",
    "SUPERSEDED",
    "TESTS_WORKFLOW",
    "Superseded",
    "config_file",
    "render",
]

CONFIG_FILE: Final = "ondemand.yml"
NIGHTLY_WORKFLOW: Final = ".github/workflows/ollama-nightly-stop.yml"
MANUAL_WORKFLOW: Final = ".github/workflows/ollama-manual.yml"
TESTS_WORKFLOW: Final = ".github/workflows/ollama-tests.yml"
FILES: Final = (CONFIG_FILE, NIGHTLY_WORKFLOW, MANUAL_WORKFLOW, TESTS_WORKFLOW)


@dataclasses.dataclass(frozen=True)
class Superseded:
    """A value an earlier template wrote at some place, and the comment on its line."""

    value: object
    """As YAML loads it: ``"0 2 * * *"``, ``15``, ``["up", "down"]``."""
    comment: str | None = None
    """The end-of-line comment that went with it (``"# v4.2.2"``): replaced with the value."""


Place = tuple[str, ...]
"""Keys from the top of a file; a step is named by its template ``name``:
``("jobs", "test", "steps", "Check out", "uses")``."""

# file -> place -> values earlier versions of the templates wrote there. Add an entry here
# whenever a template value changes; never remove one.
SUPERSEDED: Final[Mapping[str, Mapping[Place, tuple[Superseded, ...]]]] = {
    # The nightly backstop stopped the server whoever held it; reap spares held servers.
    NIGHTLY_WORKFLOW: {
        ("jobs", "stop", "steps", "Stop Ollama", "with", "command"): (Superseded("stop"),)
    },
}


def render(provider: str, name: str) -> dict[str, str]:
    """Every file ``init`` writes, as text: relative path -> content."""
    return {
        CONFIG_FILE: config_file(provider, name),
        NIGHTLY_WORKFLOW: workflows.nightly_stop(provider, name),
        MANUAL_WORKFLOW: workflows.manual(provider, name),
        TESTS_WORKFLOW: workflows.tests(provider),
    }


# --------------------------------------------------------------------------------------
# ondemand.yml

_HEADER: Final = """\
# Settings of ollama-ondemand for this repository: every key, its environment variable
# and its format are in docs/configuration.md. Written by `ondemand init`: edit it freely,
# running init again keeps your values and comments and only adds what is missing.
#
# Precedence: built-in defaults < this file < environment (ONDEMAND_*, which is how the
# action passes its inputs) < command-line flags. No secrets here: the file is committed,
# and keys and tokens are refused in it. They come from the environment (GitHub secrets).
"""

_PROVIDER_NOTE: Final[dict[str, str]] = {
    "local": "# local: the server runs on this machine (a CI runner, a laptop), with the real\n"
    "# `ollama` when it is on PATH, else a built-in emulator that answers but does not think.",
    "sandbox": "# sandbox: the built-in emulated cloud (`ondemand sandbox`, with\n"
    "# ONDEMAND_SANDBOX_URL set), to rehearse the lifecycle without a GPU bill (docs/sandbox.md).",
    "ovh": "# ovh: an OVHcloud AI Deploy app (docs/ovh.md).",
    "runpod": "# runpod: a RunPod serverless load-balancing endpoint (docs/runpod.md).",
    "runpod-pod": "# runpod-pod: one RunPod GPU pod, started and stopped (docs/runpod.md).",
}

_SECRETS: Final[dict[str, str]] = {
    "ovh": "#   OVH_AI_TOKEN      an AI token with the operator role\n"
    "#                     (`ovhai token create ondemand --role operator`)",
    "runpod": "#   RUNPOD_API_KEY    a RunPod API key",
    "runpod-pod": "#   RUNPOD_API_KEY    a RunPod API key",
}

_GPUS: Final[dict[str, str]] = {
    "ovh": "L4, L40S, A100, A100-80GB, H100 or V100S (each picks an AI Deploy flavor)",
    "runpod": "L4, RTX 4090, L40S, A100, H100 or H200 (each picks a serverless GPU pool)",
    "runpod-pod": "a GPU type, e.g. L4 (NVIDIA L4), RTX 4090, A100 or H100",
}

_OVH: Final = """\
# The AI Deploy region: GRA, BHS or US-EAST-VA.
region: GRA

# The model cache: an Object Storage bucket mounted into the app, so models are pulled once:
# bucket@ALIAS[/prefix]:/mount[:ro|rw|rwd], e.g. ollama-cache@GRA:/var/lib/ollama:rw
volume:

ovh:
  # The flavor comes from gpu (L4 -> l4-1-gpu); set one here to use another.
  flavor:
  # Copies of the app; set replicas_min and replicas_max instead to scale automatically.
  replicas: 1
"""

_RUNPOD: Final = """\
runpod:
  # The model cache: a network volume NAME@DATACENTER (e.g. ollama-models@EU-RO-1),
  # created if missing; it pins the workers to its data center.
  network_volume:
  # Workers: none while idle, at most 2 so that one throttled worker cannot block the
  # endpoint. Above 0, workers_min bills all the time the endpoint is started.
  workers_min: 0
  workers_max: 2
  # Seconds a worker stays up (and bills) after its last request.
  idle_timeout: 60
"""

_RUNPOD_POD: Final = """\
runpod:
  # The model cache: a network volume NAME@DATACENTER (e.g. ollama-models@EU-RO-1),
  # mounted at /workspace; without one the pod gets a volume disk of pod_volume GB.
  # A stopped pod still bills its disk: `ondemand down --delete` removes the pod.
  network_volume:
  pod_volume: 50
  # SECURE or COMMUNITY cloud.
  cloud_type: SECURE
"""


def config_file(provider: str, name: str) -> str:
    """``ondemand.yml`` for ``provider``: the keys that matter there, each explained."""
    cloud = provider in _GPUS
    parts = [
        _HEADER,
        f"""\
# Where the server runs: local, sandbox, ovh, runpod or runpod-pod.
{_PROVIDER_NOTE[provider]}
provider: {provider}

# The deployment: one per name on the provider's account. Give each repository its own.
name: {name}

# Models to pull and load before the server reports ready.
models:
  - llama3.2:3b
""",
    ]
    if cloud:
        parts.append(f"""\
# The server image, with a tag or a digest. Build and push it with
# `ondemand build --push --tag <registry>/ollama-ondemand:<tag>` (docs/image.md).
image:

# The GPU: {_GPUS[provider]}.
gpu: L4
# Fail readiness when a model is loaded on the CPU instead of the GPU.
require_gpu: true
""")
    parts.append("""\
# How long `up` waits for the server and every model to be ready.
timeout: 15m
# How long a job's lease keeps the server up unless renewed; `down` releases it earlier.
lease_ttl: 3h
""")
    if provider == "ovh":
        parts.append(_OVH)
    elif provider == "runpod":
        parts.append(_RUNPOD)
    elif provider == "runpod-pod":
        parts.append(_RUNPOD_POD)
    secrets = "\n".join(
        line
        for line in (
            "# Secrets, from the environment (in workflows, from repository secrets):",
            _SECRETS.get(provider, ""),
            "#   ONDEMAND_API_KEY  the key clients send to the server: `ondemand keys new`",
        )
        if line
    )
    parts.append(secrets + "\n")
    return "\n".join(parts)
