"""Consul failing under a running gateway: an error status, a body that is not JSON, a body cut short, a connection
closed before the answer, and no answer at all (a relay in front of the dev agent, tests/support/consul_fakes.py).

Documented (docs/operations.md, "Last known good"; docs/architecture.md, Errors): a Consul outage never removes
routes; the watch backs off and counts ``consulgw_consul_errors_total``; ``/-/ready`` answers 503 with a ``reason``
once the view is older than ``--max-staleness``; a change made during the outage is unknown until Consul answers
again (a new route is ``404 no_route`` meanwhile), then picked up without a restart.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from consulgw.server.gateway import Gateway
from tests.gateway.conftest import Consul, Upstream, routed
from tests.policy_e2e.conftest import metric_value, wait_for
from tests.support.consul_fakes import ConsulFault, FaultyConsul

from .conftest import GatewayFactory, error_body


async def _status(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url) as resp:
        await resp.read()
        return resp.status


async def _consul_errors(http: aiohttp.ClientSession, gateway: Gateway) -> float:
    return await metric_value(http, gateway.admin_url, "consulgw_consul_errors_total") or 0.0


async def _ready(http: aiohttp.ClientSession, gateway: Gateway) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{gateway.admin_url}/-/ready") as resp:
        return resp.status, json.loads(await resp.read())


async def _outage_then_recovery(
    fault: ConsulFault,
    *,
    dev_agent: Any,
    consul: Consul,
    http: aiohttp.ClientSession,
    up: Upstream,
    start_gateway: GatewayFactory,
    error_timeout: float,
) -> None:
    await consul.register("steady", up.port, tags=["gw.route=/steady"])
    async with FaultyConsul(dev_agent.url) as relay:
        gateway = await start_gateway(consul_url=relay.url, max_staleness=1.0)
        await wait_for(lambda: routed(gateway, "steady", 1))
        errors_before = await _consul_errors(http, gateway)

        relay.set_fault(fault)
        await consul.register("later", up.port, tags=["gw.route=/later"])  # wakes the blocking queries

        async def errors_counted() -> bool:
            return await _consul_errors(http, gateway) > errors_before

        await wait_for(errors_counted, timeout=error_timeout)
        assert relay.faulted > 0
        # Last known good: the routes stay, requests are served.
        for _ in range(5):
            assert await _status(http, f"{gateway.url}/steady/x") == 200
        # The change made during the outage is not known yet: the documented answer for an unknown route.
        async with http.get(f"{gateway.url}/later/x") as resp:
            assert resp.status == 404
            assert (await error_body(resp))["error"] == "no_route"

        async def not_ready() -> bool:
            status, body = await _ready(http, gateway)
            return status == 503 and bool(body.get("reason"))

        await wait_for(not_ready, timeout=error_timeout)

        # Recovery without a restart.
        relay.set_fault(None)
        await wait_for(lambda: routed(gateway, "later", 1), timeout=40)
        assert await _status(http, f"{gateway.url}/later/x") == 200
        assert await _status(http, f"{gateway.url}/steady/x") == 200

        async def ready() -> bool:
            return (await _ready(http, gateway))[0] == 200

        await wait_for(ready, timeout=20)


@pytest.mark.parametrize("fault", ["500", "invalid_json", "truncated", "close"])
async def test_a_failing_consul_keeps_the_routes_and_is_followed_again_once_it_answers(
    fault: ConsulFault,
    dev_agent: Any,
    consul: Consul,
    http: aiohttp.ClientSession,
    upstreams: Any,
    start_gateway: GatewayFactory,
) -> None:
    up = await upstreams("one")
    await _outage_then_recovery(
        fault, dev_agent=dev_agent, consul=consul, http=http, up=up, start_gateway=start_gateway, error_timeout=20
    )


async def test_a_consul_that_answers_nothing_is_given_up_on_by_timeout_and_followed_again(
    dev_agent: Any, consul: Consul, http: aiohttp.ClientSession, upstreams: Any, start_gateway: GatewayFactory
) -> None:
    """Accepted connections, no answer: only the client's read timeout (the blocking wait, its jitter and a 10 s
    margin) ends each query. Meanwhile nothing about requests changes."""
    up = await upstreams("one")
    await _outage_then_recovery(
        "silent", dev_agent=dev_agent, consul=consul, http=http, up=up, start_gateway=start_gateway, error_timeout=40
    )
