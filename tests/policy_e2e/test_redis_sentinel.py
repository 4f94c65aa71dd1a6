"""Redis Sentinel failover under load, through a real gateway (issue 13): ``--redis redis+sentinel://...``.

A primary, its replica and a sentinel run as real ``redis-server`` / ``redis-sentinel`` processes on free ports
(tests/support/redis_servers.py). Four clients keep two rate-limited services busy, one with
``on_backend_error: deny`` and one with ``allow``, while the primary is killed (SIGKILL). Until the sentinel
promotes the replica, ``deny`` answers 503 ``rate_limit_unavailable`` and ``allow`` lets requests through; then,
without any restart, a fresh tenant is limited by Redis again (5 admitted, then 429) on both services.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from consulgw.server.gateway import Gateway
from consulgw.settings import Secret
from tests.support.redis_servers import RedisProcess, RedisProcesses

from .conftest import Consul, put_policy, routed, wait_for, wait_policy

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")

LIMIT = {"requests": 5, "per": "1h", "backend": "redis", "key": "header:X-Tenant"}
LIMITED = [(200, None)] * 5 + [(429, "rate_limited")] * 2


@pytest.fixture
async def sentinel_setup(tmp_path: Path) -> AsyncIterator[tuple[RedisProcess, RedisProcess, RedisProcess]]:
    """A primary, its replica (in sync) and one sentinel that knows both."""
    async with RedisProcesses(tmp_path) as processes:
        primary = await processes.server()
        replica = await processes.server("--replicaof", "127.0.0.1", str(primary.port))
        sentinel = await processes.sentinel(primary, down_after_ms=1000)

        async def replica_known_and_in_sync() -> bool:
            asked = Redis(host="127.0.0.1", port=sentinel.port, socket_timeout=2.0, decode_responses=True)
            synced = Redis(host="127.0.0.1", port=replica.port, socket_timeout=2.0, decode_responses=True)
            try:
                replicas = await asked.execute_command("SENTINEL", "REPLICAS", "mymaster")
                info = await synced.info("replication")
            finally:
                await asked.aclose()
                await synced.aclose()
            healthy = {int(_field(r, "port")) for r in replicas if "s_down" not in _field(r, "flags")}
            return replica.port in healthy and info.get("master_link_status") == "up"

        await wait_for(replica_known_and_in_sync, timeout=60)
        yield primary, replica, sentinel


def _field(entry: Any, name: str) -> str:
    """One field of a SENTINEL REPLICAS entry (a flat list of names and values, or a dict)."""
    if isinstance(entry, dict):
        return str(entry.get(name, ""))
    return str(dict(zip(entry[::2], entry[1::2], strict=True)).get(name, ""))


async def _primary_port(sentinel: RedisProcess) -> int:
    client = Redis(host="127.0.0.1", port=sentinel.port, socket_timeout=2.0, decode_responses=True)
    try:
        address = await client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster")
    finally:
        await client.aclose()
    return int(address[1])


async def test_sentinel_failover_under_load(
    sentinel_setup: tuple[RedisProcess, RedisProcess, RedisProcess],
    make_gateway: Any,
    consul: Consul,
    upstreams: Any,
    http: aiohttp.ClientSession,
) -> None:
    primary, replica, sentinel = sentinel_setup
    gateway: Gateway = await make_gateway(
        redis_url=Secret(value=f"redis+sentinel://127.0.0.1:{sentinel.port}/mymaster/0")
    )
    upstream = await upstreams("limited")
    prefix = uuid.uuid4().hex[:6]  # Redis keys outlive a run: fresh service names
    services = {"deny": f"deny-{prefix}", "allow": f"allow-{prefix}"}
    for on_error, service in services.items():
        policy = {"rate_limit": {**LIMIT, "on_backend_error": on_error}}
        await put_policy(consul, service, policy)
        await consul.register(service, upstream.port, tags=[f"gw.route=/{on_error}"])
        await wait_for(lambda service=service: routed(gateway, service, 1))
        await wait_policy(gateway, service, policy)

    async def get(route: str, tenant: str) -> tuple[int, str | None]:
        async with http.get(f"{gateway.url}/{route}/x", headers={"X-Tenant": tenant}) as resp:
            body = await resp.read()
            return resp.status, (json.loads(body).get("error") if resp.status != 200 else None)

    async def burst(route: str) -> list[tuple[int, str | None]]:
        tenant = f"t-{uuid.uuid4().hex[:8]}"
        return [await get(route, tenant) for _ in range(len(LIMITED))]

    assert await burst("deny") == LIMITED  # Redis decides, before the failover
    assert await burst("allow") == LIMITED

    # Load: four clients in a loop on both routes until told to stop; every answer is counted.
    seen: Counter[tuple[str, int, str | None]] = Counter()
    stop = asyncio.Event()

    async def client_loop(route: str) -> None:
        tenant = f"load-{uuid.uuid4().hex[:8]}"
        while not stop.is_set():
            status, code = await get(route, tenant)
            seen[(route, status, code)] += 1

    load = [asyncio.create_task(client_loop(route)) for route in ("deny", "allow", "deny", "allow")]
    try:
        await wait_for(lambda: sum(seen.values()) >= 20)
        primary.kill()
        # Until the sentinel promotes the replica: deny answers 503, allow lets requests through.
        await wait_for(lambda: seen[("deny", 503, "rate_limit_unavailable")] > 0, timeout=30)
        allowed_before = seen[("allow", 200, None)]
        await wait_for(lambda: seen[("allow", 200, None)] > allowed_before, timeout=30)

        async def promoted() -> bool:
            with contextlib.suppress(Exception):
                return await _primary_port(sentinel) == replica.port
            return False

        await wait_for(promoted, timeout=60)

        # Recovered by itself, under the same load: a fresh tenant is limited by Redis again on both routes.
        async def enforced() -> bool:
            return await burst("deny") == LIMITED and await burst("allow") == LIMITED

        await wait_for(enforced, timeout=60, interval=0.5)
    finally:
        stop.set()
        await asyncio.gather(*load)
    assert {status for (_, status, _) in seen} <= {200, 429, 503}, seen
    assert not [key for key in seen if key[0] == "allow" and key[1] == 503], seen  # allow never refused
