"""More routed services than connections: parked services are read on change signals and index probes, and the
watcher never holds more than ``max_conns`` connections to the agent (counted at the socket level by a relay)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from consulgw.devagent import DevAgent
from consulgw.discovery.watcher import FIXED_WATCHES, reader_count
from consulgw.model.snapshot import Health
from tests.discovery.conftest import Agent, RequestLog, Running, eventually
from tests.support.consul_fakes import CountingProxy

MAX_CONNS = 6  # four datacenter-wide watches, one reader, one live slot
NAMES = [f"svc-{n:02d}" for n in range(40)]


@pytest.fixture
async def dev() -> AsyncIterator[DevAgent]:
    async with DevAgent(node="test-node", port=0) as agent:
        yield agent


@pytest.fixture
async def agent(dev: DevAgent, admin_session: aiohttp.ClientSession) -> Agent:
    for name in NAMES:
        await Agent(dev.url, admin_session).register(name, port=8000)
    return Agent(dev.url, admin_session)


@pytest.fixture
async def relay(dev: DevAgent) -> AsyncIterator[CountingProxy]:
    async with CountingProxy(dev.port, limit=200) as proxy:  # Consul's default per-client limit
        yield proxy


def full_reads(log: RequestLog, since: int) -> list[str]:
    """Health reads that fetch a whole service (not index probes, not the live watches' blocking requests)."""
    return [
        p
        for _m, p, q in log.entries[since:]
        if p.startswith("/v1/health/service/") and "filter" not in q and "index" not in q
    ]


async def test_every_service_is_routed_within_the_budget(
    agent: Agent, relay: CountingProxy, start_watcher: Callable[..., Running]
) -> None:
    run = start_watcher(relay.url, max_conns=MAX_CONNS)
    first = await run.recorder.wait_for(lambda s: True)
    assert set(first.services) == set(NAMES)
    status = run.watcher.status
    assert status.max_conns == MAX_CONNS
    assert (status.live, status.parked) == (MAX_CONNS - FIXED_WATCHES - reader_count(MAX_CONNS), 39)
    assert status.watches == FIXED_WATCHES + status.live
    await agent.ttl("svc-07", "fail")  # some traffic after the start
    await run.recorder.wait_for(lambda s: s.services["svc-07"].instances[0].health is Health.CRITICAL)
    assert status.max_in_flight <= MAX_CONNS
    assert relay.peak <= MAX_CONNS
    assert relay.refused == 0


async def test_a_health_change_of_a_parked_service_reads_that_service_alone(
    agent: Agent, relay: CountingProxy, start_watcher: Callable[..., Running], requests_log: RequestLog
) -> None:
    run = start_watcher(relay.url, max_conns=MAX_CONNS)
    await run.recorder.wait_for(lambda s: True)
    await eventually(lambda: not full_reads(requests_log, len(requests_log.entries) - 1))  # start-up reads done
    mark = len(requests_log.entries)
    count = len(run.recorder.snapshots)

    await agent.ttl("svc-23", "fail")  # /v1/health/state/critical names it
    snap = await run.recorder.wait_for(
        lambda s: s.services["svc-23"].instances[0].health is Health.CRITICAL, after=count
    )
    assert snap.changed == frozenset({"svc-23"})
    assert full_reads(requests_log, mark) == ["/v1/health/service/svc-23"]

    await agent.maintenance("svc-31", True)  # a _service_maintenance check: critical too
    await run.recorder.wait_for(lambda s: s.services["svc-31"].instances[0].health is Health.MAINTENANCE)
    await agent.ttl("svc-23", "pass")  # back to passing: it leaves the critical list
    await run.recorder.wait_for(lambda s: s.services["svc-23"].instances[0].health is Health.PASSING)
    assert relay.peak <= MAX_CONNS


async def test_instances_added_or_removed_without_a_health_signal_are_found_by_probes(
    agent: Agent, relay: CountingProxy, start_watcher: Callable[..., Running]
) -> None:
    run = start_watcher(relay.url, max_conns=MAX_CONNS)
    await run.recorder.wait_for(lambda s: True)
    probes = run.watcher.status.probes_total

    # A second, already passing instance: only the catalog's index moves, and no live watch explains it.
    await agent.register("svc-11", service_id="svc-11-b", port=9001)
    snap = await run.recorder.wait_for(lambda s: len(s.services["svc-11"].instances) == 2)
    assert snap.changed == frozenset({"svc-11"})
    assert run.watcher.status.probes_total > probes

    await agent.deregister("svc-11-b")
    await run.recorder.wait_for(lambda s: len(s.services["svc-11"].instances) == 1)
    await agent.register("svc-12", port=7777)  # re-registered in place: a new port
    await run.recorder.wait_for(lambda s: s.services["svc-12"].instances[0].port == 7777)
    assert relay.peak <= MAX_CONNS


async def test_catalog_changes_add_retag_and_remove_parked_services(
    agent: Agent, relay: CountingProxy, start_watcher: Callable[..., Running]
) -> None:
    run = start_watcher(relay.url, max_conns=MAX_CONNS)
    await run.recorder.wait_for(lambda s: True)
    await agent.register("fresh", port=9100)
    await run.recorder.wait_for(lambda s: "fresh" in s.services)
    await agent.register("svc-05", port=8000, tags=("gw", "gw.route=/five"))
    await run.recorder.wait_for(lambda s: "gw.route=/five" in s.services["svc-05"].tags)
    await agent.register("svc-06", port=8000, tags=("internal",))  # no longer routed
    snap = await run.recorder.wait_for(lambda s: "svc-06" not in s.services)
    assert "svc-06" in snap.changed
    await agent.deregister("svc-07")
    await run.recorder.wait_for(lambda s: "svc-07" not in s.services)


async def test_a_node_check_reaches_every_service_on_the_node(
    agent: Agent, relay: CountingProxy, start_watcher: Callable[..., Running], admin_session: aiohttp.ClientSession
) -> None:
    run = start_watcher(relay.url, max_conns=MAX_CONNS)
    await run.recorder.wait_for(lambda s: True)
    await agent.put("/v1/agent/maintenance", enable="true", reason="kernel upgrade")
    snap = await run.recorder.wait_for(
        lambda s: all(s.services[n].instances[0].health is Health.MAINTENANCE for n in NAMES)
    )
    assert set(NAMES) <= set(snap.services)
    await agent.put("/v1/agent/maintenance", enable="false")
    await run.recorder.wait_for(lambda s: all(s.services[n].instances[0].health is Health.PASSING for n in NAMES))
    assert relay.peak <= MAX_CONNS


async def test_a_busy_parked_service_takes_the_slot_of_a_quiet_one(
    agent: Agent, relay: CountingProxy, start_watcher: Callable[..., Running], requests_log: RequestLog
) -> None:
    run = start_watcher(relay.url, max_conns=MAX_CONNS, residency=0.2)
    await run.recorder.wait_for(lambda s: True)

    def blocking_on(name: str) -> bool:
        return any(p == f"/v1/health/service/{name}" and "index" in q for _m, p, q in requests_log.entries)

    assert not blocking_on("svc-33")
    # svc-33 keeps changing: once the live service has been quiet for the residency, svc-33 takes its slot.
    state = "pass"
    while not blocking_on("svc-33"):
        state = "fail" if state == "pass" else "pass"
        count = len(run.recorder.snapshots)
        await agent.ttl("svc-33", state)
        await run.recorder.wait_for(
            lambda s, st=state: (s.services["svc-33"].instances[0].health is Health.CRITICAL) is (st == "fail"),
            after=count,
        )
    assert run.watcher.status.live == MAX_CONNS - FIXED_WATCHES - reader_count(MAX_CONNS)
    assert relay.peak <= MAX_CONNS
