"""Raising a rate limit through KV frees clients that the old limit was throttling."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from tests.gateway.conftest import Consul, routed, wait_for


def _limit(gateway: Any, service: str) -> int | None:
    view = gateway.view()
    if view is None or service not in view.services:
        return None
    policy = view.services[service].policy.rate_limit
    return policy.requests if policy is not None else None


async def test_raising_a_limit_takes_effect_for_throttled_clients(
    make_gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway()
    up = await upstreams("a")
    await consul.register("lim", up.port, tags=["gw.route=/lim"])
    await consul.kv_put("consulgw/services/lim", json.dumps({"rate_limit": {"requests": 2, "per": "60s"}}))
    await wait_for(lambda: routed(gateway, "lim", 1))
    await wait_for(lambda: _limit(gateway, "lim") == 2)
    statuses = []
    for _ in range(3):
        async with http.get(f"{gateway.url}/lim") as resp:
            statuses.append(resp.status)
    assert statuses == [200, 200, 429]
    await consul.kv_put("consulgw/services/lim", json.dumps({"rate_limit": {"requests": 100, "per": "60s"}}))
    await wait_for(lambda: _limit(gateway, "lim") == 100)
    async with http.get(f"{gateway.url}/lim") as resp:
        assert resp.status == 200
        assert resp.headers["RateLimit-Limit"] == "100"
