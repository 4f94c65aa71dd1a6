"""The dashboard's data on the admin listener: ``/-/timeseries`` (bounded) and ``/-/policy/<service>`` (redacted)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from consulgw.server.gateway import Gateway
from tests.gateway.conftest import Consul, Upstream, consul, gateway_factory, http, routed, upstreams, wait_for

__all__ = ["consul", "gateway_factory", "http", "upstreams"]  # fixtures of the gateway tests, used as they are

SECRET = "dashboard-policy-secret-0123456789abcdef"


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as resp:
        return resp.status, json.loads(await resp.read())


async def test_policy_is_shown_with_secrets_redacted(
    gateway_factory: Callable[..., Awaitable[Gateway]],
    consul: Consul,
    upstreams: Callable[..., Awaitable[Upstream]],
    http: aiohttp.ClientSession,
) -> None:
    up = await upstreams("users")
    policy = {
        "auth": {"type": "jwt", "algorithms": ["HS256"], "secret": SECRET, "required_scopes": ["b", "a"]},
        "headers": {"request": {"set": {"Authorization": "Bearer up-secret", "X-Api-Key": "k-secret", "X-Env": "t"}}},
        "circuit_breaker": {"fallback": {"headers": {"Retry-After": "5"}}},
    }
    await consul.kv_put("consulgw/services/users", json.dumps(policy))
    await consul.register("users", up.port, tags=["gw.route=/users"])
    gateway = await gateway_factory()
    await wait_for(lambda: routed(gateway, "users"))

    async def has_policy() -> bool:
        status, body = await get(http, f"{gateway.admin_url}/-/policy/users")
        return status == 200 and body["policy"]["auth"] is not None

    await wait_for(has_policy)
    status, body = await get(http, f"{gateway.admin_url}/-/policy/users")
    text = json.dumps(body)
    for secret in (SECRET, "up-secret", "k-secret"):
        assert secret not in text
    shown = body["policy"]
    assert shown["auth"]["secret"] == "[redacted]"
    assert shown["auth"]["required_scopes"] == ["a", "b"]
    assert shown["headers"]["request"]["set"] == {
        "Authorization": "[redacted]",
        "X-Api-Key": "[redacted]",
        "X-Env": "t",
    }
    assert shown["circuit_breaker"]["fallback"]["headers"] == {"Retry-After": "5"}
    assert shown["openapi"]["refresh"] == 300.0

    status, body = await get(http, f"{gateway.admin_url}/-/policy/nobody")
    assert (status, body["error"]) == (404, "no_service")


@pytest.mark.parametrize(
    ("query", "status"),
    [
        pytest.param("", 200, id="default"),
        pytest.param("?points=3&limit=1", 200, id="bounded"),
        pytest.param("?points=999999&limit=999999", 200, id="clamped"),
        pytest.param("?points=x", 400, id="not-a-number"),
    ],
)
async def test_timeseries_answers_are_bounded(
    gateway_factory: Callable[..., Awaitable[Gateway]], http: aiohttp.ClientSession, query: str, status: int
) -> None:
    gateway = await gateway_factory()
    got, body = await get(http, f"{gateway.admin_url}/-/timeseries{query}")
    assert got == status
    if status == 200:
        assert body["points"] == 180
        assert len(body["t"]) <= 180
        assert body["services"] == {}
