#!/usr/bin/env python3
"""Container health check for consulgw, standard library only (slim images have no curl).

Usage: consulgw-healthcheck [PATH]   (default /-/healthy)

Asks the admin listener named by CONSULGW_ADMIN_LISTEN (default 127.0.0.1:8081; a wildcard host such as 0.0.0.0
or :: is reached through loopback) for PATH and exits 0 on HTTP 200, 1 on anything else, printing one line.
"""

from __future__ import annotations

import http.client
import os
import sys

DEFAULT_ADMIN = "127.0.0.1:8081"
TIMEOUT_SECONDS = 2.0


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")


def admin_target(listen: str) -> tuple[str, int]:
    """Turn a HOST:PORT listen address into the address a local client connects to."""
    host, sep, port = listen.strip().rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"CONSULGW_ADMIN_LISTEN: {listen!r} is not HOST:PORT")
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host, int(port)


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else "/-/healthy"
    try:
        host, port = admin_target(os.environ.get("CONSULGW_ADMIN_LISTEN") or DEFAULT_ADMIN)
    except ValueError as exc:
        _say(f"unhealthy: {exc}")
        return 1
    conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT_SECONDS)
    try:
        conn.request("GET", path, headers={"User-Agent": "consulgw-healthcheck"})
        status = conn.getresponse().status
    except OSError as exc:
        _say(f"unhealthy: GET http://{host}:{port}{path}: {exc}")
        return 1
    finally:
        conn.close()
    if status != 200:
        _say(f"unhealthy: GET http://{host}:{port}{path} answered {status}")
        return 1
    _say(f"healthy: GET http://{host}:{port}{path} answered 200")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
