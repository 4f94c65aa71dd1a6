"""Fixtures for issue 4 end to end: policies from KV applied by a real gateway (dev agent, real Redis, real upstreams).

Reused from ``tests.gateway.conftest``: ``http``, ``consul`` and ``upstreams`` fixtures, ``wait_for``, ``routed``.
Added here:

- ``make_gateway(clock=None, **settings_overrides)``: an in-process gateway (like ``gateway_factory``) that can be
  given a clock, e.g. ``SkewedClock`` to step past the JWKS refresh rate limit without sleeping.
- ``switchables``: upstreams that answer a settable status and count their hits (circuit breaker tests).
- ``jwks_server``: an aiohttp JWK Set server on 127.0.0.1 whose key set can be swapped (rotation).
- ``private_redis``: a ``redis-server`` subprocess on a free port that a test can stop and start again.
- admin helpers: ``admin_routes``, ``metric_value``; policy helpers: ``put_policy``, ``wait_policy``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from consulgw.policy.model import ServicePolicy
from consulgw.policy.parse import parse_policy
from consulgw.server.gateway import Gateway
from tests.gateway.conftest import (  # noqa: F401 - fixtures re-exported for this folder
    Consul,
    consul,
    gateway_settings_for,
    http,
    routed,
    upstreams,
)
from tests.gateway.conftest import wait_for as _wait_for
from tests.support.processes import GatewayProcess, gateway_process

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_for(
    predicate: Callable[[], Awaitable[bool]] | Callable[[], bool], *, timeout: float = 20.0, interval: float = 0.02
) -> None:
    """``tests.gateway.conftest.wait_for`` with a roomier default: two cores are shared with other test runs."""
    await _wait_for(predicate, timeout=timeout, interval=interval)


def unique(prefix: str) -> str:
    """A service name no earlier run used (Redis keys are namespaced by service and outlive a test run)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class SkewedClock:
    """The system clock plus an offset a test may advance: ``clock.offset += 11`` is 11 s later for the gateway."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def time(self) -> float:
        return time.time() + self.offset

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@pytest.fixture
async def make_gateway(dev_agent: Any) -> AsyncIterator[Callable[..., Awaitable[Gateway]]]:
    started: list[Gateway] = []

    async def factory(*, clock: Any = None, **overrides: Any) -> Gateway:
        gateway = Gateway(gateway_settings_for(dev_agent.url, **overrides), clock=clock, consul_wait=5.0)
        await gateway.start()
        started.append(gateway)
        await gateway.wait_ready(10.0)
        return gateway

    yield factory
    for gateway in started:
        await gateway.stop()


# -- policies -----------------------------------------------------------------------------------------------------


async def put_policy(agent: Consul, service: str, doc: Mapping[str, Any] | str | bytes) -> None:
    value = doc if isinstance(doc, str | bytes) else json.dumps(doc)
    await agent.kv_put(f"consulgw/services/{service}", value)


def policy_of(gateway: Gateway, service: str) -> ServicePolicy | None:
    view = gateway.view()
    if view is None or service not in view.services:
        return None
    return view.services[service].policy


async def wait_policy(gateway: Gateway, service: str, doc: Mapping[str, Any], *, timeout: float = 10.0) -> None:
    """Wait until the gateway runs ``service`` with exactly the policy ``doc`` describes (no defaults in KV)."""
    expected = parse_policy(json.dumps(doc), key="expected")
    await wait_for(lambda: policy_of(gateway, service) == expected, timeout=timeout)


async def routed_service(
    gateway: Gateway, agent: Consul, service: str, port: int, policy: Mapping[str, Any] | None = None
) -> None:
    """Register ``service`` (route ``/``) on ``port``, store its policy, and wait until the gateway runs both."""
    if policy is not None:
        await put_policy(agent, service, policy)
    await agent.register(service, port, tags=["gw.route=/"])
    await wait_for(lambda: routed(gateway, service, 1))
    if policy is not None:
        await wait_policy(gateway, service, policy)


# -- admin API ----------------------------------------------------------------------------------------------------


async def admin_routes(session: aiohttp.ClientSession, admin_url: str) -> dict[str, Any]:
    async with session.get(f"{admin_url}/-/routes") as resp:
        assert resp.status == 200
        body = json.loads(await resp.read())
        assert isinstance(body, dict)
        return body


async def metric_value(session: aiohttp.ClientSession, admin_url: str, name: str, **labels: str) -> float | None:
    """The value of one sample in ``/metrics`` (parsed with prometheus_client's own parser), or None."""
    async with session.get(f"{admin_url}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


# -- upstreams whose answers a test controls ----------------------------------------------------------------------


@dataclass
class Switchable:
    """An upstream answering ``status`` (200 with ``{"upstream": name}``, else the status with a JSON error body).

    While ``hold`` is set, requests wait for that event after being recorded (a request kept in flight at will).
    """

    name: str
    runner: web.AppRunner | None = None
    port: int = 0
    status: int = 200
    hits: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)
    hold: asyncio.Event | None = None

    async def start(self) -> None:
        async def handle(request: web.Request) -> web.Response:
            self.hits += 1
            body = await request.read()
            self.received.append(
                {"method": request.method, "path": request.path, "headers": list(request.headers.items()), "body": body}
            )
            if self.hold is not None:
                await self.hold.wait()
            if self.status == 200:
                return web.json_response({"upstream": self.name}, headers={"X-Upstream": self.name})
            return web.json_response({"upstream": self.name, "failing": True}, status=self.status)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(next(a[1] for a in self.runner.addresses if isinstance(a, tuple)))

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def switchables() -> AsyncIterator[Callable[[str], Awaitable[Switchable]]]:
    started: list[Switchable] = []

    async def factory(name: str) -> Switchable:
        upstream = Switchable(name=name)
        await upstream.start()
        started.append(upstream)
        return upstream

    yield factory
    for upstream in started:
        if upstream.hold is not None:
            upstream.hold.set()
        with contextlib.suppress(Exception):
            await upstream.stop()


@dataclass
class JwksServer:
    """Serves ``{"keys": keys}`` at ``url``; assign ``keys`` to rotate. ``fetches`` counts GETs."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    fetches: int = 0
    url: str = ""
    runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def jwks(_: web.Request) -> web.Response:
            self.fetches += 1
            return web.json_response({"keys": self.keys})

        app = web.Application()
        app.router.add_get("/.well-known/jwks.json", jwks)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = int(next(a[1] for a in self.runner.addresses if isinstance(a, tuple)))
        self.url = f"http://127.0.0.1:{port}/.well-known/jwks.json"


@pytest.fixture
async def jwks_server() -> AsyncIterator[JwksServer]:
    server = JwksServer()
    await server.start()
    try:
        yield server
    finally:
        assert server.runner is not None
        await server.runner.cleanup()


# -- a private Redis that a test may stop and start ---------------------------------------------------------------


class PrivateRedis:
    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._workdir = workdir
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        assert self._proc is None, "already running"
        self._proc = await asyncio.create_subprocess_exec(
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self._workdir),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await wait_for(self._pong, timeout=10)

    async def _pong(self) -> bool:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        try:
            writer.write(b"PING\r\n")
            await writer.drain()
            return (await asyncio.wait_for(reader.readline(), 2)) == b"+PONG\r\n"
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    """Started; killed at teardown whatever happened."""
    redis = PrivateRedis(_free_port(), tmp_path)
    try:
        await redis.start()
        yield redis
    finally:
        await redis.stop()


# -- the gateway as separate processes ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def gateway_processes(
    count: int, consul_url: str, log_dir: Path, *extra: str
) -> AsyncIterator[list[GatewayProcess]]:
    """``count`` ``consulgw run`` processes (JSON logs to files in ``log_dir``); stopped on exit."""
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(
                gateway_process(consul_url, "--log-format", "json", *extra, log=log_dir / f"gateway-{index}.log")
            )
            for index in range(count)
        ]


async def is_ready(session: aiohttp.ClientSession, admin_url: str) -> bool:
    try:
        async with session.get(f"{admin_url}/-/ready") as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False
