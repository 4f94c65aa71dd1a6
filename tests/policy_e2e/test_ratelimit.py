"""Shared rate limits through real gateways: three ``consulgw run`` processes on one Redis admit exactly N; a Redis
outage follows ``on_backend_error`` and the limit comes back with Redis."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp

from consulgw.server.gateway import Gateway
from consulgw.settings import Secret

from .conftest import (
    Consul,
    PrivateRedis,
    admin_routes,
    gateway_processes,
    is_ready,
    metric_value,
    put_policy,
    routed_service,
    unique,
    wait_for,
    wait_policy,
)

SHARED_REDIS = "redis://127.0.0.1:6379/0"


async def test_redis_limit_is_exact_across_three_gateway_processes(
    dev_agent: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    limit, extra = 12, 9  # 21 concurrent requests, 7 to each gateway
    service, warm = unique("rl"), unique("rl-warm")  # fresh Redis keys: they are namespaced by service
    up = await upstreams("limited")
    policy = {"rate_limit": {"requests": limit, "per": "60s", "key": "ip", "backend": "redis"}}
    await put_policy(consul, service, policy)
    await put_policy(consul, warm, {"rate_limit": {"requests": 10_000, "per": "60s", "backend": "redis"}})
    await consul.register(service, up.port, tags=["gw.route=/api"])
    await consul.register(warm, up.port, tags=["gw.route=/warm"])

    async with gateway_processes(3, dev_agent.url, tmp_path, "--redis", SHARED_REDIS, "--coalesce", "10ms") as gws:
        expected_summary = {"requests": limit, "per": 60.0, "key": "ip", "backend": "redis"}

        async def loaded(admin: str) -> bool:
            if not await is_ready(http, admin):
                return False
            services = (await admin_routes(http, admin))["services"]
            return (
                all(
                    name in services and any(i["weight"] > 0 for i in services[name]["instances"])
                    for name in (service, warm)
                )
                and services[service]["policy"]["rate_limit"] == expected_summary
            )

        for gw in gws:
            await wait_for(lambda gw=gw: loaded(gw.admin_url), timeout=30)  # type: ignore[misc]

        async def get(url: str) -> tuple[int, dict[str, str], bytes]:
            async with http.get(url) as resp:
                return resp.status, dict(resp.headers), await resp.read()

        # Warm each process's Redis pool and script cache on another service (its own keys), with the same
        # concurrency as the real burst, so no decision below is lost to a cold connection (on_backend_error).
        per_gateway = (limit + extra) // len(gws)
        warmups = await asyncio.gather(*(get(f"{gw.url}/warm/") for gw in gws for _ in range(per_gateway)))
        assert all(status == 200 and "RateLimit-Remaining" in headers for status, headers, _ in warmups)
        before = len(up.received)

        answers = await asyncio.gather(*(get(f"{gws[i % len(gws)].url}/api/x") for i in range(limit + extra)))
        for gw in gws:  # every decision came from Redis: no process fell back to on_backend_error
            for outcome in ("allowed", "denied"):
                errors = await metric_value(
                    http, gw.admin_url, "consulgw_rate_limit_backend_errors_total", service=service, outcome=outcome
                )
                assert not errors, (gw.log.read_text(), outcome)

    statuses = sorted(status for status, _, _ in answers)
    assert statuses == [200] * limit + [429] * extra
    assert len(up.received) - before == limit  # exactly N reached the upstream
    remaining_of_admitted = []
    for status, headers, body in answers:
        assert headers["RateLimit-Limit"] == str(limit)
        assert int(headers["RateLimit-Reset"]) >= 0
        remaining = int(headers["RateLimit-Remaining"])
        if status == 200:
            remaining_of_admitted.append(remaining)
            assert "Retry-After" not in headers
        else:
            assert remaining == 0
            assert int(headers["Retry-After"]) >= 1
            assert json.loads(body)["error"] == "rate_limited"
    # Each admitted request saw a distinct budget: the three processes shared one atomic counter.
    assert sorted(remaining_of_admitted) == list(range(limit))


async def test_redis_outage_follows_on_backend_error_and_recovers(
    make_gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession, private_redis: PrivateRedis
) -> None:
    gateway: Gateway = await make_gateway(redis_url=Secret(value=private_redis.url))
    up = await upstreams("limited")
    service = unique("rl")
    allow = {"rate_limit": {"requests": 3, "per": "60s", "backend": "redis", "on_backend_error": "allow"}}
    deny = {"rate_limit": {"requests": 3, "per": "60s", "backend": "redis", "on_backend_error": "deny"}}
    await routed_service(gateway, consul, service, up.port, allow)

    async def get() -> tuple[int, dict[str, str], Any]:
        async with http.get(f"{gateway.url}/") as resp:
            raw = await resp.read()
            return resp.status, dict(resp.headers), json.loads(raw)

    async def limited_sequence() -> None:
        """A full budget: 3 admitted with Remaining 2, 1, 0, then 429."""
        for remaining in (2, 1, 0):
            status, headers, _ = await get()
            assert (status, headers.get("RateLimit-Remaining")) == (200, str(remaining))
        status, headers, body = await get()
        assert status == 429
        assert body["error"] == "rate_limited"
        assert "Retry-After" in headers

    try:
        await limited_sequence()

        await private_redis.stop()
        for _ in range(6):  # allow: every request passes, with the limit but no invented remaining/reset
            status, headers, _ = await get()
            assert status == 200
            assert headers["RateLimit-Limit"] == "3"
            assert "RateLimit-Remaining" not in headers
            assert "RateLimit-Reset" not in headers
        allowed = await metric_value(
            http, gateway.admin_url, "consulgw_rate_limit_backend_errors_total", service=service, outcome="allowed"
        )
        assert allowed == 6.0

        await put_policy(consul, service, deny)
        await wait_policy(gateway, service, deny)
        hits = len(up.received)
        for _ in range(3):  # deny: 503 rate_limit_unavailable, nothing reaches the upstream
            status, headers, body = await get()
            assert status == 503
            assert body["error"] == "rate_limit_unavailable"
            assert headers["Retry-After"] == "1"
        assert len(up.received) == hits

        await private_redis.start()  # same port, empty (no persistence): a fresh budget

        async def admitted_again() -> bool:
            status, headers, body = await get()
            if status == 503:
                assert body["error"] == "rate_limit_unavailable"
                return False
            assert (status, headers.get("RateLimit-Remaining")) == (200, "2"), (status, headers)
            return True

        await wait_for(admitted_again, timeout=15, interval=0.1)
        for remaining in (1, 0):
            status, headers, _ = await get()
            assert (status, headers.get("RateLimit-Remaining")) == (200, str(remaining))
        status, _, body = await get()
        assert (status, body["error"]) == (429, "rate_limited")
    finally:
        await private_redis.stop()
