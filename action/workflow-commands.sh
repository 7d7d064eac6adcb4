# shellcheck shell=bash
# Workflow commands written from the action's shell steps, escaped the way the runner reads
# them back. The runner unescapes a command's data by replacing "%0D" with CR, "%0A" with LF,
# then "%25" with "%" (actions/runner src/Runner.Common/ActionCommand.cs, _escapeDataMappings
# and UnescapeData, commit 079cdb1d05fe0ec50f8c51de5a4fa51d0eb189b0); "%" is escaped first
# so that a value holding "%0A" comes back as those three characters, as
# actions/toolkit packages/core/src/command.ts escapeData does
# (commit a944251692e50709e44d95e64d43c80236b9f6af). Sourced by install.sh and run.sh.

# The data of a workflow command: one line, unescaped by the runner to $1 exactly.
escape_data() {
  local text=$1
  # No quotes in the replacements: bash 3.2 (macOS) would keep them.
  text=${text//[%]/%25}
  text=${text//$'\r'/%0D}
  text=${text//$'\n'/%0A}
  printf '%s' "$text"
}

# Mask a secret: the whole value, then each of its lines (CR, LF and CRLF end a line, as
# the runner reads a step's output) on its own. The runner masks the value it unescaped,
# line by line of the log, so a multi-line value as a whole never matches a log line: each
# line needs its own mask. Blank values and lines are skipped (the runner warns on them).
mask() {
  local value=$1 line
  [[ -n "${value//[[:space:]]/}" ]] || return 0
  echo "::add-mask::$(escape_data "$value")"
  [[ "$value" == *[$'\r\n']* ]] || return 0
  while IFS= read -r line; do
    if [[ -n "${line//[[:space:]]/}" ]]; then
      echo "::add-mask::$(escape_data "$line")"
    fi
  done <<<"${value//$'\r'/$'\n'}"
}
