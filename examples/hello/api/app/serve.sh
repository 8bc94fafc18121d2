#!/bin/bash
# Writes the api's answers once at start, then serves them with busybox httpd.
set -euo pipefail
mkdir -p /srv/www
message="$(cat /app/message.txt)"
cat > /srv/www/health.json <<JSON
{"status": "ok", "service": "api", "env": "${HELLO_ENV:-none}", "message": "${message}", "debian": "$(cat /etc/debian_version)"}
JSON
echo "${message}" > /srv/www/message.txt
exec busybox httpd -f -v -p 8081 -h /srv/www
