"""CatalogWatcher against the in-process dev agent on real sockets: public behaviour only."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
import structlog

from consulgw.devagent import DevAgent
from consulgw.discovery.watcher import FIXED_WATCHES, reader_count
from consulgw.model.snapshot import Health
from tests.discovery.conftest import Agent, RequestLog, Running, eventually

TOKEN = "watcher-test-token-9f3b"


@pytest.fixture
async def dev() -> AsyncIterator[DevAgent]:
    # One test gives the watcher a budget above 200 services; like a real agent, this one must then allow more than
    # Consul's default 200 connections per client (limits.http_max_conns_per_client).
    async with DevAgent(node="test-node", port=0, http_max_conns_per_client=400) as agent:
        yield agent


@pytest.fixture
def agent(dev: DevAgent, admin_session: aiohttp.ClientSession) -> Agent:
    return Agent(dev.url, admin_session)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_first_snapshot_is_complete_and_only_routed_services(
    dev: DevAgent, agent: Agent, start_watcher: Callable[..., Running]
) -> None:
    await agent.register("web", tags=("gw", "v1"), port=8081, Meta={"gw-scheme": "https"})
    await agent.register("api", service_id="api-1", tags=("gw.host=api.example.com",), port=9001)
    await agent.register("api", service_id="api-2", tags=("gw.host=api.example.com",), port=9002)
    await agent.register("db", tags=("primary",), port=5432)
    await agent.kv_put("consulgw/services/web", b'{"timeout": "5s"}')
    await agent.kv_put("other/key", b"not ours")

    run = start_watcher(dev.url)
    first = await run.recorder.wait_for(lambda s: True)

    assert first.complete
    assert set(first.services) == {"web", "api"}  # not db (no route tag), not consul
    assert first.changed == frozenset({"web", "api"})
    assert first.kv_changed
    assert dict(first.kv) == {"services/web": b'{"timeout": "5s"}'}
    assert first.services_index >= 1
    assert first.kv_index >= 1
    web = first.services["web"].instances
    assert [(i.id, i.address, i.port, i.health, i.scheme) for i in web] == [
        ("test-node/web", "127.0.0.1", 8081, Health.PASSING, "https")
    ]
    assert [i.id for i in first.services["api"].instances] == ["test-node/api-1", "test-node/api-2"]
    assert first.services["api"].tags == ("gw.host=api.example.com",)

    status = run.watcher.status
    assert status.complete
    assert status.consul_reachable
    assert status.watches == FIXED_WATCHES + 2  # catalog, critical, warning, KV + web + api
    assert (status.live, status.parked) == (2, 0)
    assert status.kv_access == "ok"
    assert status.last_success is not None
    assert status.errors_total == 0
    assert status.services_index >= first.services_index


async def test_health_changes_change_only_that_service(
    dev: DevAgent, agent: Agent, start_watcher: Callable[..., Running]
) -> None:
    await agent.register("web")
    await agent.register("api")
    run = start_watcher(dev.url)
    before = await run.recorder.wait_for(lambda s: True)

    expected = [
        (lambda: agent.ttl("web", "fail"), Health.CRITICAL),
        (lambda: agent.ttl("web", "warn"), Health.WARNING),
        (lambda: agent.ttl("web", "pass"), Health.PASSING),
        (lambda: agent.maintenance("web", True), Health.MAINTENANCE),
        (lambda: agent.maintenance("web", False), Health.PASSING),
    ]
    for change, health in expected:
        count = len(run.recorder.snapshots)
        await change()
        snap = await run.recorder.wait_for(lambda s, h=health: s.services["web"].instances[0].health is h, after=count)
        assert snap.changed == frozenset({"web"})
        assert not snap.kv_changed
        assert snap.services["api"] == before.services["api"]


async def test_output_only_check_update_publishes_nothing(
    dev: DevAgent, agent: Agent, start_watcher: Callable[..., Running]
) -> None:
    await agent.register("web")
    run = start_watcher(dev.url)
    await run.recorder.wait_for(lambda s: True)
    await agent.ttl("web", "pass", note="same status, new output")
    await agent.kv_put("elsewhere/x", b"1")  # outside the prefix
    await asyncio.sleep(1.0)  # a negative check: give a wrong publish time to happen
    assert len(run.recorder.snapshots) == 1


async def test_deregister_and_unrouting_remove_the_service(
    dev: DevAgent, agent: Agent, start_watcher: Callable[..., Running]
) -> None:
    await agent.register("web")
    await agent.register("api")
    run = start_watcher(dev.url)
    await run.recorder.wait_for(lambda s: True)
    assert run.watcher.status.live == 2

    count = len(run.recorder.snapshots)
    await agent.deregister("web")
    snap = await run.recorder.wait_for(lambda s: "web" not in s.services, after=count)
    assert snap.changed == frozenset({"web"})
    assert set(snap.services) == {"api"}
    await eventually(lambda: run.watcher.status.live == 1)

    count = len(run.recorder.snapshots)
    await agent.register("api", tags=("internal",))  # re-registered without a route tag
    snap = await run.recorder.wait_for(lambda s: "api" not in s.services, after=count)
    assert snap.changed == frozenset({"api"})
    assert dict(snap.services) == {}
    await eventually(lambda: run.watcher.status.watches == FIXED_WATCHES)

    count = len(run.recorder.snapshots)
    await agent.register("api", tags=("gw",), port=7000)  # and routed again
    snap = await run.recorder.wait_for(lambda s: "api" in s.services, after=count)
    assert snap.changed == frozenset({"api"})
    assert snap.services["api"].instances[0].port == 7000


async def test_kv_changes_under_the_prefix(dev: DevAgent, agent: Agent, start_watcher: Callable[..., Running]) -> None:
    await agent.register("web")
    run = start_watcher(dev.url)
    first = await run.recorder.wait_for(lambda s: True)
    assert dict(first.kv) == {}  # Consul's 404: empty, and still complete

    count = len(run.recorder.snapshots)
    await agent.kv_put("consulgw/services/web", b'{"retries": 2}')
    snap = await run.recorder.wait_for(lambda s: "services/web" in s.kv, after=count)
    assert snap.kv_changed
    assert snap.changed == frozenset()
    assert snap.kv["services/web"] == b'{"retries": 2}'
    assert snap.services["web"] == first.services["web"]

    count = len(run.recorder.snapshots)
    await agent.kv_put("consulgw/services/web", b"")
    snap = await run.recorder.wait_for(lambda s: s.kv.get("services/web") == b"", after=count)
    assert snap.kv_changed

    count = len(run.recorder.snapshots)
    await agent.kv_delete("consulgw/services/web")
    snap = await run.recorder.wait_for(lambda s: "services/web" not in s.kv, after=count)
    assert snap.kv_changed
    assert dict(snap.kv) == {}
    assert run.watcher.status.kv_index == snap.kv_index


async def test_a_burst_of_changes_is_coalesced(
    dev: DevAgent, agent: Agent, start_watcher: Callable[..., Running]
) -> None:
    names = [f"svc-{n:02d}" for n in range(20)]
    for name in names:
        await agent.register(name)
    run = start_watcher(dev.url, coalesce_window=1.0)
    await run.recorder.wait_for(lambda s: len(s.services) == 20)

    count = len(run.recorder.snapshots)
    for name in names:  # 20 changes, spread out so each one reaches the watcher on its own
        await agent.ttl(name, "fail")
        await asyncio.sleep(0.02)
    final = await run.recorder.wait_for(
        lambda s: all(s.services[n].instances[0].health is Health.CRITICAL for n in names), after=count
    )
    burst = run.recorder.snapshots[count:]
    assert final is burst[-1]
    assert len(burst) <= 5  # 20 changes, a handful of snapshots (one per window), not 20
    changed: set[str] = set()
    for snap in burst:
        changed |= snap.changed
    assert changed == set(names)


async def test_one_change_among_200_services_rereads_one_service(
    dev: DevAgent, agent: Agent, start_watcher: Callable[..., Running], requests_log: RequestLog
) -> None:
    names = [f"svc-{n:03d}" for n in range(200)]
    for name in names:
        await agent.register(name)
    # A budget above 200 services (and an agent that allows it): every one gets a blocking watch of its own
    # (parked services: test_coverage.py).
    run = start_watcher(dev.url, wait=60.0, max_conns=300)  # no blocking query times out during the test
    await run.recorder.wait_for(lambda s: len(s.services) == 200, timeout=60)
    assert run.watcher.status.watches == FIXED_WATCHES + 200

    def blocked_services() -> set[str]:
        return {
            p.rsplit("/", 1)[1]
            for _m, p, q in requests_log.entries
            if p.startswith("/v1/health/service/") and "index" in q
        }

    await eventually(lambda: blocked_services() == set(names), timeout=60)  # every watch is now blocking
    mark = len(requests_log.entries)
    count = len(run.recorder.snapshots)

    await agent.ttl("svc-123", "fail")
    snap = await run.recorder.wait_for(
        lambda s: s.services["svc-123"].instances[0].health is Health.CRITICAL, after=count
    )
    assert snap.changed == frozenset({"svc-123"})
    await eventually(lambda: len(requests_log.health_paths(mark)) >= 1)
    await asyncio.sleep(0.3)  # let any wrongly woken watch show itself
    assert set(requests_log.health_paths(mark)) == {"/v1/health/service/svc-123"}
    assert not [p for _m, p, _q in requests_log.entries[mark:] if p == "/v1/catalog/services"]


async def test_unreachable_consul_keeps_the_last_snapshot_and_recovers_after_restart(
    admin_session: aiohttp.ClientSession, start_watcher: Callable[..., Running]
) -> None:
    port = free_port()
    first_agent = DevAgent(node="test-node", port=port)
    await first_agent.__aenter__()
    try:
        agent = Agent(first_agent.url, admin_session)
        for n in range(5):  # push the indexes up, so the restarted agent's are visibly lower
            await agent.register(f"filler-{n}", tags=())
        await agent.register("web", port=8081)
        await agent.kv_put("consulgw/a", b"1")
        run = start_watcher(first_agent.url)
        good = await run.recorder.wait_for(lambda s: True)
        old_index = run.watcher.status.services_index
    finally:
        await first_agent.__aexit__(None, None, None)

    await eventually(lambda: not run.watcher.status.consul_reachable and run.watcher.status.errors_total >= 3)
    await asyncio.sleep(0.5)
    assert run.recorder.snapshots == [good]  # nothing empty or partial was published
    assert run.watcher.status.complete

    with structlog.testing.capture_logs() as logs:
        async with DevAgent(node="test-node", port=port) as second:  # state lost: every index starts over
            agent = Agent(second.url, admin_session)
            await agent.register("web", port=9090)
            snap = await run.recorder.wait_for(
                lambda s: "web" in s.services and s.services["web"].instances[0].port == 9090, timeout=30
            )
            assert dict(snap.kv) == {}  # the new agent's (empty) KV, read once it answered
            await eventually(lambda: run.watcher.status.consul_reachable)
            assert run.watcher.status.services_index < old_index
    resets = {e["endpoint"] for e in logs if e["event"] == "consul_index_reset"}
    assert "/v1/catalog/services" in resets


async def test_no_snapshot_until_consul_answers(
    admin_session: aiohttp.ClientSession, start_watcher: Callable[..., Running]
) -> None:
    port = free_port()
    run = start_watcher(f"http://127.0.0.1:{port}")
    await eventually(lambda: run.watcher.status.errors_total >= 3)
    status = run.watcher.status
    assert (status.complete, status.consul_reachable, status.last_success) == (False, False, None)
    assert run.recorder.snapshots == []
    async with DevAgent(node="test-node", port=port) as late:
        await Agent(late.url, admin_session).register("web")
        snap = await run.recorder.wait_for(lambda s: "web" in s.services, timeout=30)
        assert snap.complete


async def test_failures_are_logged_without_the_token(
    admin_session: aiohttp.ClientSession, start_watcher: Callable[..., Running]
) -> None:
    port = free_port()
    with structlog.testing.capture_logs() as logs:
        run = start_watcher(f"http://127.0.0.1:{port}", token=TOKEN)
        await eventually(lambda: run.watcher.status.errors_total >= 2)
        async with DevAgent(node="test-node", port=port):
            await run.recorder.wait_for(lambda s: True, timeout=30)
    failed = [e for e in logs if e["event"] == "consul_watch_failed"]
    assert failed
    assert {"endpoint", "error", "retry_in"} <= set(failed[0])
    assert any(e["event"] == "catalog_snapshot_published" for e in logs)
    assert TOKEN not in repr(logs)


async def test_cancelling_run_stops_every_watch(
    dev: DevAgent, agent: Agent, start_watcher: Callable[..., Running]
) -> None:
    for name in ("a", "b", "c"):
        await agent.register(name)
    run = start_watcher(dev.url)
    await run.recorder.wait_for(lambda s: len(s.services) == 3)
    before = {t for t in asyncio.all_tasks() if t.get_name().startswith("consul-watch:")}
    # catalog, KV, critical and warning checks, the readers, the publisher, three services
    assert len(before) == 4 + reader_count(64) + 1 + 3
    run.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run.task
    assert all(t.done() for t in before)
    assert run.watcher.status.watches == 0
