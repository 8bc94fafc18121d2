#!/usr/bin/env bash
# Installs the Debian packages orch's venv, lab and tests need, only when missing.
# Idempotent and quick when everything is there already. The host's Docker Engine
# is started by `orch lab up` (orchestrator/lab/engine.py), which every make target
# that needs it runs.
set -euo pipefail

need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

# python3 -m venv needs ensurepip: Debian ships it in python3-venv.
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then need+=(python3-venv); fi
for pkg in ${ORCH_SYSTEM_PACKAGES:-}; do have_pkg "$pkg" || need+=("$pkg"); done

if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "system-deps: missing Debian packages: ${need[*]}; run as root (apt-get install ${need[*]})" >&2
        exit 2
    fi
    echo "system-deps: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
