#!/usr/bin/env bash
# The action's install step: this checkout of ollama-ondemand (the action's own ref, so the
# CLI always matches it) goes into a venv under $RUNNER_TEMP, and only the `ondemand`
# command goes on PATH: the job's Python and packages are left alone. A second use of the
# action in the same job (up, then down) finds the venv and reuses it.
set -euo pipefail

action_path="${GITHUB_ACTION_PATH:?install.sh runs as a step of the ollama-ondemand action}"
root="${RUNNER_TEMP:?RUNNER_TEMP is not set}/ollama-ondemand"
venv="$root/venv"
bin="$root/bin"
python="${ONDEMAND_ACTION_PYTHON:-python3}"
stamp="$venv/.installed-from"
# The same action ref in the same job installs the same code.
want="$action_path@${GITHUB_ACTION_REF:-local}"

if [[ -x "$venv/bin/ondemand" && -f "$stamp" && "$(<"$stamp")" == "$want" ]]; then
  echo "ollama-ondemand is already installed in $venv"
else
  echo "::group::Install ollama-ondemand into $venv"
  started=$SECONDS
  rm -rf "$venv"
  # The server extra lets the local and sandbox providers run a server on the runner.
  if command -v uv >/dev/null 2>&1; then
    echo "installing with uv"
    uv venv --quiet --python "$python" "$venv"
    uv pip install --quiet --python "$venv/bin/python" "${action_path}[server]"
  else
    echo "installing with pip (uv is not on PATH)"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${action_path}[server]"
  fi
  printf '%s' "$want" >"$stamp"
  echo "installed in $((SECONDS - started)) s"
  echo "::endgroup::"
fi

mkdir -p "$bin"
ln -sf "$venv/bin/ondemand" "$bin/ondemand"
echo "$bin" >>"${GITHUB_PATH:?GITHUB_PATH is not set}"
