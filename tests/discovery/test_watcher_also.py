"""CatalogWatcher.watch_also: services a policy sends traffic to are watched without route tags (issue 9).

The one input besides the catalog: the view names the services its policies reference (subsets of another service,
mirror targets); the watcher watches those that exist as if they were routed, and stops when they are no longer
named. Against the in-process dev agent, public behaviour only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from consulgw.devagent import DevAgent
from consulgw.discovery.watcher import FIXED_WATCHES
from tests.discovery.conftest import Agent, Running, eventually


@pytest.fixture
async def dev() -> AsyncIterator[DevAgent]:
    async with DevAgent(node="test-node", port=0) as agent:
        yield agent


@pytest.fixture
def agent(dev: DevAgent, admin_session: aiohttp.ClientSession) -> Agent:
    return Agent(dev.url, admin_session)


async def test_named_services_are_watched_without_route_tags_until_no_longer_named(
    dev: DevAgent, agent: Agent, start_watcher: Callable[..., Running]
) -> None:
    await agent.register("web")
    await agent.register("shadow", tags=("internal",))
    run = start_watcher(dev.url)
    first = await run.recorder.wait_for(lambda s: True)
    assert set(first.services) == {"web"}

    count = len(run.recorder.snapshots)
    run.watcher.watch_also(frozenset({"shadow", "not-registered-yet"}))
    snap = await run.recorder.wait_for(lambda s: "shadow" in s.services, after=count)
    assert snap.changed == frozenset({"shadow"})
    assert [i.port for i in snap.services["shadow"].instances] == [8080]
    await eventually(lambda: run.watcher.status.watches == FIXED_WATCHES + 2)  # the datacenter-wide ones + web + shadow

    # A named service that appears later is watched as soon as the catalog lists it.
    count = len(run.recorder.snapshots)
    await agent.register("not-registered-yet", tags=())
    await run.recorder.wait_for(lambda s: "not-registered-yet" in s.services, after=count)

    # Changes of a watched service are followed like any other's.
    count = len(run.recorder.snapshots)
    await agent.ttl("shadow", "fail")
    snap = await run.recorder.wait_for(
        lambda s: s.services["shadow"].instances[0].health.value == "critical", after=count
    )
    assert snap.changed == frozenset({"shadow"})

    # No longer named: the watch stops and the service leaves the snapshot; a routed service is unaffected.
    count = len(run.recorder.snapshots)
    run.watcher.watch_also(frozenset({"web"}))
    snap = await run.recorder.wait_for(lambda s: "shadow" not in s.services, after=count)
    assert set(snap.services) == {"web"}
    await eventually(lambda: run.watcher.status.watches == FIXED_WATCHES + 1)


async def test_services_named_before_the_first_listing_are_in_the_first_snapshot(
    dev: DevAgent, agent: Agent, start_watcher: Callable[..., Running]
) -> None:
    await agent.register("web")
    await agent.register("shadow", tags=())
    run = start_watcher(dev.url)
    run.watcher.watch_also(frozenset({"shadow"}))
    first = await run.recorder.wait_for(lambda s: True)
    assert set(first.services) == {"web", "shadow"}
    assert first.complete
