"""``consulgw routes`` shows composite routes in lookup order with their calls, and its JSON says what a running
gateway's ``/-/routes`` says about them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from consulgw.devagent import DevAgent
from consulgw.server.gateway import Gateway
from tests.commands.cli import consulgw
from tests.composite.conftest import BRIEF
from tests.gateway.conftest import Consul, gateway_settings_for, wait_for


@pytest.fixture
async def agent(dev_agent: DevAgent) -> AsyncIterator[Consul]:
    async with aiohttp.ClientSession() as session:
        yield Consul(session, dev_agent.url)


async def test_composites_are_listed_with_their_calls_and_match_the_gateway(dev_agent: DevAgent, agent: Consul) -> None:
    await agent.register("users", 9001, service_id="users-1", tags=["gw.route=/users"])
    await agent.register("orders", 9002, service_id="orders-1", tags=["gw.route=/orders"])
    await agent.kv_put("consulgw/composites/user-dashboard", json.dumps(BRIEF))
    clash = {"route": "/orders", "calls": {"o": {"service": "orders", "path": "/orders"}}}
    await agent.kv_put("consulgw/composites/clash", json.dumps(clash))

    text = await consulgw("routes", "--consul", dev_agent.url)
    assert text.code == 0, text.err
    assert (
        "  */api/user-dashboard  ->  composite:user-dashboard   methods GET,HEAD   from consulgw/composites/user-dashboard"
        in text.out
    )
    assert "      call user: users /users/{sub}   required\n" in text.out
    assert (
        "      call notifications: notifications /notifications?user={query.user}   optional   (service not routed: the call fails)"
        in text.out
    )
    assert "route */orders is claimed by composite:clash, orders; composite:clash wins" in text.out

    result = await consulgw("routes", "--consul", dev_agent.url, "--json")
    assert result.code == 0, result.err
    mine = json.loads(result.out)
    async with (
        Gateway(gateway_settings_for(dev_agent.url), consul_wait=5.0) as gateway,
        aiohttp.ClientSession() as http,
    ):
        await gateway.wait_ready()
        await wait_for(lambda: len(gateway.view().composites) == 2)  # type: ignore[union-attr]
        async with http.get(f"{gateway.admin_url}/-/routes") as resp:
            theirs: dict[str, Any] = await resp.json()
    assert mine["routes"] == theirs["routes"]  # one builder (consulgw.server.routes_document) for both
    assert mine["conflicts"] == theirs["conflicts"]
    assert mine["composites"] == theirs["composites"]
    assert theirs["composites"]["user-dashboard"]["policy"]["auth"] == {"type": "jwt"}  # no secret in it
