"""The image's HEALTHCHECK: GET /healthz on the ops listener of the config the bridge reads.

The address comes from the same config (``--config`` is not visible here, so
``$DIMSE_BRIDGE_CONFIG``, else the embedded default), read by the bridge's own loader, so a
mounted config that moves ``[ops] listen`` moves the check with it. A wildcard host
(0.0.0.0, ::) is reached on loopback. Exit 0 on 200, 1 otherwise, with the reason on stdout
(``podman inspect`` and ``docker inspect`` keep it).
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

from bridge.config import load_config
from bridge.errors import ConfigError

WILDCARDS = {"", "0.0.0.0", "*"}
WILDCARDS_V6 = {"::", "[::]"}


def healthz_url(listen: str) -> str:
    host, _, port = listen.rpartition(":")
    if host in WILDCARDS:
        host = "127.0.0.1"
    elif host in WILDCARDS_V6:
        host = "[::1]"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}/healthz"


def main() -> int:
    try:
        listen = load_config().ops.listen
    except ConfigError as exc:
        print(f"unhealthy: invalid config: {exc}")
        return 1
    if not listen:
        print("unhealthy: [ops] listen is off in the config, so there is no /healthz")
        return 1
    url = healthz_url(listen)
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:
        print(f"unhealthy: {url}: {exc}")
        return 1
    if status != 200:
        print(f"unhealthy: {url}: HTTP {status}")
        return 1
    print(f"ok: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
