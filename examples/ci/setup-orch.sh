#!/usr/bin/env bash
# Prepare a CI job to run orch: install it in a virtualenv, put the secrets that must be
# files (the SSH key, known_hosts) in files, and create the folder for orch's JSON output.
#
#   GitHub Actions:  run: examples/ci/setup-orch.sh        (exports through $GITHUB_ENV / $GITHUB_PATH)
#   GitLab CI:       before_script: [source examples/ci/setup-orch.sh]
#
# Reads (all optional): ORCH_SSH_PRIVATE_KEY (a secret: the deploy key's text),
# ORCH_KNOWN_HOSTS (the nodes' known_hosts lines), ORCH_OUT (output folder). Writes
# ORCH_SSH_KEY_FILE / ORCH_KNOWN_HOSTS_FILE for environment files that say
# `identity_file: $ORCH_SSH_KEY_FILE` and `known_hosts: $ORCH_KNOWN_HOSTS_FILE`. The
# registry credentials stay variables (ORCH_REGISTRY_USER / ORCH_REGISTRY_PASSWORD).
if ! (return 0 2>/dev/null); then set -eu; fi  # run as a script; sourced: the job's shell options
_orch_root=$(git rev-parse --show-toplevel 2>/dev/null || pwd)
_orch_tmp=${RUNNER_TEMP:-${CI_BUILDS_DIR:-${TMPDIR:-/tmp}}}/orch-ci
mkdir -p "$_orch_tmp"
chmod 700 "$_orch_tmp"

python3 -m venv "$_orch_tmp/venv"
"$_orch_tmp/venv/bin/pip" install --quiet "$_orch_root"

_orch_export() {  # NAME VALUE: for this shell (sourced) and for later steps (GitHub)
  export "$1=$2"
  if [ -n "${GITHUB_ENV:-}" ]; then echo "$1=$2" >> "$GITHUB_ENV"; fi
}
if [ -n "${GITHUB_PATH:-}" ]; then echo "$_orch_tmp/venv/bin" >> "$GITHUB_PATH"; fi
export PATH="$_orch_tmp/venv/bin:$PATH"

if [ -n "${ORCH_SSH_PRIVATE_KEY:-}" ]; then
  (umask 077 && printf '%s\n' "$ORCH_SSH_PRIVATE_KEY" > "$_orch_tmp/id_deploy")
  _orch_export ORCH_SSH_KEY_FILE "$_orch_tmp/id_deploy"
fi
if [ -n "${ORCH_KNOWN_HOSTS:-}" ]; then
  printf '%s\n' "$ORCH_KNOWN_HOSTS" > "$_orch_tmp/known_hosts"
  _orch_export ORCH_KNOWN_HOSTS_FILE "$_orch_tmp/known_hosts"
fi
_orch_export ORCH_OUT "${ORCH_OUT:-$_orch_root/orch-output}"
mkdir -p "$ORCH_OUT"
orch --version
