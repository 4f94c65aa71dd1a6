"""Fixtures of the fault-injection suite (issue 13): one module per fault family, each checking three things:

1. the client gets the documented answer (status and JSON error body: docs/troubleshooting.md), or the normal one
   where the fault is the gateway's to absorb;
2. nothing promised is lost: an idempotent request retried on a fresh connection, the counters and metrics moved;
3. recovery without restart: once the fault is gone, the next normal request succeeds.

Reused: ``http``, ``consul``, ``upstreams``, ``raw_upstream`` (tests.gateway.conftest), ``metric_value``,
``put_policy``, ``wait_policy``, ``wait_for`` (tests.policy_e2e.conftest). The fakes themselves live in tests/support/
(``raw_http.RawUpstream``, ``consul_fakes.FaultyConsul``, ``redis_servers.RedisProcesses``, ``processes``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from consulgw.server.gateway import Gateway
from tests.gateway.conftest import (  # noqa: F401 - fixtures re-exported for this folder
    consul,
    gateway_settings_for,
    http,
    raw_upstream,
    upstreams,
)

GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def start_gateway(dev_agent: Any) -> AsyncIterator[GatewayFactory]:
    """``await start_gateway(consul_url=None, consul_wait=1.0, **settings)``: an in-process gateway on free ports,
    reading Consul at ``consul_url`` (the dev agent by default) with short blocking queries; stopped at teardown."""
    started: list[Gateway] = []

    async def factory(*, consul_url: str | None = None, consul_wait: float = 1.0, **overrides: Any) -> Gateway:
        gateway = Gateway(gateway_settings_for(consul_url or dev_agent.url, **overrides), consul_wait=consul_wait)
        await gateway.start()
        started.append(gateway)
        await gateway.wait_ready(10.0)
        return gateway

    yield factory
    for gateway in started:
        await gateway.stop()


async def error_body(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    """The gateway's JSON error body, checked for its documented shape (and for the absence of a stack trace)."""
    assert resp.headers.get("Content-Type", "").startswith("application/json"), resp.headers
    text = await resp.text()
    assert "Traceback" not in text, text
    assert 'File "' not in text, text
    body = json.loads(text)
    assert isinstance(body, dict)
    assert set(body) == {"error", "message", "request_id"}, body
    assert body["request_id"] == resp.headers.get("X-Request-ID")
    return body
