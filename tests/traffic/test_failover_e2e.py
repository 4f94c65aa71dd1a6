"""Multi-datacenter failover through a real gateway (issue 9): two dev agents federated with ``--wan-peer``
(dc1, which the gateway talks to, and dc2), real upstreams in each, the ``failover`` policy in dc1's KV.

Marking every dc1 instance critical moves traffic to dc2 and no request fails once it has moved; restoring dc1 moves
it back only after ``failback_after``; deregistering every dc1 instance keeps the route, served by dc2; an invalid
``failover`` edit is refused naming key, path and value, and the previous policy keeps working. With ``--workers 2``
(real processes) the remote snapshots reach both workers through the supervisor's fanout and both fail over
(``test_two_workers_fail_over_together``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from consulgw.devagent import DevAgent
from consulgw.server.gateway import Gateway
from tests.gateway.conftest import Consul, gateway_settings_for, routed
from tests.gateway.test_resilience_e2e import _ready
from tests.policy_e2e.conftest import admin_routes, metric_value, put_policy, unique, wait_for, wait_policy
from tests.support.processes import gateway_process

from .support import fetch, fetch_many

FAILBACK = 2.0


@pytest.fixture
async def two_datacenters() -> AsyncIterator[tuple[DevAgent, DevAgent]]:
    async with contextlib.AsyncExitStack() as stack:
        dc2 = await stack.enter_async_context(DevAgent(node="node-dc2", datacenter="dc2", port=0))
        dc1 = await stack.enter_async_context(
            DevAgent(node="node-dc1", datacenter="dc1", port=0, wan_peers={"dc2": dc2.url})
        )
        yield dc1, dc2


@pytest.fixture
async def gateway_dc1(two_datacenters: tuple[DevAgent, DevAgent]) -> AsyncIterator[Gateway]:
    gateway = Gateway(gateway_settings_for(two_datacenters[0].url), consul_wait=5.0)
    await gateway.start()
    try:
        await gateway.wait_ready(10.0)
        yield gateway
    finally:
        await gateway.stop()


def remote_pool(gateway: Gateway, service: str, dc: str) -> int:
    view = gateway.view()
    entry = view.services.get(service) if view is not None else None
    return sum(1 for i in entry.remote.get(dc, ()) if i.weight > 0) if entry is not None else 0


def local_pool(gateway: Gateway, service: str) -> int:
    view = gateway.view()
    entry = view.services.get(service) if view is not None else None
    return sum(1 for i in entry.snapshot.instances if i.weight > 0) if entry is not None else 0


async def test_failover_to_dc2_and_back_after_failback_after(
    two_datacenters: tuple[DevAgent, DevAgent],
    gateway_dc1: Gateway,
    http: aiohttp.ClientSession,
    upstreams: Callable[..., Awaitable[Any]],
) -> None:
    dc1, dc2 = (Consul(http, agent.url) for agent in two_datacenters)
    gateway = gateway_dc1
    service = unique("web")
    policy = {"failover": {"datacenters": ["dc2"], "when": {"min_healthy": 1}, "failback_after": f"{FAILBACK:g}s",
                           "address": "wan", "watch": "warm", "response_header": True}}  # fmt: skip
    await put_policy(dc1, service, policy)
    local = [await upstreams(f"dc1-{n}") for n in (1, 2)]
    remote = await upstreams("dc2-1")
    local_ids = [await dc1.register(service, up.port, tags=["gw.route=/"]) for up in local]
    await wait_for(lambda: routed(gateway, service, 2))
    await dc2.register(service, remote.port, tags=["gw.route=/"])
    await wait_policy(gateway, service, policy)
    await wait_for(lambda: remote_pool(gateway, service, "dc2") == 1)
    url = f"{gateway.url}/items"

    before = await fetch_many(http, url, [None] * 20)
    assert {(r.status, r.upstream in {"dc1-1", "dc1-2"}, r.headers["X-Gateway-Datacenter"]) for r in before} == {
        (200, True, "dc1")
    }
    assert await metric_value(http, gateway.admin_url, "consulgw_failover_active", service=service,
                              datacenter="dc1") == 1.0  # fmt: skip
    assert await metric_value(http, gateway.admin_url, "consulgw_failover_active", service=service,
                              datacenter="dc2") is None  # fmt: skip

    # Every dc1 instance critical: dc2 serves, and no request fails once it does.
    for sid in local_ids:
        await dc1.check(sid, "critical")
    switched = False
    deadline = time.monotonic() + 10
    while not switched:
        assert time.monotonic() < deadline, "traffic never moved to dc2"
        reply = await fetch(http, url)
        switched = reply.upstream == "dc2-1"
    after = await fetch_many(http, url, [None] * 200)
    assert {(r.status, r.upstream, r.headers["X-Gateway-Datacenter"]) for r in after} == {(200, "dc2-1", "dc2")}
    facts = (await admin_routes(http, gateway.admin_url))["services"][service]
    assert facts["datacenter"] == "dc2"
    assert facts["datacenter_pools"] == {"dc1": 0, "dc2": 1}
    assert facts["failover"].startswith("serving dc2 · dc1 0 in pool · dc2 1 in pool")
    assert facts["policy"]["failover"]["datacenters"] == ["dc2"]
    assert await metric_value(http, gateway.admin_url, "consulgw_failover_active", service=service,
                              datacenter="dc2") == 1.0  # fmt: skip
    assert await metric_value(http, gateway.admin_url, "consulgw_failover_active", service=service,
                              datacenter="dc1") == 0.0  # fmt: skip

    # dc1 healthy again: traffic stays in dc2 for failback_after, then comes back.
    for sid in local_ids:
        await dc1.check(sid, "passing")
    await wait_for(lambda: local_pool(gateway, service) == 2)
    healthy_at = time.monotonic()
    while time.monotonic() - healthy_at < FAILBACK * 0.6:
        reply = await fetch(http, url)
        assert (reply.status, reply.upstream) == (200, "dc2-1"), "came back before failback_after"
    back = None
    while back is None:
        reply = await fetch(http, url)
        assert reply.status == 200
        if reply.upstream != "dc2-1":
            back = time.monotonic()
        assert time.monotonic() - healthy_at < FAILBACK + 10, "never came back"
    assert back - healthy_at >= FAILBACK - 0.2  # the wait started when the view saw dc1 healthy (a poll earlier)
    final = await fetch_many(http, url, [None] * 20)
    assert {(r.status, r.upstream in {"dc1-1", "dc1-2"}, r.headers["X-Gateway-Datacenter"]) for r in final} == {
        (200, True, "dc1")
    }
    assert await metric_value(http, gateway.admin_url, "consulgw_failover_active", service=service,
                              datacenter="dc1") == 1.0  # fmt: skip


async def test_deregistering_every_dc1_instance_keeps_the_route_served_by_dc2(
    two_datacenters: tuple[DevAgent, DevAgent],
    gateway_dc1: Gateway,
    http: aiohttp.ClientSession,
    upstreams: Callable[..., Awaitable[Any]],
) -> None:
    dc1, dc2 = (Consul(http, agent.url) for agent in two_datacenters)
    gateway = gateway_dc1
    service = unique("web")
    await put_policy(dc1, service, {"failover": {"datacenters": ["dc2"], "failback_after": "1s"}})
    local = await upstreams("dc1-1")
    remote = await upstreams("dc2-1")
    sid = await dc1.register(service, local.port, tags=[f"gw.route=/{service}"])
    await wait_for(lambda: routed(gateway, service, 1))
    await dc2.register(service, remote.port, tags=[f"gw.route=/{service}"])
    await wait_for(lambda: remote_pool(gateway, service, "dc2") == 1)
    url = f"{gateway.url}/{service}/x"
    assert (await fetch(http, url)).upstream == "dc1-1"
    assert "X-Gateway-Datacenter" not in (await fetch(http, url)).headers  # response_header is off

    await dc1.deregister(sid)
    await wait_for(lambda: local_pool(gateway, service) == 0)
    replies = await fetch_many(http, url, [None] * 50)
    assert {(r.status, r.upstream) for r in replies} == {(200, "dc2-1")}
    routes = await admin_routes(http, gateway.admin_url)
    assert [r["prefix"] for r in routes["routes"] if r["service"] == service] == [f"/{service}"]
    assert routes["services"][service]["datacenter"] == "dc2"

    # Coming back: the new local instance serves after failback_after.
    sid = await dc1.register(service, local.port, tags=[f"gw.route=/{service}"])
    await wait_for(lambda: local_pool(gateway, service) == 1)

    async def local_again() -> bool:
        return (await fetch(http, url)).upstream == "dc1-1"

    await wait_for(local_again, timeout=10)

    # Once the failover datacenter has none either, the service leaves like any other.
    await dc1.deregister(sid)
    await dc2.deregister(f"{service}-{remote.port}")
    await wait_for(lambda: gateway.view() is not None and service not in gateway.view().services)  # type: ignore[union-attr]


async def test_an_invalid_failover_edit_is_refused_and_the_previous_policy_keeps_serving(
    two_datacenters: tuple[DevAgent, DevAgent],
    gateway_dc1: Gateway,
    http: aiohttp.ClientSession,
    upstreams: Callable[..., Awaitable[Any]],
) -> None:
    dc1, dc2 = (Consul(http, agent.url) for agent in two_datacenters)
    gateway = gateway_dc1
    service = unique("web")
    good = {"failover": {"datacenters": ["dc2"], "failback_after": "30s", "response_header": True}}
    await put_policy(dc1, service, good)
    local = await upstreams("dc1-1")
    remote = await upstreams("dc2-1")
    sid = await dc1.register(service, local.port, tags=["gw.route=/"])
    await wait_for(lambda: routed(gateway, service, 1))
    await dc2.register(service, remote.port, tags=["gw.route=/"])
    await wait_policy(gateway, service, good)
    key = f"consulgw/services/{service}"
    for bad, message in (
        ({"datacenters": []}, f"{key}: failover.datacenters: a list of 0 items must not be empty"),
        ({"datacenters": ["dc2"], "when": {"min_healthy": -1}}, f"{key}: failover.when.min_healthy: -1 must be at "
                                                                "least 1"),
        ({"datacenters": ["dc2"], "failback_after": "soon"}, f"{key}: failover.failback_after: 'soon' is not a "
                                                             "duration"),
        ({"datacenters": ["dc2"], "region": "eu"}, f"{key}: failover.region: unknown key"),
    ):  # fmt: skip
        await put_policy(dc1, service, {"failover": bad})

        async def refused(message: str = message) -> bool:
            errors = (await admin_routes(http, gateway.admin_url))["policy_errors"]
            return str(errors.get(f"services/{service}", "")).startswith(message)

        await wait_for(refused)
        await wait_policy(gateway, service, good)
    await dc1.check(sid, "critical")  # the previous (good) policy still fails over

    async def in_dc2() -> bool:
        reply = await fetch(http, f"{gateway.url}/")
        return reply.upstream == "dc2-1" and reply.headers.get("X-Gateway-Datacenter") == "dc2"

    await wait_for(in_dc2)


async def _fresh(url: str) -> tuple[int, str | None, str | None]:
    """One request on a new connection, so the kernel may hand it to either worker."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http, http.get(url) as resp:
        await resp.read()
        return resp.status, resp.headers.get("X-Upstream"), resp.headers.get("X-Gateway-Datacenter")


