#!/usr/bin/env bash
# `make demo`: the whole pipeline on the example app, against the local lab.
# The Makefile has already installed what was missing and brought the lab up.
set -euo pipefail
cd "$(dirname "$0")/shop"
ORCH="${ORCH:-../../.venv/bin/orch}"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "orch envs: the environments and the pipeline"
"$ORCH" envs
step "orch config --env prod: the shop app as prod will run it"
"$ORCH" config --env prod
step "orch graph: dependency waves"
"$ORCH" graph
