"""The GitHub workflows ``ondemand init`` writes: tests, nightly stop and manual control.

They are plain text, so what a user reads in the generated file is exactly what is here.
Only a few lines depend on the provider: the credentials each step of the action needs, and
how the example test step calls the server. Every step has a ``name`` (and ours an ``id``):
that is how a re-run finds it in an edited file (``ondemand.scaffold``).
"""

from __future__ import annotations

from typing import Final

__all__ = ["ACTION", "CHECKOUT", "manual", "nightly_stop", "tests"]

ACTION: Final = "ollama-ondemand/ollama-ondemand@v1"
CHECKOUT: Final = "actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683 # v4.2.2"

_CLOUD_SECRET: Final[dict[str, str]] = {
    "ovh": "ovh-token: ${{ secrets.OVH_AI_TOKEN }}",
    "runpod": "runpod-api-key: ${{ secrets.RUNPOD_API_KEY }}",
    "runpod-pod": "runpod-api-key: ${{ secrets.RUNPOD_API_KEY }}",
}

# Our own action is used by its major tag, which moves with fixes; zizmor reports such a
# ref as unpinned. The comment tells users what to do if their policy wants a SHA.
_PIN_NOTE: Final = (
    "# The v1 tag follows the fixes of this major version, so zizmor reports it as unpinned:\n"
    "# pin a full commit SHA (with a # v1.x.y comment) if your policy asks for it."
)


def _indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "\n".join(pad + line if line else line for line in text.splitlines())


def _credentials(provider: str, *, api_key: bool, explain: bool) -> str:
    """The ``with:`` lines that pass secrets to the action, at the indentation of ``with``."""
    lines = []
    if api_key and explain:
        lines += [
            "# The key clients send to the server: create it with `ondemand keys new` and",
            "# store it as the repository secret ONDEMAND_API_KEY.",
        ]
    if api_key:
        lines.append("api-key: ${{ secrets.ONDEMAND_API_KEY }}")
    if provider in _CLOUD_SECRET:
        lines.append(_CLOUD_SECRET[provider])
    return "\n".join(lines)


def _action_step(provider: str, *, name: str, step_id: str, command: str, api_key: bool,
                 condition: str | None = None, explain: bool = True) -> str:  # fmt: skip
    """One step that runs the action, as a block at column 0 (the ``- name:`` line).

    ``explain``: with the comments on pinning and the key (the first such step of a file).
    """
    lines = [f"- name: {name}", f"  id: {step_id}"]
    if condition:
        lines.append(f"  if: {condition}")
    if explain:
        lines.append(_indent(_PIN_NOTE, 2))
    lines += [f"  uses: {ACTION}", "  with:", f"    command: {command}"]
    credentials = _credentials(provider, api_key=api_key, explain=explain)
    if provider == "runpod" and command == "up":
        # A restricted key for this endpoint only, exported to the tests: never the account key.
        credentials += "\nrunpod-client-key: ${{ secrets.RUNPOD_CLIENT_KEY }}"
    if credentials:
        lines.append(_indent(credentials, 4))
    return "\n".join(lines)


_CHECKOUT_STEP: Final = f"""\
- name: Check out
  uses: {CHECKOUT}
  with:
    persist-credentials: false"""


def _test_step(provider: str) -> str:
    if provider == "runpod":
        # RunPod's gateway takes the RunPod key as the bearer; ours goes in X-API-Key.
        return """\
- name: Run tests
  id: tests
  # Replace this with your tests. `up` exported OLLAMA_HOST, OPENAI_BASE_URL,
  # OLLAMA_API_KEY and OPENAI_API_KEY to the steps after it, and RUNPOD_CLIENT_KEY when
  # the up step was given runpod-client-key: a restricted RunPod key for this endpoint
  # only (docs/runpod.md). RunPod's gateway wants it as the bearer token, ours as X-API-Key.
  run: |
    curl --fail --silent --show-error \\
      -H "Authorization: Bearer $RUNPOD_CLIENT_KEY" -H "X-API-Key: $OLLAMA_API_KEY" \\
      "$OLLAMA_HOST/api/tags"
"""
    return """\
- name: Run tests
  id: tests
  # Replace this with your tests. `up` exported OLLAMA_HOST, OPENAI_BASE_URL,
  # OLLAMA_API_KEY and OPENAI_API_KEY to the steps after it.
  run: |
    curl --fail --silent --show-error -H "Authorization: Bearer $OLLAMA_API_KEY" \\
      "$OLLAMA_HOST/api/tags"
"""