async def test_two_workers_fail_over_together(
    two_datacenters: tuple[DevAgent, DevAgent], http: aiohttp.ClientSession, upstreams: Callable[..., Awaitable[Any]]
) -> None:
    dc1, dc2 = (Consul(http, agent.url) for agent in two_datacenters)
    service = unique("web")
    await put_policy(dc1, service, {"failover": {"datacenters": ["dc2"], "response_header": True}})
    local = await upstreams("dc1-1")
    remote = await upstreams("dc2-1")
    sid = await dc1.register(service, local.port, tags=[f"gw.route=/{service}"])
    async with gateway_process(two_datacenters[0].url, "--workers", "2") as gw:
        await wait_for(lambda: _ready(http, gw.admin_url), timeout=30)
        url = f"{gw.url}/{service}/x"

        async def all_local() -> bool:
            replies = [await _fresh(url) for _ in range(8)]
            return set(replies) == {(200, "dc1-1", "dc1")}

        await wait_for(all_local, timeout=20)
        await dc2.register(service, remote.port, tags=[f"gw.route=/{service}"])

        async def remote_pooled() -> bool:  # in every worker: ask several times on fresh connections
            for _ in range(6):
                connector = aiohttp.TCPConnector(force_close=True)
                async with aiohttp.ClientSession(connector=connector) as fresh:
                    routes = await admin_routes(fresh, gw.admin_url)
                if routes["services"].get(service, {}).get("datacenter_pools", {}).get("dc2") != 1:
                    return False
            return True

        await wait_for(remote_pooled, timeout=20)
        await dc1.check(sid, "critical")

        async def all_remote() -> bool:
            replies = [await _fresh(url) for _ in range(8)]
            return set(replies) == {(200, "dc2-1", "dc2")}

        await wait_for(all_remote, timeout=20)
        replies = await asyncio.gather(*(_fresh(url) for _ in range(40)))
        assert set(replies) == {(200, "dc2-1", "dc2")}  # every worker serves from dc2


async def test_a_service_only_in_the_failover_datacenter_is_routed_by_its_remote_tags(
    two_datacenters: tuple[DevAgent, DevAgent],
    gateway_dc1: Gateway,
    http: aiohttp.ClientSession,
    upstreams: Callable[..., Awaitable[Any]],
) -> None:
    dc1, dc2 = (Consul(http, agent.url) for agent in two_datacenters)
    gateway = gateway_dc1
    service = unique("web")
    await put_policy(dc1, service, {"failover": {"datacenters": ["dc2"], "response_header": True}})
    remote = await upstreams("dc2-1")
    await dc2.register(service, remote.port, tags=[f"gw.route=/{service}"])
    await wait_for(lambda: remote_pool(gateway, service, "dc2") == 1)
    reply = await fetch(http, f"{gateway.url}/{service}/a")
    assert (reply.status, reply.upstream, reply.headers["X-Gateway-Datacenter"]) == (200, "dc2-1", "dc2")
