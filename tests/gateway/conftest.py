"""Fixtures for end-to-end gateway tests: real upstream servers, the dev agent, and gateways on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from consulgw.server.gateway import Gateway
from consulgw.settings import ConsulSettings, GatewaySettings, HostPort, parse_cidrs
from tests.support.raw_http import raw_upstream  # noqa: F401 - a fixture of this folder (tests/support/raw_http.py)


async def wait_for(
    predicate: Callable[[], Awaitable[bool]] | Callable[[], bool], *, timeout: float = 10.0, interval: float = 0.02
) -> None:
    """Poll until predicate() is true; fail the test with a clear message after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s: {getattr(predicate, '__name__', predicate)}")
        await asyncio.sleep(interval)


@dataclass
class Upstream:
    """A real HTTP server on 127.0.0.1 that says who it is and records what it received."""

    name: str
    runner: web.AppRunner
    port: int
    received: list[dict[str, Any]] = field(default_factory=list)
    delay: float = 0.0
    inflight: int = 0

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_upstream(
    name: str, *, port: int = 0, delay: float = 0.0, extra_routes: Callable[[web.Application], None] | None = None
) -> Upstream:
    app = web.Application()
    upstream: Upstream | None = None

    async def echo(request: web.Request) -> web.StreamResponse:
        assert upstream is not None
        upstream.inflight += 1
        try:
            body = await request.read()
            upstream.received.append(
                {
                    "method": request.method,
                    "raw_path": request.raw_path,
                    "headers": list(request.headers.items()),
                    "body": body,
                }
            )
            if upstream.delay:
                await asyncio.sleep(upstream.delay)
            payload = {
                "upstream": name,
                "method": request.method,
                "raw_path": request.raw_path,
                "headers": dict(request.headers.items()),
                "body_bytes": len(body),
            }
            return web.json_response(payload, headers={"X-Upstream": name})
        finally:
            upstream.inflight -= 1

    if extra_routes is not None:
        extra_routes(app)
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = next(a[1] for a in runner.addresses if isinstance(a, tuple))
    upstream = Upstream(name=name, runner=runner, port=int(bound), delay=delay)
    return upstream


class Consul:
    """Registration helpers over the agent's HTTP API (what a real service would call)."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def _put(self, path: str, body: Any = None, **params: str) -> int:
        data = json.dumps(body) if body is not None and not isinstance(body, bytes | str) else body
        async with self.session.put(f"{self.url}{path}", data=data, params=params) as resp:
            text = await resp.text()
            assert resp.status == 200, f"PUT {path}: {resp.status} {text}"
            return resp.status

    async def register(
        self,
        name: str,
        port: int,
        *,
        service_id: str | None = None,
        tags: list[str] | None = None,
        weights: tuple[int, int] | None = None,
        status: str = "passing",
        address: str = "127.0.0.1",
        meta: dict[str, str] | None = None,
    ) -> str:
        sid = service_id or f"{name}-{port}"
        body: dict[str, Any] = {
            "Name": name,
            "ID": sid,
            "Address": address,
            "Port": port,
            "Tags": tags or [],
            "Check": {"CheckID": f"ttl:{sid}", "TTL": "1h", "Status": status},
        }
        if weights is not None:
            body["Weights"] = {"Passing": weights[0], "Warning": weights[1]}
        if meta:
            body["Meta"] = meta
        await self._put("/v1/agent/service/register", body)
        return sid

    async def deregister(self, service_id: str) -> None:
        await self._put(f"/v1/agent/service/deregister/{service_id}")

    async def check(self, service_id: str, status: str) -> None:
        verb = {"passing": "pass", "warning": "warn", "critical": "fail"}[status]
        await self._put(f"/v1/agent/check/{verb}/ttl:{service_id}")

    async def maintenance(self, service_id: str, enable: bool) -> None:
        await self._put(f"/v1/agent/service/maintenance/{service_id}", enable=str(enable).lower())

    async def kv_put(self, key: str, value: str | bytes) -> None:
        await self._put(f"/v1/kv/{key}", value)

    async def kv_delete(self, key: str) -> None:
        async with self.session.delete(f"{self.url}/v1/kv/{key}") as resp:
            assert resp.status == 200


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), auto_decompress=False, timeout=aiohttp.ClientTimeout(total=60)
    ) as session:
        yield session


@pytest.fixture
async def consul(dev_agent: Any, http: aiohttp.ClientSession) -> Consul:
    return Consul(http, dev_agent.url)


@pytest.fixture
async def upstreams() -> AsyncIterator[Callable[..., Awaitable[Upstream]]]:
    started: list[Upstream] = []

    async def factory(name: str, **kwargs: Any) -> Upstream:
        upstream = await start_upstream(name, **kwargs)
        started.append(upstream)
        return upstream

    yield factory
    for upstream in started:
        with contextlib.suppress(Exception):
            await upstream.stop()


def gateway_settings_for(consul_url: str, **overrides: Any) -> GatewaySettings:
    trusted = overrides.pop("trusted_proxies", "")
    settings = GatewaySettings(
        consul=ConsulSettings(address=consul_url),
        listen=HostPort("127.0.0.1", 0),
        admin_listen=HostPort("127.0.0.1", 0),
        coalesce_window=0.01,
        drain_timeout=5.0,
        trusted_proxies=parse_cidrs("trusted", trusted),
        **overrides,
    )
    return settings


@pytest.fixture
async def gateway_factory(dev_agent: Any) -> AsyncIterator[Callable[..., Awaitable[Gateway]]]:
    started: list[Gateway] = []

    async def factory(**overrides: Any) -> Gateway:
        gateway = Gateway(gateway_settings_for(dev_agent.url, **overrides), consul_wait=5.0)
        await gateway.start()
        started.append(gateway)
        await gateway.wait_ready(10.0)
        return gateway

    yield factory
    for gateway in started:
        await gateway.stop()


@pytest.fixture
async def gateway(gateway_factory: Callable[..., Awaitable[Gateway]]) -> Gateway:
    return await gateway_factory()


def in_pool(gateway: Gateway, service: str) -> set[str]:
    """Service IDs of the instances the gateway currently sends traffic to."""
    view = gateway.view()
    if view is None or service not in view.services:
        return set()
    return {i.service_id for i in view.services[service].snapshot.instances if i.weight > 0}


async def routed(gateway: Gateway, service: str, count: int | None = None) -> bool:
    """True once the gateway's view has ``service`` with ``count`` instances in its pool (any, if None)."""
    view = gateway.view()
    if view is None or service not in view.services:
        return False
    in_pool = [i for i in view.services[service].snapshot.instances if i.weight > 0]
    return bool(in_pool) if count is None else len(in_pool) == count