def tests(provider: str) -> str:
    """``ollama-tests.yml``: up, the tests with the exported environment, down always."""
    up = _action_step(provider, name="Start Ollama", step_id="ollama-up", command="up",
                      api_key=True)  # fmt: skip
    down = _action_step(provider, name="Stop Ollama", step_id="ollama-down", command="down",
                        api_key=True, condition="always()", explain=False)  # fmt: skip
    steps = "\n\n".join([_CHECKOUT_STEP, up, _test_step(provider).rstrip("\n"), down])
    return f"""\
# Tests that need Ollama: `up` starts the server (or joins the one already running) and
# waits until the models are warm, the tests run, and `down` releases this job's lease,
# stopping the server when no other job still uses it. Written by `ondemand init`: edit it
# freely, running init again keeps your changes (docs/init.md).
name: tests with Ollama

on:
  push:
    branches: [main]
  pull_request:

permissions: {{}}

jobs:
  test:
    name: Tests with Ollama
    runs-on: ubuntu-latest
    # A cap on what a stuck job can bill; the server's own lease ends later (lease_ttl).
    timeout-minutes: 60
    permissions:
      contents: read # to check out ondemand.yml
      deployments: write # up and down record the server as a GitHub Deployment
    steps:
{_indent(steps, 6)}
"""


def nightly_stop(provider: str, name: str) -> str:
    """``ollama-nightly-stop.yml``: every night, stop what nobody holds a lease on."""
    # The step keeps its first name and id: that is how a re-run finds it in older files.
    stop = _action_step(provider, name="Stop Ollama", step_id="ollama-stop", command="reap",
                        api_key=False)  # fmt: skip
    steps = "\n\n".join([_CHECKOUT_STEP, stop])
    return f"""\
# The backstop: every night, `ondemand reap` stops every server of this provider labelled
# managed-by=ollama-ondemand that no job holds a lease on (running longer than 12 h with
# nothing in flight), or past its max lifetime, whatever left it running: a runner that
# died before its cleanup, a manual `up`. Servers a job still holds keep running.
# For a shorter idle stop, add a schedule such as "*/15 * * * *" and `command: watchdog`
# (stops this server once idle for idle_timeout with no live lease).
# Written by `ondemand init`: edit it freely, running init again keeps your changes.
name: ollama nightly stop

on:
  schedule:
    - cron: "0 2 * * *" # every day at 02:00 UTC
  workflow_dispatch:

permissions: {{}}

# One control job at a time for this server (shared with ollama-manual.yml).
concurrency:
  group: {name}-control
  cancel-in-progress: false

jobs:
  stop:
    name: Stop Ollama
    runs-on: ubuntu-latest
    timeout-minutes: 30
    permissions:
      contents: read # to check out ondemand.yml
      deployments: write # to mark the GitHub Deployments of stopped servers inactive
    steps:
{_indent(steps, 6)}
"""


def manual(provider: str, name: str) -> str:
    """``ollama-manual.yml``: up, down, status or delete from the Actions tab."""
    run = _action_step(provider, name="Run ondemand", step_id="ollama",
                       command="${{ inputs.command }}", api_key=True)  # fmt: skip
    steps = "\n\n".join([_CHECKOUT_STEP, run])
    return f"""\
# Control the server by hand from the Actions tab (Run workflow): up, down, status or
# delete. A server started here runs until `down`, the nightly stop, or its lease ends.
# Written by `ondemand init`: edit it freely, running init again keeps your changes.
name: ollama manual

on:
  workflow_dispatch:
    inputs:
      command:
        description: What to do with the Ollama server
        type: choice
        required: true
        default: status
        options:
          - up
          - down
          - status
          - delete

permissions: {{}}

# One control job at a time for this server (shared with ollama-nightly-stop.yml).
concurrency:
  group: {name}-control
  cancel-in-progress: false

jobs:
  ollama:
    name: ondemand ${{{{ inputs.command }}}}
    runs-on: ubuntu-latest
    timeout-minutes: 60
    permissions:
      contents: read # to check out ondemand.yml
      deployments: write # up and down record the server as a GitHub Deployment
    steps:
{_indent(steps, 6)}
"""
