"""A smoke test run by `orch verify` on the controller (a `command:` check).

orch exports ORCH_ENV and, per service with a published port, ORCH_URL_<SERVICE> (one
node) and ORCH_URLS_<SERVICE> (every node running it, space-separated).
"""

import json
import os
import sys
import urllib.request


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


def main() -> int:
    env = os.environ["ORCH_ENV"]
    for url in os.environ["ORCH_URLS_WEB"].split():
        assert "hello from orch" in get(url), f"{url}: unexpected page"
    for url in os.environ["ORCH_URLS_API"].split():
        health = json.loads(get(url.rstrip("/") + "/health.json"))
        assert health["status"] == "ok" and health["env"] == env, f"{url}: {health}"
    print(f"smoke: {env} ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
