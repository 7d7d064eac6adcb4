#!/usr/bin/env bash
# The action's install step: this checkout of ollama-ondemand (the action's own ref, so the
# CLI always matches it) goes into a venv under $RUNNER_TEMP, and only the `ondemand`
# command goes on PATH: the job's Python and packages are left alone. A second use of the
# action in the same job (up, then down) reuses the venv only after checking every file in
# it against what was installed (verify_venv.py): an earlier step of the job may have
# planted code there, which the run step would execute with the job's secrets in reach.
# The runner's Python runs the check isolated and without site (-I -S): nothing in the
# venv runs while it is recorded or checked.
set -euo pipefail
# shellcheck source=action/workflow-commands.sh
source "$(dirname "${BASH_SOURCE[0]}")/workflow-commands.sh"

action_path="${GITHUB_ACTION_PATH:?install.sh runs as a step of the ollama-ondemand action}"
root="${RUNNER_TEMP:?RUNNER_TEMP is not set}/ollama-ondemand"
venv="$root/venv"
bin="$root/bin"
python="${ONDEMAND_ACTION_PYTHON:-python3}"
stamp="$venv/.installed-from"
# The same action ref in the same job installs the same code.
want="$action_path@${GITHUB_ACTION_REF:-local}"

reuse=false
if [[ -x "$venv/bin/ondemand" && -f "$stamp" && "$(<"$stamp")" == "$want" ]]; then
  if found=$("$python" -I -S -B "$action_path/action/verify_venv.py" check "$venv"); then
    echo "ollama-ondemand is already installed in $venv (every file checked)"
    reuse=true
  else
    found=${found//$'\n'/; }
    echo "::warning title=ollama-ondemand::$(escape_data "the venv in $venv changed since it was installed ($found): installing it again. Something earlier in this job wrote there; see docs/action.md#what-the-venv-check-guarantees")"
  fi
fi
if [[ "$reuse" != true ]]; then
  echo "::group::$(escape_data "Install ollama-ondemand into $venv")"
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
  "$python" -I -S -B "$action_path/action/verify_venv.py" record "$venv"
  echo "installed in $((SECONDS - started)) s"
  echo "::endgroup::"
fi

mkdir -p "$bin"
ln -sf "$venv/bin/ondemand" "$bin/ondemand"
echo "$bin" >>"${GITHUB_PATH:?GITHUB_PATH is not set}"
