#!/usr/bin/env bash
# The action's run step: `ondemand <command>` with the inputs it was given. Inputs arrive as
# INPUT_* and reach the CLI under its own names only when they are not empty, so what a job
# sets in its env (RUNPOD_API_KEY, ONDEMAND_MODELS, ...) still counts when an input is left
# out. The CLI writes the outputs, the exported env and the job summary itself.
set -euo pipefail
# shellcheck source=action/workflow-commands.sh
source "$(dirname "${BASH_SOURCE[0]}")/workflow-commands.sh"

venv="${RUNNER_TEMP:?RUNNER_TEMP is not set}/ollama-ondemand/venv"
commands=" up down start stop status deploy delete watchdog reap build "

# Masked before anything can print them: the whole value and each of its lines.
for secret in INPUT_API_KEY INPUT_ADMIN_KEY INPUT_OVH_TOKEN INPUT_RUNPOD_API_KEY INPUT_RUNPOD_CLIENT_KEY INPUT_GITHUB_TOKEN; do
  mask "${!secret:-}"
done

command="${INPUT_COMMAND:-}"
if [[ -z "$command" ]]; then
  echo "::error title=ollama-ondemand::the command input is required: one of${commands% }"
  exit 2
fi
if [[ "$commands" != *" $command "* ]]; then
  echo "::error title=ollama-ondemand::$(escape_data "unknown command '$command': use one of${commands% }")"
  exit 2
fi

# input variable -> the CLI's variable
pairs=(
  INPUT_PROVIDER:ONDEMAND_PROVIDER
  INPUT_NAME:ONDEMAND_NAME
  INPUT_CONFIG:ONDEMAND_CONFIG
  INPUT_MODELS:ONDEMAND_MODELS
  INPUT_IMAGE:ONDEMAND_IMAGE
  INPUT_GPU:ONDEMAND_GPU
  INPUT_REGION:ONDEMAND_REGION
  INPUT_TIMEOUT:ONDEMAND_TIMEOUT
  INPUT_IDLE_TIMEOUT:ONDEMAND_IDLE_TIMEOUT
  INPUT_LEASE_TTL:ONDEMAND_LEASE_TTL
  INPUT_API_KEY:ONDEMAND_API_KEY
  INPUT_ADMIN_KEY:ONDEMAND_ADMIN_KEY
  INPUT_OVH_TOKEN:OVH_AI_TOKEN
  INPUT_RUNPOD_API_KEY:RUNPOD_API_KEY
  INPUT_RUNPOD_CLIENT_KEY:RUNPOD_CLIENT_KEY
  INPUT_GITHUB_TOKEN:ONDEMAND_GITHUB_TOKEN
  INPUT_EXPORT_ENV:ONDEMAND_EXPORT_ENV
)
# An empty github-token is handed over empty: it turns GitHub Deployments off quietly.
for pair in "${pairs[@]}"; do
  input="${pair%%:*}"
  target="${pair#*:}"
  if [[ -n "${!input:-}" || "$input" == INPUT_GITHUB_TOKEN ]]; then
    export "$target=${!input}"
  fi
  unset "$input"
done
unset INPUT_COMMAND

# The venv's Python in isolated mode (-I): PYTHONPATH, PYTHONSTARTUP, PYTHONHOME and the
# user's site-packages, which an earlier step could have set through $GITHUB_ENV or
# written, are ignored. -B: the venv stays as install.sh recorded it and checked it just
# before this step.
ondemand=("$venv/bin/python" -I -B "$venv/bin/ondemand")
# A workflow step checks once (run it from a schedule); the looping watchdog is for a
# machine of your own.
if [[ "$command" == watchdog ]]; then
  exec "${ondemand[@]}" watchdog --once
fi
exec "${ondemand[@]}" "$command"
