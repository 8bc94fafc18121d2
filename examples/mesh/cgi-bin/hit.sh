#!/bin/sh
# The API: counts one hit in the cache (reached by its Compose name) and says who answered.
echo "Content-Type: text/plain"
echo
n=$(wget -q -O - http://cache:6379/cgi-bin/incr) || { echo "api $(hostname) cache unreachable"; exit 0; }
echo "api $(hostname) count $n"
