#!/usr/bin/env bash
# Starts the host's Docker Engine if it is not answering: with systemd when systemd
# runs the machine, else dockerd in the background logging to /var/log/docker.log.
# The controller builds and pushes with this engine; the lab's nodes have their own.
set -euo pipefail

engine_up() { timeout 5 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

engine_up && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "host-docker: Docker Engine is not running; start it as root (systemctl start docker)" >&2
    exit 2
fi
echo "host-docker: starting Docker Engine"
if [ -d /run/systemd/system ]; then
    systemctl start docker
else
    setsid dockerd </dev/null >>/var/log/docker.log 2>&1 &
fi
for _ in $(seq 60); do engine_up && exit 0; sleep 1; done
echo "host-docker: Docker Engine did not start; last lines of /var/log/docker.log:" >&2
tail -n 15 /var/log/docker.log >&2 || true
exit 1
