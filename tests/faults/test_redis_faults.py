"""Redis failing under a running gateway with Redis-backed rate limits: slower than its 250 ms budget (the server
stopped with SIGSTOP, so connections hang), and killed then started again on the same port. A private
``redis-server`` on a free port (tests/support/redis_servers.py); the suite's shared Redis is never touched.

Documented (docs/operations.md, "When Redis is down"): every call has a 250 ms budget; past it the policy's
``on_backend_error`` decides, ``allow`` (the request passes uncounted) or ``deny`` (``503 rate_limit_unavailable``),
counted in ``consulgw_rate_limit_backend_errors_total{outcome}``; once Redis answers again requests are counted
again, without a restart (a spent budget answers ``429 rate_limited`` with ``Retry-After``).
"""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from consulgw.server.gateway import Gateway
from consulgw.settings import Secret
from tests.gateway.conftest import Consul, routed
from tests.policy_e2e.conftest import metric_value, put_policy, wait_for, wait_policy
from tests.support.redis_servers import RedisProcess, RedisProcesses

from .conftest import GatewayFactory, error_body

LIMIT = 5


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[tuple[RedisProcesses, RedisProcess]]:
    async with RedisProcesses(tmp_path) as processes:
        yield processes, await processes.server()


def _policy(on_error: str) -> dict[str, Any]:
    return {
        "rate_limit": {"requests": LIMIT, "per": "1m", "key": "ip", "backend": "redis", "on_backend_error": on_error}
    }


async def _limited_gateway(
    start_gateway: GatewayFactory, consul: Consul, upstreams: Any, server: RedisProcess
) -> Gateway:
    gateway = await start_gateway(redis_url=Secret(value=f"redis://{server.address}/0"))
    up = await upstreams("limited")
    for service, on_error in (("lenient", "allow"), ("strict", "deny")):
        await put_policy(consul, service, _policy(on_error))
        await consul.register(service, up.port, tags=[f"gw.route=/{service}"])
        await wait_for(lambda s=service: routed(gateway, s, 1))
        await wait_policy(gateway, service, _policy(on_error))
    return gateway


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any] | None, float]:
    started = time.monotonic()
    async with http.get(url) as resp:
        body = await error_body(resp) if resp.status >= 400 else None
        if body is None:
            await resp.read()
        return resp.status, body, time.monotonic() - started


async def _backend_errors(http: aiohttp.ClientSession, gateway: Gateway, service: str, outcome: str) -> float:
    return (
        await metric_value(
            http, gateway.admin_url, "consulgw_rate_limit_backend_errors_total", service=service, outcome=outcome
        )
        or 0
    )


async def _during_outage(http: aiohttp.ClientSession, gateway: Gateway) -> None:
    """More requests than the limit: the lenient service lets all through, the strict one refuses all; none waits
    for Redis longer than its budget (the bound here is generous: two cores shared with other runs)."""
    for _ in range(LIMIT + 2):
        status, body, took = await _get(http, f"{gateway.url}/lenient/x")
        assert status == 200
        assert took < 5
        status, body, took = await _get(http, f"{gateway.url}/strict/x")
        assert status == 503
        assert body is not None
        assert body["error"] == "rate_limit_unavailable"
        assert took < 5
    assert await _backend_errors(http, gateway, "lenient", "allowed") == LIMIT + 2
    assert await _backend_errors(http, gateway, "strict", "denied") == LIMIT + 2


async def _counted_again(http: aiohttp.ClientSession, gateway: Gateway) -> None:
    """Redis answers again: the strict service serves, and the limit is enforced again (429 once spent)."""

    async def strict_served() -> bool:
        return (await _get(http, f"{gateway.url}/strict/x"))[0] == 200

    await wait_for(strict_served, timeout=20, interval=0.2)
    statuses = [(await _get(http, f"{gateway.url}/strict/x"))[:2] for _ in range(LIMIT + 1)]
    refused = [body for status, body in statuses if status == 429]
    assert refused, statuses
    assert refused[0] is not None
    assert refused[0]["error"] == "rate_limited"


async def test_redis_slower_than_its_budget_applies_on_backend_error_and_recovers(
    redis: tuple[RedisProcesses, RedisProcess],
    start_gateway: GatewayFactory,
    consul: Consul,
    upstreams: Any,
    http: aiohttp.ClientSession,
) -> None:
    _, server = redis
    gateway = await _limited_gateway(start_gateway, consul, upstreams, server)
    assert (await _get(http, f"{gateway.url}/strict/x"))[0] == 200  # Redis in use
    server.proc.send_signal(signal.SIGSTOP)  # connections stay open and nothing answers: slow, not down
    try:
        await _during_outage(http, gateway)
    finally:
        server.proc.send_signal(signal.SIGCONT)
    await _counted_again(http, gateway)


async def test_redis_killed_and_started_again_applies_on_backend_error_and_recovers(
    redis: tuple[RedisProcesses, RedisProcess],
    start_gateway: GatewayFactory,
    consul: Consul,
    upstreams: Any,
    http: aiohttp.ClientSession,
) -> None:
    processes, server = redis
    gateway = await _limited_gateway(start_gateway, consul, upstreams, server)
    assert (await _get(http, f"{gateway.url}/strict/x"))[0] == 200
    server.kill()
    await server.proc.wait()
    await _during_outage(http, gateway)
    await processes.server(port=server.port)  # an empty Redis: every client starts with a full allowance
    await _counted_again(http, gateway)
