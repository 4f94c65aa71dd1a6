"""TLS fixtures: throwaway CAs and certificates (trustme) written to files, HTTPS upstreams, TLS gateways."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from cryptography import x509

from consulgw.devagent import DevAgent
from consulgw.server.gateway import Gateway
from tests.gateway.conftest import Consul, Upstream, gateway_settings_for, start_upstream


@dataclass(frozen=True, slots=True)
class CertFiles:
    """A leaf certificate and its key on disk (what --tls-cert / --tls-key point at)."""

    cert: Path
    key: Path
    serial: int
    common_name: str


def write_leaf(ca: trustme.CA, directory: Path, name: str, *, common_name: str) -> CertFiles:
    """Issue a certificate for 127.0.0.1 and localhost, write ``<name>.pem`` (chain) and ``<name>.key``."""
    leaf = ca.issue_cert("127.0.0.1", "localhost", common_name=common_name)
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return CertFiles(cert=cert, key=key, serial=serial_of(cert), common_name=common_name)


def serial_of(cert_file: Path) -> int:
    """The serial number of the first certificate in a PEM file."""
    return int(x509.load_pem_x509_certificate(cert_file.read_bytes()).serial_number)


def serial_seen(cert: dict[str, Any]) -> int:
    """The serial number in a ``getpeercert()`` dictionary (hex text there)."""
    return int(cert["serialNumber"], 16)


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    """A client context that trusts only ``ca`` (and verifies host names)."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


class HttpsConnection:
    """One TLS connection to 127.0.0.1, speaking plain HTTP/1.1 over it: the handshake happens on ``open``, the peer
    certificate is at hand whatever the response size (aiohttp releases small responses' connections before one
    can look at them), and several requests can share the connection (keep-alive)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self._reader = reader
        self._writer = writer
        self._host = host
        ssl_object = writer.get_extra_info("ssl_object")
        assert ssl_object is not None, "not a TLS connection"
        cert = ssl_object.getpeercert()
        assert cert, "the server sent no certificate"
        self.peer_cert: dict[str, Any] = dict(cert)

    @classmethod
    async def open(
        cls, port: int, context: ssl.SSLContext, *, server_name: str = "127.0.0.1", timeout: float = 10.0
    ) -> HttpsConnection:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=server_name), timeout
        )
        return cls(reader, writer, f"{server_name}:{port}")

    async def get(self, path: str, *, close: bool = False, timeout: float = 10.0) -> tuple[int, bytes]:
        """One GET on this connection: (status, body)."""
        head = f"GET {path} HTTP/1.1\r\nHost: {self._host}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n"
        self._writer.write(head.encode())
        await self._writer.drain()
        raw = await asyncio.wait_for(self._reader.readuntil(b"\r\n\r\n"), timeout)
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        length = int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(self._reader.readexactly(length), timeout)
        return status, body

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self._writer.wait_closed()


async def https_get(
    port: int, path: str, context: ssl.SSLContext, *, server_name: str = "127.0.0.1"
) -> tuple[int, bytes, dict[str, Any]]:
    """A new connection (full handshake), one request, closed: (status, body, the server's certificate)."""
    connection = await HttpsConnection.open(port, context, server_name=server_name)
    try:
        status, body = await connection.get(path, close=True)
        return status, body, connection.peer_cert
    finally:
        await connection.close()


def common_name(cert: dict[str, Any]) -> str:
    return next(value for rdn in cert["subject"] for key, value in rdn if key == "commonName")


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
async def consul(dev_agent: DevAgent) -> AsyncIterator[Consul]:
    async with aiohttp.ClientSession() as session:
        yield Consul(session, dev_agent.url)


@dataclass
class HttpsUpstream:
    port: int
    seen: list[dict[str, str]]


@pytest.fixture
async def https_upstream() -> AsyncIterator[Callable[[CertFiles], Awaitable[HttpsUpstream]]]:
    """``await https_upstream(cert_files)`` serves HTTPS on 127.0.0.1 with that certificate; echoes what it got."""
    runners: list[web.AppRunner] = []

    async def start(files: CertFiles) -> HttpsUpstream:
        seen: list[dict[str, str]] = []

        async def echo(request: web.Request) -> web.Response:
            seen.append(dict(request.headers))
            return web.json_response({"upstream": "https", "path": request.raw_path, "scheme": request.scheme})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", echo)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        runners.append(runner)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(files.cert, files.key)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        port = next(int(a[1]) for a in runner.addresses if isinstance(a, tuple))
        return HttpsUpstream(port=port, seen=seen)

    yield start
    for runner in runners:
        with contextlib.suppress(Exception):
            await runner.cleanup()


@pytest.fixture
async def tls_gateway(dev_agent: DevAgent) -> AsyncIterator[Callable[..., Awaitable[Gateway]]]:
    """``await tls_gateway(**GatewaySettings overrides)``: a started, ready gateway (stopped at teardown)."""
    started: list[Gateway] = []

    async def start(**overrides: Any) -> Gateway:
        for key in ("tls_cert", "tls_key", "upstream_ca"):
            if isinstance(overrides.get(key), Path):
                overrides[key] = str(overrides[key])
        gateway = Gateway(gateway_settings_for(dev_agent.url, **overrides), consul_wait=5.0)
        await gateway.start()
        started.append(gateway)
        await gateway.wait_ready(10.0)
        return gateway

    yield start
    for gateway in started:
        await gateway.stop()


@pytest.fixture
async def plain_upstream() -> AsyncIterator[Callable[[str], Awaitable[Upstream]]]:
    """``await plain_upstream(name)``: the gateway tests' plain-HTTP echo upstream (stopped at teardown)."""
    started: list[Upstream] = []

    async def start(name: str) -> Upstream:
        upstream = await start_upstream(name)
        started.append(upstream)
        return upstream

    yield start
    for upstream in started:
        with contextlib.suppress(Exception):
            await upstream.stop()
