#!/bin/sh
# The cache: one counter in the named volume; ?peek reads it without counting.
echo "Content-Type: text/plain"
echo
if [ "$QUERY_STRING" = peek ]; then
  cat /data/count 2>/dev/null || echo 0
  exit 0
fi
# busybox has no flock: a directory is the lock (mkdir is atomic)
until mkdir /data/lock 2>/dev/null; do :; done
n=$(cat /data/count 2>/dev/null || echo 0)
n=$((n + 1))
echo $n > /data/count
rmdir /data/lock
echo $n
