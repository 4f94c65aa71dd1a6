"""Load balancing through the gateway: Consul weights, ip-hash stickiness, least connections."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import aiohttp

from .conftest import Consul, routed, wait_for


async def _who(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> str:
    async with http.get(url, **kwargs) as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.json())["upstream"]


async def test_weights_one_to_three_split_within_two_percent(
    gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession
) -> None:
    light, heavy = await upstreams("light"), await upstreams("heavy")
    await consul.register("svc", light.port, tags=["gw.route=/"], weights=(1, 1))
    await consul.register("svc", heavy.port, tags=["gw.route=/"], weights=(3, 1))
    await wait_for(lambda: routed(gateway, "svc", 2))

    async def worker(n: int) -> list[str]:
        return [await _who(http, f"{gateway.url}/") for _ in range(n)]

    results = await asyncio.gather(*(worker(500) for _ in range(8)))
    counts = Counter(name for batch in results for name in batch)
    total = sum(counts.values())
    assert total == 4000
    assert abs(counts["heavy"] / total - 0.75) <= 0.02, counts


async def test_ip_hash_keeps_clients_and_moves_only_the_removed_instances_clients(
    gateway_factory: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession
) -> None:
    gateway = await gateway_factory(trusted_proxies="127.0.0.1/32")
    names = ["a", "b", "c", "d"]
    ids = {}
    for name in names:
        up = await upstreams(name)
        ids[name] = await consul.register("svc", up.port, tags=["gw.route=/", "gw.lb=ip_hash"])
    await wait_for(lambda: routed(gateway, "svc", 4))
    clients = [f"198.51.100.{i}" for i in range(1, 121)]

    async def assignment() -> dict[str, str]:
        out = {}
        for ip in clients:
            picks = {await _who(http, f"{gateway.url}/", headers={"X-Forwarded-For": ip}) for _ in range(3)}
            assert len(picks) == 1, f"{ip} was spread over {picks}"
            out[ip] = picks.pop()
        return out

    before = await assignment()
    assert set(before.values()) == set(names)  # every instance gets some clients
    await consul.deregister(ids["c"])
    await wait_for(lambda: routed(gateway, "svc", 3))
    after = await assignment()
    moved = {ip for ip in clients if before[ip] != after[ip]}
    assert moved == {ip for ip in clients if before[ip] == "c"}


async def test_least_connections_sends_fewer_requests_to_a_slow_instance(
    gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession
) -> None:
    fast, slow = await upstreams("fast"), await upstreams("slow", delay=0.2)
    await consul.register("svc", fast.port, tags=["gw.route=/", "gw.lb=least_conn"])
    await consul.register("svc", slow.port, tags=["gw.route=/", "gw.lb=least_conn"])
    await wait_for(lambda: routed(gateway, "svc", 2))

    async def worker() -> list[str]:
        return [await _who(http, f"{gateway.url}/") for _ in range(25)]

    results = await asyncio.gather(*(worker() for _ in range(8)))
    counts = Counter(name for batch in results for name in batch)
    assert counts["fast"] > 3 * counts["slow"], counts
    assert counts["slow"] >= 1, counts  # the slow instance still takes its share of concurrency
