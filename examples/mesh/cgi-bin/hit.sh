#!/bin/sh
# The API: counts one hit in the cache (reached by its Compose name) and says who answered;
# when it cannot, wget's own words say why ("bad address": the name; "can't connect":
# the path).
echo "Content-Type: text/plain"
echo
err=/tmp/hit.$$
if n=$(wget -q -O - http://cache:6379/cgi-bin/incr 2>"$err"); then
  echo "api $(hostname) count $n"
else
  echo "api $(hostname) cache unreachable: $(head -c 200 "$err")"
fi
rm -f "$err"
