"""Remote-datacenter watches (failover): ``watch_remote`` pairs are watched with ``?dc=`` through the local agent
(a dev agent federated with ``wan_peers``), their answers land in ``CatalogSnapshot.remote`` and name the service in
``changed``; an unreachable datacenter keeps nothing and breaks nothing local; a pair no longer wanted leaves; the
supervisor's fanout hands the remote snapshots to a worker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from consulgw.devagent import DevAgent
from consulgw.discovery.fanout import SnapshotHub, SnapshotReceiver
from consulgw.model.snapshot import CatalogSnapshot, Instance, ServiceSnapshot

from .conftest import Agent, Recorder, Running, eventually


@pytest.fixture
async def federated() -> AsyncIterator[tuple[DevAgent, DevAgent]]:
    async with contextlib.AsyncExitStack() as stack:
        dc2 = await stack.enter_async_context(DevAgent(node="node-dc2", datacenter="dc2", port=0))
        dc1 = await stack.enter_async_context(
            DevAgent(node="node-dc1", datacenter="dc1", port=0, wan_peers={"dc2": dc2.url})
        )
        yield dc1, dc2


async def test_remote_pairs_are_watched_in_their_datacenter(
    federated: tuple[DevAgent, DevAgent], session: aiohttp.ClientSession, start_watcher: Callable[..., Running]
) -> None:
    dc1, dc2 = federated
    local, remote = Agent(dc1.url, session), Agent(dc2.url, session)
    await local.register("web")
    wan = {"wan": {"Address": "198.51.100.7", "Port": 9443}}
    await remote.register("web", service_id="web-dc2", port=9000, TaggedAddresses=wan)
    run = start_watcher(dc1.url)
    await run.recorder.wait_for(lambda s: "web" in s.services)
    run.watcher.watch_remote(frozenset({("web", "dc2"), ("web", "dc3")}))
    first = await run.recorder.wait_for(lambda s: ("web", "dc2") in s.remote)
    assert "web" in first.changed
    (inst,) = first.remote[("web", "dc2")].instances
    assert (inst.service_id, inst.datacenter, inst.port) == ("web-dc2", "dc2", 9000)
    assert (inst.wan_address, inst.wan_port) == ("198.51.100.7", 9443)
    assert inst.reached_over_wan().endpoint == "198.51.100.7:9443"
    # dc3 is not known to the agent (500 No path to datacenter): nothing for it, failing, local still reachable.
    await eventually(lambda: run.watcher.status.remote_failing == 1)
    status = run.watcher.status
    assert (status.remote_watches, status.consul_reachable) == (2, True)
    assert ("web", "dc3") not in run.recorder.last.remote

    # A change in dc2 (blocking query through the peer) makes a new snapshot naming the service.
    seen = len(run.recorder.snapshots)
    await remote.ttl("web-dc2", "fail")
    changed = await run.recorder.wait_for(lambda s: s.remote[("web", "dc2")].instances[0].weight == 0, after=seen)
    assert "web" in changed.changed
    assert changed.services["web"] is first.services["web"]  # the local one untouched

    # No longer wanted: the pair leaves the snapshot.
    seen = len(run.recorder.snapshots)
    run.watcher.watch_remote(frozenset())
    gone = await run.recorder.wait_for(lambda s: not s.remote, after=seen)
    assert "web" in gone.changed
    await eventually(lambda: run.watcher.status.remote_watches == 0)


async def test_the_fanout_carries_remote_snapshots_to_a_worker() -> None:
    hub = SnapshotHub()
    ours, theirs = await _socketpair()
    receiver = SnapshotReceiver(theirs[0])
    recorder = Recorder()
    feeding = asyncio.create_task(hub.serve(ours[1]))
    reading = asyncio.create_task(receiver.run(recorder))
    try:
        inst = Instance(id="n/web-2", service="web", service_id="web-2", node="n", address="10.0.0.2", port=80,
                        datacenter="dc2", wan_address="203.0.113.2", wan_port=8080)  # fmt: skip
        remote = {("web", "dc2"): ServiceSnapshot(name="web", index=5, instances=(inst,))}
        hub.publish(CatalogSnapshot(complete=True, remote=remote))
        got = await recorder.wait_for(lambda s: bool(s.remote))
        assert dict(got.remote) == remote
        hub.publish(CatalogSnapshot(complete=True, kv={"x": b"1"}, kv_changed=True, remote=remote))
        same = await recorder.wait_for(lambda s: "x" in s.kv)
        assert same.changed == frozenset()  # remote unchanged: nothing to rebuild
        hub.publish(CatalogSnapshot(complete=True, kv={"x": b"1"}, changed=frozenset({"web"})))
        emptied = await recorder.wait_for(lambda s: not s.remote)
        assert emptied.changed == {"web"}
    finally:
        for task in (feeding, reading):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        ours[1].close()
        theirs[1].close()


async def _socketpair() -> tuple[
    tuple[asyncio.StreamReader, asyncio.StreamWriter], tuple[asyncio.StreamReader, asyncio.StreamWriter]
]:
    import socket

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return await asyncio.open_unix_connection(sock=a), await asyncio.open_unix_connection(sock=b)


async def test_a_datacenter_that_goes_away_keeps_its_last_answer(
    federated: tuple[DevAgent, DevAgent], session: aiohttp.ClientSession, start_watcher: Callable[..., Running]
) -> None:
    dc1, dc2 = federated
    await Agent(dc2.url, session).register("web", service_id="web-dc2", port=9000)
    run = start_watcher(dc1.url)
    run.watcher.watch_remote(frozenset({("web", "dc2")}))
    held = await run.recorder.wait_for(lambda s: ("web", "dc2") in s.remote)
    await dc2.stop()  # dc1 answers 500 "Remote DC has no server currently reachable" from now on
    await eventually(lambda: run.watcher.status.remote_failing == 1)
    assert run.recorder.last.remote[("web", "dc2")] is held.remote[("web", "dc2")]
    assert run.watcher.status.consul_reachable  # the local datacenter is fine
