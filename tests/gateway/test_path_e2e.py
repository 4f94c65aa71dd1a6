"""Issue 13 finding 1 through a real gateway: paths that a normalising upstream reads differently never get past a
route's policy, and the upstream receives the canonical path the gateway routed.

One upstream is registered twice, as in the report: ``app`` (``gw.route=/app``, no policy) and ``app-admin``
(``gw.route=/app/admin``, JWT). A third registration, ``pub`` (``gw.route=/pub/public strip=/pub``), exposes only
``/public/...`` of the same upstream. The upstream is an aiohttp server (always) and nginx (when installed), which
normalises paths itself exactly as in the report. Requests are written on raw sockets, so no client library
tidies the request-target first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest

from consulgw.server.gateway import Gateway
from tests.support.processes import free_port

from .conftest import Consul, routed, wait_for

SECRET = "path-normalisation-e2e-secret-0123456789"
POLICY = {"auth": {"type": "jwt", "algorithms": ["HS256"], "secret": SECRET}}
TOKEN = jwt.encode({"sub": "alice", "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")

# The report's list: each one reached /app/admin/users upstream through the open /app route, without a token.
BYPASSES = [
    "/app/x/../admin/users",
    "/app/%2e%2e/app/admin/users",
    "/app//admin/users",
    "/app/./admin/users",
    "/app/%61dmin/users",
]
# Refused outright: what an upstream's own decoding would make of them is not what the gateway can route.
AMBIGUOUS = [
    "/app/x/..%2fadmin/users",
    "/app/x%2F..%2Fadmin/users",
    "/app/%2Fadmin/users",
    "/app/x/..\\admin/users",
    "/app/..;/app/admin/users",
    "/../app/admin/users",
]


@dataclass
class App:
    """The upstream: its port, and the request-targets it received so far, in order."""

    port: int
    seen: Callable[[], list[str]]


@contextlib.contextmanager
def nginx_upstream(tmp: Path) -> Iterator[App]:
    """nginx on a free port, logging each request-target as it arrived (``$request_uri``), answering 200."""
    nginx = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if nginx is None:
        pytest.skip("nginx is not installed")
    port = free_port()
    log = tmp / "targets.log"
    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / name).mkdir()
    (tmp / "nginx.conf").write_text(
        f"""
daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{}}
http {{
  log_format targets '$request_uri';
  access_log {log} targets;
  client_body_temp_path {tmp}/client_body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location /app/admin/ {{ return 200 "admin area: $uri\\n"; }}
    location / {{ return 200 "public: $uri\\n"; }}
  }}
}}
"""
    )
    proc = subprocess.Popen(
        [nginx, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-e", str(tmp / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"nginx did not start: {(tmp / 'error.log').read_text(errors='replace')}")
            time.sleep(0.05)

        def seen() -> list[str]:
            return log.read_text().splitlines() if log.exists() else []

        yield App(port=port, seen=seen)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(params=["aiohttp", "nginx"])
async def app(request: pytest.FixtureRequest, upstreams: Any, tmp_path: Path) -> AsyncIterator[App]:
    if request.param == "aiohttp":
        up = await upstreams("app")
        yield App(port=up.port, seen=lambda: [str(r["raw_path"]) for r in up.received])
    else:
        with nginx_upstream(tmp_path) as nginx:
            yield nginx


async def register(consul: Consul, gateway: Gateway, port: int) -> None:
    await consul.kv_put("consulgw/services/app-admin", json.dumps(POLICY))
    await consul.register("app", port, tags=["gw.route=/app"])
    await consul.register("app-admin", port, tags=["gw.route=/app/admin"])
    await consul.register("pub", port, tags=["gw.route=/pub/public strip=/pub"])
    for service in ("app", "app-admin", "pub"):
        await wait_for(lambda service=service: routed(gateway, service, 1))

    def admin_has_policy() -> bool:
        view = gateway.view()
        return view is not None and view.services["app-admin"].policy.auth is not None

    await wait_for(admin_has_policy)


async def raw_request(port: int, target: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One GET written byte for byte on a socket; returns the status and the body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [f"GET {target} HTTP/1.1", "Host: gw.test", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 15)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def test_bypass_paths_answer_from_the_route_they_normalise_to(app: App, gateway: Gateway, consul: Consul) -> None:
    await register(consul, gateway, app.port)
    for target in BYPASSES:
        status, body = await raw_request(gateway.port, target)
        assert status == 401, (target, body)
    for target in AMBIGUOUS:
        status, body = await raw_request(gateway.port, target)
        assert (status, b'"invalid_path"' in body) == (400, True), (target, body)
    assert app.seen() == [], "a request without a token reached the upstream"

    # With the token each one reaches the admin route, and the upstream receives the canonical path.
    for target in BYPASSES:
        status, body = await raw_request(gateway.port, target, {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200, (target, body)
    await wait_for(lambda: len(app.seen()) == len(BYPASSES))
    assert app.seen() == ["/app/admin/users"] * len(BYPASSES)


async def test_strip_prefix_cannot_be_escaped(app: App, gateway: Gateway, consul: Consul) -> None:
    """``pub`` exposes /public/... of the upstream only; ``..`` after the prefix no longer leaves it."""
    await register(consul, gateway, app.port)
    status, _ = await raw_request(gateway.port, "/pub/public/../internal/x")
    assert status == 404  # it is /pub/internal/x, which no route serves
    status, _ = await raw_request(gateway.port, "/pub/public/..%2F..%2Finternal/x")
    assert status == 400
    status, _ = await raw_request(gateway.port, "/pub/public/a/./../b//c?q=/../x&r=%2e%2e")
    assert status == 200
    await wait_for(lambda: len(app.seen()) == 1)
    assert app.seen() == ["/public/b/c?q=/../x&r=%2e%2e"]  # the path normalised and stripped, the query as sent


async def test_encoded_slashes_keep_or_reject(
    upstreams: Any, gateway_factory: Callable[..., Awaitable[Gateway]], consul: Consul
) -> None:
    up = await upstreams("files")
    keep = await gateway_factory()
    reject = await gateway_factory(encoded_slashes="reject")
    await consul.register("files", up.port, tags=["gw.route=/files"])
    for gw in (keep, reject):
        await wait_for(lambda gw=gw: routed(gw, "files", 1))
    assert (await raw_request(keep.port, "/files/group%2fproject"))[0] == 200
    assert [r["raw_path"] for r in up.received] == ["/files/group%2Fproject"]
    status, body = await raw_request(reject.port, "/files/group%2fproject")
    assert status == 400
    assert b"encoded slash" in body
    assert (await raw_request(reject.port, "/files/%7Euser/a%20b"))[0] == 200
    assert [r["raw_path"] for r in up.received][-1] == "/files/~user/a%20b"
