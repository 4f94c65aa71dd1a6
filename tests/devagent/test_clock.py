"""The injected clock drives TTL expiry, the reaper and blocking-query timeouts (no real waiting)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp

from consulgw.devagent import DevAgent
from tests.devagent.support import Api, ManualClock, NoJitter


async def test_ttl_expiry_and_reaping_follow_the_injected_clock(
    dev_agent_factory: Callable[..., Awaitable[DevAgent]], session: aiohttp.ClientSession
) -> None:
    clock = ManualClock()
    agent = await dev_agent_factory(clock=clock, rng=NoJitter())
    api = Api(agent.url, session)
    await api.register({"Name": "web", "Check": {"TTL": "10m", "DeregisterCriticalServiceAfter": "90s"}})
    await api.put("/v1/agent/check/pass/service:web")
    await clock.advance(599)
    assert (await api.get("/v1/agent/checks")).json()["service:web"]["Status"] == "passing"
    await clock.advance(1)
    assert (await api.get("/v1/agent/checks")).json()["service:web"]["Output"] == "TTL expired"
    for _ in range(3):  # reaper runs every 30s; the service is critical for 90s after three runs
        await clock.advance(30)
    await clock.advance(30)
    assert (await api.get("/v1/agent/services")).json() == {}


async def test_blocking_wait_is_measured_on_the_injected_clock(
    dev_agent_factory: Callable[..., Awaitable[DevAgent]], session: aiohttp.ClientSession
) -> None:
    clock = ManualClock()
    agent = await dev_agent_factory(clock=clock, rng=NoJitter())
    api = Api(agent.url, session)
    index = (await api.get("/v1/catalog/nodes")).index
    pending = asyncio.create_task(api.get("/v1/catalog/nodes", {"index": str(index), "wait": "5m"}))
    await asyncio.sleep(0.2)
    await clock.advance(299)
    await asyncio.sleep(0.1)
    assert not pending.done()
    await clock.advance(1)
    reply = await asyncio.wait_for(pending, 5)
    assert (reply.status, reply.index) == (200, index)
