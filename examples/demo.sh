#!/usr/bin/env bash
# `make demo`: the whole release pipeline on examples/hello, against the local lab.
# The Makefile has already installed what was missing and brought the lab up.
#
#   up dev (build, push, pin digests, deploy, verify) -> verify dev -> promote test
#   (+ its smoke check) -> verify test -> promote prod: refused without --approve
#   (exit 3), done with it -> each environment's URLs and `orch history --env prod`
#   -> the service mesh: examples/mesh on prod's two nodes (docs/networking.md).
#
# Idempotent: run it again and every step says it has nothing to do (the same release
# is live everywhere already). Set HELLO_WEB_PORT / HELLO_API_PORT to move the ports.
set -euo pipefail
cd "$(dirname "$0")/hello"
ORCH="${ORCH:-$(cd ../.. && pwd)/.venv/bin/orch}"
PYTHON="${PYTHON:-$(cd ../.. && pwd)/.venv/bin/python}"
# For people: text even when the output goes to a pipe or a file (`make demo | tee`),
# where orch would print JSON lines (see docs/json-output.md and examples/ci/).
export ORCH_OUTPUT="${ORCH_OUTPUT:-text}"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "orch envs: the environments and the pipeline"
"$ORCH" envs

step "orch up --env dev: build and push the images, pin them by digest, deploy, verify"
"$ORCH" up --env dev

step "orch verify --env dev: the checks again, recorded on the live release"
"$ORCH" verify --env dev

step "orch promote hello --to test: dev's release, the same digests, test's overlay (nothing rebuilt)"
"$ORCH" promote hello --to test

step "orch verify --env test"
"$ORCH" verify --env test

step "orch promote hello --to prod (without --approve): prod requires an approval"
set +e
"$ORCH" promote hello --to prod
code=$?
set -e
case $code in
  3) echo "(refused with exit code 3, as it should be: the gate says how to pass it)" ;;
  0) echo "(nothing to do: this release is live in prod already)" ;;
  *) echo "unexpected exit code $code" >&2; exit "$code" ;;
esac

step "orch promote hello --to prod --approve"
"$ORCH" promote hello --to prod --approve

step "Where it runs"
for env in dev test prod; do
  "$ORCH" ps --env "$env" --json | "$PYTHON" -c '
import json, sys
doc = json.loads(sys.stdin.read().strip().splitlines()[-1])
env = doc["environment"]
urls = {}
for c in doc["containers"]:
    for p in c["ports"]:
        hostport = p.split("->")[0]
        path = "health.json" if c["service"] == "api" else ""
        urls.setdefault(c["service"], []).append(f"http://{hostport}/{path}")
digests = sorted({c["service"] + " " + c["digest"][:19] for c in doc["containers"]})
print(f"{env}:")
for svc, us in sorted(urls.items()):
    print(f"  {svc:4} " + "  ".join(sorted(set(us))))
print("  digests: " + ", ".join(digests))
'
done

step "orch history --env prod"
"$ORCH" history --env prod

step "The service mesh: examples/mesh on prod, an API on both nodes and a cache that publishes nothing"
MESH_PORT="${MESH_API_PORT:-18090}"
MESH_API_PORT="$MESH_PORT" "$ORCH" up -f ../mesh/compose.yaml --environments ../../environments --env prod
for node in 10.250.0.31 10.250.0.32; do
  for _ in 1 2; do
    printf '%s -> ' "$node"
    "$PYTHON" -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode().strip())' \
      "http://$node:$MESH_PORT/cgi-bin/hit"
  done
done
echo "(each API replica reaches the cache on prod-1 by its name, through WireGuard; one counter)"
"$ORCH" nodes check --env prod --environments ../../environments

step "HTTPS at the edge: examples/https on prod, a certificate from the lab's ACME server (pebble), served by both nodes"
SITE_HOST="${SITE_HOST:-www.prod.lab.test}"
"$ORCH" lab dns set "$SITE_HOST" --env prod >/dev/null
SITE_HOST="$SITE_HOST" "$ORCH" up -f ../https/compose.yaml --environments ../../environments --env prod
for node in 10.250.0.31 10.250.0.32; do
  printf 'https://%s/ via %s -> ' "$SITE_HOST" "$node"
  curl -sS --cacert /var/lib/orch-lab/acme-ca.crt --resolve "$SITE_HOST:443:$node" "https://$SITE_HOST/"
done
printf 'http://%s/ via 10.250.0.31 -> ' "$SITE_HOST"
curl -sS -o /dev/null -w '%{http_code} %{redirect_url}\n' --resolve "$SITE_HOST:80:10.250.0.31" "http://$SITE_HOST/"
"$ORCH" certs --env prod --environments ../../environments
