# make demo: install what is missing, bring the lab up, run the pipeline on the example app.
# make test: the full suite (unit tests, then end-to-end tests against the lab).
# make fuzz: hypothesis over the Compose loader, interpolation, .env and environment files and
#   the agent's request parser, for FUZZ_SECONDS (default 120; not part of make test).
# make bench: the benchmarks on the lab, written to bench/RESULTS.md (not part of make test);
#   options through BENCH_ARGS, e.g. make bench BENCH_ARGS="--only noop --runs 3".
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ORCH := $(BIN)/orch
# Debian packages the lab and the end-to-end tests need (installed only when missing);
# python3-paramiko: docker-compose's DOCKER_HOST=ssh:// (bench/deploy.py's baseline).
LAB_PACKAGES := python3 docker.io docker-registry openssh-server openssh-client busybox-static \
	debootstrap iproute2 iptables openssl apache2-utils util-linux procps docker-compose haproxy \
	wireguard-tools wireguard-go dnsmasq-base tcpdump pebble curl python3-acme python3-paramiko

.PHONY: all venv system-deps demo test unit e2e lab lab-down lab-status bench fuzz clean

all: venv

system-deps:
	@ORCH_SYSTEM_PACKAGES="$(LAB_PACKAGES)" scripts/system-deps.sh

$(VENV)/.installed: pyproject.toml
	@scripts/system-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@# An editable install compiles nothing; with PYTHONDONTWRITEBYTECODE set (CI) every
	@# command would compile orch's modules again (+0.25 s). Stale .pyc files are ignored.
	$(BIN)/python -m compileall -q orchestrator agent bench >/dev/null
	@touch $@

venv: $(VENV)/.installed

lab: system-deps venv
	$(ORCH) lab up

lab-down: venv
	$(ORCH) lab down

lab-status: venv
	$(ORCH) lab status

unit: venv
	$(BIN)/pytest -q tests/unit

e2e: lab
	$(BIN)/pytest -q tests/e2e

test: system-deps venv lab
	$(BIN)/pytest -q tests/unit tests/e2e

demo: system-deps venv lab
	examples/demo.sh

FUZZ_SECONDS ?= 120
fuzz: venv
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(BIN)/python -m tests.fuzz.run

BENCH_ARGS ?=
# What only `make bench` needs (its load generator for the HTTPS measurement).
BENCH_PACKAGES := nghttp2-client

bench: system-deps venv lab
	@ORCH_SYSTEM_PACKAGES="$(BENCH_PACKAGES)" scripts/system-deps.sh
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
