"""Supervisor -> worker snapshot channel: what a worker rebuilds equals what the supervisor published, over a
real Unix socket pair, for a first worker, a late one, and one that fell behind the delta history."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import MappingProxyType

import pytest

from consulgw.discovery.fanout import SnapshotHub, SnapshotReceiver, decode_service, encode_service
from consulgw.discovery.watcher import WatcherStatus
from consulgw.model.snapshot import CatalogSnapshot, Health, Instance, ServiceSnapshot, Weights
from tests.discovery.conftest import eventually


def service(name: str, *ports: int, health: Health = Health.PASSING) -> ServiceSnapshot:
    return ServiceSnapshot(
        name=name,
        index=sum(ports) or 1,
        instances=tuple(
            Instance(
                id=f"n1/{name}-{port}",
                service=name,
                service_id=f"{name}-{port}",
                node="n1",
                address="10.0.0.1",
                port=port,
                tags=("gw", f"gw.route=/{name}"),
                meta=MappingProxyType({"gw-scheme": "https", "zone": "a"}),
                health=health,
                weights=Weights(passing=3, warning=0),
            )
            for port in ports
        ),
    )


class Catalog:
    """Publishes snapshots the way the watcher does: ``changed`` relative to the previous one."""

    def __init__(self, hub: SnapshotHub) -> None:
        self.hub = hub
        self.services: dict[str, ServiceSnapshot] = {}
        self.kv: dict[str, bytes] = {}
        self.last: CatalogSnapshot | None = None

    def publish(
        self, *, put: tuple[ServiceSnapshot, ...] = (), drop: tuple[str, ...] = (), kv: dict[str, bytes] | None = None
    ) -> None:
        for svc in put:
            self.services[svc.name] = svc
        for name in drop:
            self.services.pop(name, None)
        if kv is not None:
            self.kv = dict(kv)
        self.last = CatalogSnapshot(
            services=MappingProxyType(dict(self.services)),
            kv=MappingProxyType(dict(self.kv)),
            services_index=len(self.services),
            kv_index=7,
            complete=True,
            changed=frozenset(s.name for s in put) | frozenset(drop) if self.last else frozenset(self.services),
            kv_changed=kv is not None or self.last is None,
        )
        self.hub.publish(self.last)


@dataclass
class Worker:
    receiver: SnapshotReceiver
    received: list[CatalogSnapshot]
    task: asyncio.Task[None] | None = None


@contextlib.asynccontextmanager
async def attached(hub: SnapshotHub, *, reading: bool = True) -> AsyncIterator[Worker]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    _r, writer = await asyncio.open_unix_connection(sock=ours)
    reader, their_writer = await asyncio.open_unix_connection(sock=theirs)
    worker = Worker(SnapshotReceiver(reader), [])
    feeder = asyncio.create_task(hub.serve(writer))
    if reading:
        worker.task = asyncio.create_task(worker.receiver.run(worker.received.append))
    try:
        yield worker
    finally:
        feeder.cancel()
        with contextlib.suppress(BaseException):
            await feeder
        writer.close()
        if worker.task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(worker.task, 5)  # run() returns once the supervisor's end is closed
        their_writer.close()


def same(a: CatalogSnapshot, b: CatalogSnapshot) -> bool:
    return dict(a.services) == dict(b.services) and dict(a.kv) == dict(b.kv) and a.services_index == b.services_index


@pytest.mark.parametrize(
    "svc",
    [
        pytest.param(service("web", 80, 81), id="two-instances-meta-weights"),
        pytest.param(service("empty"), id="no-instances"),
        pytest.param(service("down", 90, health=Health.MAINTENANCE), id="maintenance"),
    ],
)
def test_a_service_survives_encoding(svc: ServiceSnapshot) -> None:
    assert decode_service(encode_service(svc)) == svc


async def test_a_worker_follows_every_change_and_keeps_unchanged_services_as_they_were() -> None:
    hub = SnapshotHub()
    catalog = Catalog(hub)
    catalog.publish(put=(service("web", 80), service("api", 90), service("old", 70)), kv={"defaults": b"{}"})
    async with attached(hub) as worker:
        await eventually(lambda: len(worker.received) == 1)
        first = worker.received[0]
        assert same(first, catalog.last)  # type: ignore[arg-type]
        assert first.changed == frozenset({"web", "api", "old"})
        assert first.kv_changed
        assert first.complete

        catalog.publish(put=(service("web", 80, 81),), drop=("old",))
        await eventually(lambda: len(worker.received) == 2)
        second = worker.received[1]
        assert same(second, catalog.last)  # type: ignore[arg-type]
        assert second.changed == frozenset({"web", "old"})
        assert not second.kv_changed
        assert second.services["api"] is first.services["api"]  # unchanged: the very same object

        catalog.publish(kv={"defaults": b'{"retries": 2}'})
        await eventually(lambda: len(worker.received) == 3)
        third = worker.received[2]
        assert third.kv_changed
        assert third.changed == frozenset()
        assert third.kv["defaults"] == b'{"retries": 2}'

        status = WatcherStatus(consul_reachable=True, complete=True, live=2, max_conns=64, kv_access="denied")
        hub.set_status(status)
        await eventually(lambda: worker.receiver.status == status)
        assert worker.receiver.seq == hub.seq


async def test_a_late_worker_gets_the_current_snapshot_at_once() -> None:
    hub = SnapshotHub()
    catalog = Catalog(hub)
    catalog.publish(put=(service("web", 80),))
    for port in range(81, 90):
        catalog.publish(put=(service("web", 80, port),))
    catalog.publish(put=(service("api", 9),))
    async with attached(hub) as worker:
        await eventually(lambda: len(worker.received) == 1)
        assert same(worker.received[0], catalog.last)  # type: ignore[arg-type]
        assert worker.received[0].changed == frozenset({"web", "api"})


async def test_a_worker_that_fell_behind_the_history_gets_a_full_snapshot_and_ends_equal() -> None:
    hub = SnapshotHub(history=2)
    catalog = Catalog(hub)
    big = b"x" * 200_000  # KV documents fill the socket buffers while the worker is not reading
    catalog.publish(put=(service("web", 80),), kv={"defaults": big})
    async with attached(hub, reading=False) as worker:
        for n in range(12):
            catalog.publish(put=(service("web", 80 + n),), kv={"defaults": big + bytes([n])})
            await asyncio.sleep(0.01)
        worker.task = asyncio.create_task(worker.receiver.run(worker.received.append))
        await eventually(lambda: bool(worker.received) and same(worker.received[-1], catalog.last))  # type: ignore[arg-type]
        assert len(worker.received) < 13  # some deltas were never sent: a full snapshot replaced them
