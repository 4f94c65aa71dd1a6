"""The gateway as an HTTPS client: instances with Meta gw-scheme=https, verified against --upstream-ca."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme

from consulgw.server.gateway import Gateway
from tests.gateway.conftest import Consul, Upstream, routed, wait_for

from .conftest import CertFiles, HttpsUpstream, write_leaf

HTTPS = {"gw-scheme": "https"}


async def get(url: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(url, **kwargs) as resp:
        return resp.status, json.loads(await resp.read())


async def test_https_upstream_verified_against_upstream_ca(
    ca: trustme.CA,
    ca_file: Path,
    tmp_path: Path,
    consul: Consul,
    https_upstream: Callable[[CertFiles], Awaitable[HttpsUpstream]],
    tls_gateway: Callable[..., Awaitable[Gateway]],
) -> None:
    up = await https_upstream(write_leaf(ca, tmp_path, "upstream", common_name="users.internal"))
    await consul.register("users", up.port, tags=["gw.route=/users"], meta=HTTPS)
    gateway = await tls_gateway(upstream_ca=ca_file)
    await wait_for(lambda: routed(gateway, "users", 1))

    status, body = await get(f"{gateway.url}/users/1?x=2")

    assert status == 200
    assert body == {"upstream": "https", "path": "/users/1?x=2", "scheme": "https"}
    assert len(up.seen) == 1
    assert up.seen[0]["X-Forwarded-Proto"] == "http"  # what the client used, not what the gateway used upstream


def _other_ca_file(tmp_path: Path) -> Path:
    path = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


@pytest.mark.parametrize(
    ("gateway_ca", "names", "reason"),
    [
        pytest.param("other", ("127.0.0.1",), "unable to get local issuer certificate", id="ca-does-not-match"),
        pytest.param("system", ("127.0.0.1",), "unable to get local issuer certificate", id="no-upstream-ca"),
        pytest.param(
            "right",
            ("users.internal",),
            "IP address mismatch, certificate is not valid for '127.0.0.1'.",
            id="certificate-for-another-name",
        ),
    ],
)
async def test_untrusted_upstream_certificate_is_a_502_that_says_so(
    ca: trustme.CA,
    ca_file: Path,
    tmp_path: Path,
    consul: Consul,
    https_upstream: Callable[[CertFiles], Awaitable[HttpsUpstream]],
    tls_gateway: Callable[..., Awaitable[Gateway]],
    gateway_ca: str,
    names: tuple[str, ...],
    reason: str,
) -> None:
    leaf = ca.issue_cert(*names)
    files = CertFiles(cert=tmp_path / "up.pem", key=tmp_path / "up.key", serial=0, common_name=names[0])
    files.cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    files.key.write_bytes(leaf.private_key_pem.bytes())
    up = await https_upstream(files)
    await consul.register("users", up.port, tags=["gw.route=/users"], meta=HTTPS)
    upstream_ca = {"other": _other_ca_file(tmp_path), "system": None, "right": ca_file}[gateway_ca]
    gateway = await tls_gateway(upstream_ca=upstream_ca)
    await wait_for(lambda: routed(gateway, "users", 1))

    status, body = await get(f"{gateway.url}/users/1")

    assert status == 502
    assert body["error"] == "upstream_unreachable"
    assert body["message"] == f"TLS certificate of 127.0.0.1:{up.port} could not be verified ({reason})"
    assert up.seen == []  # nothing reached the upstream
    async with aiohttp.ClientSession() as http, http.get(f"{gateway.admin_url}/metrics") as resp:
        metrics = await resp.text()
    assert 'consulgw_upstream_errors_total{kind="tls",service="users"}' in metrics


async def test_plain_http_upstream_marked_https_is_a_tls_handshake_502(
    consul: Consul,
    plain_upstream: Callable[[str], Awaitable[Upstream]],
    tls_gateway: Callable[..., Awaitable[Gateway]],
) -> None:
    up = await plain_upstream("plain")
    await consul.register("users", up.port, tags=["gw.route=/users"], meta=HTTPS)
    gateway = await tls_gateway()
    await wait_for(lambda: routed(gateway, "users", 1))

    status, body = await get(f"{gateway.url}/users/1")

    assert status == 502
    assert body["error"] == "upstream_unreachable"
    assert body["message"] == f"TLS handshake with 127.0.0.1:{up.port} failed (WRONG_VERSION_NUMBER)"


async def test_tls_failure_on_one_instance_retries_on_another(
    ca: trustme.CA,
    ca_file: Path,
    tmp_path: Path,
    consul: Consul,
    https_upstream: Callable[[CertFiles], Awaitable[HttpsUpstream]],
    plain_upstream: Callable[[str], Awaitable[Upstream]],
    tls_gateway: Callable[..., Awaitable[Gateway]],
) -> None:
    """Nothing was sent to an instance whose handshake failed, so the default retry policy tries another one."""
    good = await https_upstream(write_leaf(ca, tmp_path, "good", common_name="good"))
    bad = await plain_upstream("bad")  # speaks HTTP on a port registered as HTTPS
    await consul.register("users", good.port, tags=["gw.route=/users"], meta=HTTPS)
    await consul.register("users", bad.port, tags=["gw.route=/users"], meta=HTTPS)
    gateway = await tls_gateway(upstream_ca=ca_file)
    await wait_for(lambda: routed(gateway, "users", 2))

    for _ in range(6):
        status, body = await get(f"{gateway.url}/users/1")
        assert status == 200
        assert body["upstream"] == "https"
    assert len(good.seen) == 6
