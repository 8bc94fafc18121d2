#!/usr/bin/env bash
# Starts the host's Docker Engine if it is not answering: with systemd when systemd
# runs the machine, else dockerd in the background logging to /var/log/docker.log.
# The controller builds and pushes with this engine; the lab's nodes have their own.
#
# dockerd gives its containerd only 15 s to answer and exits otherwise; on a loaded
# or cold machine (a fresh CI runner) that happens, so a dockerd that died before
# answering is started again (it adopts the containerd still coming up).
set -euo pipefail

LOG=/var/log/docker.log
ATTEMPTS=${ORCH_DOCKERD_ATTEMPTS:-4}
engine_up() { timeout 5 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

engine_up && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "host-docker: Docker Engine is not running; start it as root (systemctl start docker)" >&2
    exit 2
fi
for attempt in $(seq "$ATTEMPTS"); do
    echo "host-docker: starting Docker Engine (attempt $attempt of $ATTEMPTS)"
    if [ -d /run/systemd/system ]; then
        systemctl start docker || true
        pid=$(systemctl show -p MainPID --value docker 2>/dev/null || echo 0)
    else
        # A dockerd killed earlier leaves its pid file, which makes the next one refuse.
        if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
            rm -f /var/run/docker.pid
        fi
        setsid dockerd </dev/null >>"$LOG" 2>&1 &
        pid=$!
    fi
    for _ in $(seq 90); do
        engine_up && exit 0
        [ "${pid:-0}" != 0 ] && ! kill -0 "$pid" 2>/dev/null && break
        sleep 1
    done
    engine_up && exit 0
done
echo "host-docker: Docker Engine did not start after $ATTEMPTS attempts; last warnings and errors in $LOG:" >&2
tail -n 400 "$LOG" 2>/dev/null | grep -v -e 'level=info' -e 'level=debug' | tail -n 20 >&2 || true
echo "host-docker: fix what the log says, then run make again" >&2
exit 1
