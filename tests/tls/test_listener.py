"""HTTPS between clients and the gateway: the public listener with --tls-cert/--tls-key, in process."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
import trustme

from consulgw.server.gateway import Gateway
from tests.gateway.conftest import Consul, Upstream, routed, wait_for

from .conftest import HttpsConnection, client_context, common_name, https_get, serial_seen, write_leaf


async def test_https_request_through_the_gateway_verifies_against_the_ca(
    ca: trustme.CA,
    tmp_path: Path,
    consul: Consul,
    plain_upstream: Callable[[str], Awaitable[Upstream]],
    tls_gateway: Callable[..., Awaitable[Gateway]],
) -> None:
    leaf = write_leaf(ca, tmp_path, "gateway", common_name="gateway.test")
    up = await plain_upstream("users-1")
    await consul.register("users", up.port, tags=["gw.route=/api/users strip=/api"])
    gateway = await tls_gateway(tls_cert=leaf.cert, tls_key=leaf.key)
    assert gateway.url == f"https://127.0.0.1:{gateway.port}"
    await wait_for(lambda: routed(gateway, "users", 1))

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_context(ca))) as http:
        async with http.get(f"{gateway.url}/api/users/7") as resp:
            body = await resp.json()
        assert resp.status == 200
        assert body["upstream"] == "users-1"
        assert body["raw_path"] == "/users/7"
        assert body["headers"]["X-Forwarded-Proto"] == "https"  # the upstream learns the client used TLS
        # the same by host name (the certificate names 127.0.0.1 and localhost)
        async with http.get(f"https://localhost:{gateway.port}/api/users/8") as resp:
            assert resp.status == 200
    status, _, cert = await https_get(gateway.port, "/api/users/9", client_context(ca))
    assert status == 200
    assert serial_seen(cert) == leaf.serial
    assert common_name(cert) == "gateway.test"

    # A client that does not trust the CA refuses the gateway's certificate.
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await http.get(f"{gateway.url}/api/users/7")


async def test_admin_listener_stays_plain_http(
    ca: trustme.CA, tmp_path: Path, tls_gateway: Callable[..., Awaitable[Gateway]]
) -> None:
    leaf = write_leaf(ca, tmp_path, "gateway", common_name="gateway.test")
    gateway = await tls_gateway(tls_cert=leaf.cert, tls_key=leaf.key)
    assert gateway.admin_url.startswith("http://")
    async with aiohttp.ClientSession() as http, http.get(f"{gateway.admin_url}/-/ready") as resp:
        assert resp.status == 200


async def test_reload_tls_switches_new_connections_and_keeps_open_ones(
    ca: trustme.CA,
    tmp_path: Path,
    consul: Consul,
    plain_upstream: Callable[[str], Awaitable[Upstream]],
    tls_gateway: Callable[..., Awaitable[Gateway]],
) -> None:
    old = write_leaf(ca, tmp_path, "gateway", common_name="old.gateway.test")
    new = write_leaf(ca, tmp_path, "next", common_name="new.gateway.test")
    up = await plain_upstream("a")
    await consul.register("svc", up.port, tags=["gw.route=/"])
    gateway = await tls_gateway(tls_cert=old.cert, tls_key=old.key)
    await wait_for(lambda: routed(gateway, "svc", 1))

    context = client_context(ca)
    kept = await HttpsConnection.open(gateway.port, context)
    try:
        assert (await kept.get("/before"))[0] == 200
        assert serial_seen(kept.peer_cert) == old.serial
        old.cert.write_bytes(new.cert.read_bytes())
        old.key.write_bytes(new.key.read_bytes())
        assert gateway.reload_tls() is True
        status, _, cert = await https_get(gateway.port, "/after", context)  # a new connection: new certificate
        assert status == 200
        assert serial_seen(cert) == new.serial
        assert common_name(cert) == "new.gateway.test"
        assert (await kept.get("/after"))[0] == 200  # the open keep-alive connection still works
    finally:
        await kept.close()


async def test_failed_reload_keeps_the_previous_certificate(
    ca: trustme.CA,
    tmp_path: Path,
    consul: Consul,
    plain_upstream: Callable[[str], Awaitable[Upstream]],
    tls_gateway: Callable[..., Awaitable[Gateway]],
) -> None:
    old = write_leaf(ca, tmp_path, "gateway", common_name="old.gateway.test")
    new = write_leaf(ca, tmp_path, "next", common_name="new.gateway.test")
    up = await plain_upstream("a")
    await consul.register("svc", up.port, tags=["gw.route=/"])
    gateway = await tls_gateway(tls_cert=old.cert, tls_key=old.key)
    await wait_for(lambda: routed(gateway, "svc", 1))

    old.cert.write_bytes(new.cert.read_bytes())  # the new certificate is in place, its key not yet
    assert gateway.reload_tls() is False  # refused, and logged as tls_reload_failed

    status, _, cert = await https_get(gateway.port, "/x", client_context(ca))
    assert status == 200
    assert serial_seen(cert) == old.serial
