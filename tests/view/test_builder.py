"""ViewBuilder: snapshots offered while a build runs become one build; a failing build keeps the view in force;
building yields to the event loop; a large build pauses the cyclic GC and freezes what it built."""

from __future__ import annotations

import asyncio
import gc
import json
import random
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from types import MappingProxyType

import aiohttp
import pytest
import structlog

from consulgw.auth.basic import VerifiedPasswords
from consulgw.auth.jwks import JwksCache
from consulgw.clock import SystemClock
from consulgw.metrics import GatewayMetrics
from consulgw.model.snapshot import CatalogSnapshot, Instance, ServiceSnapshot
from consulgw.pipeline.answer import Answer
from consulgw.pipeline.chain import build_chain
from consulgw.pipeline.context import RequestContext
from consulgw.pipeline.stages.deps import StageDeps
from consulgw.ratelimit.local import LocalLimiter
from consulgw.ratelimit.outage import BackendOutage
from consulgw.server.view import LARGE_BUILD, ViewBuilder
from consulgw.upstream.breaker import BreakerBoard
from consulgw.upstream.pool import UpstreamPools


def service(name: str, *ports: int) -> ServiceSnapshot:
    return ServiceSnapshot(
        name=name,
        index=1,
        instances=tuple(
            Instance(
                id=f"n1/{name}-{port}",
                service=name,
                service_id=f"{name}-{port}",
                node="n1",
                address="127.0.0.1",
                port=port,
                tags=(f"gw.route=/{name}",),
            )
            for port in ports
        ),
    )


def snapshot(
    *services: ServiceSnapshot, changed: set[str] | None = None, kv: dict[str, bytes] | None = None
) -> CatalogSnapshot:
    by_name = {s.name: s for s in services}
    return CatalogSnapshot(
        services=MappingProxyType(by_name),
        kv=MappingProxyType(kv or {}),
        complete=True,
        changed=frozenset(by_name if changed is None else changed),
        kv_changed=kv is not None,
    )


async def unreachable(ctx: RequestContext) -> Answer:
    raise AssertionError("these tests build views; no request is sent")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def make_builder(http: aiohttp.ClientSession) -> Callable[..., ViewBuilder]:
    def make(*, broken: frozenset[str] = frozenset()) -> ViewBuilder:
        clock = SystemClock()
        metrics = GatewayMetrics()
        rng = random.Random(1)
        builder: ViewBuilder

        def deps(name: str) -> StageDeps:
            if name in broken:
                raise RuntimeError(f"a bug while building {name}")
            return StageDeps(
                service=name,
                clock=clock,
                rng=rng,
                metrics=metrics,
                http=http,
                redis=None,
                consumers=builder.book,
                jwks=JwksCache(http=http, clock=clock),
                local_limits=LocalLimiter(clock=clock),
                redis_outage=BackendOutage(),
                verified_passwords=VerifiedPasswords(),
                worker_index=0,
                worker_count=1,
            )

        builder = ViewBuilder(
            tag_prefix="gw",
            compat=frozenset(),
            pools=UpstreamPools(rng=rng),
            breakers=BreakerBoard(clock=clock, metrics=metrics),
            metrics=metrics,
            stage_deps=deps,
            pipeline=lambda service, policy, stages: build_chain(stages, unreachable),
            clock=clock,
        )
        return builder

    return make


@pytest.fixture
def running() -> Iterator[Callable[[ViewBuilder], asyncio.Task[None]]]:
    tasks: list[asyncio.Task[None]] = []

    def start(builder: ViewBuilder) -> asyncio.Task[None]:
        task = asyncio.create_task(builder.run())
        tasks.append(task)
        return task

    yield start
    for task in tasks:
        task.cancel()


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(20):
        while not condition():  # noqa: ASYNC110 - polling the builder's public state
            await asyncio.sleep(0.01)


async def test_snapshots_offered_before_a_build_are_merged_into_one(
    make_builder: Callable[..., ViewBuilder], running: Callable[[ViewBuilder], asyncio.Task[None]]
) -> None:
    builder = make_builder()
    builder.offer(snapshot(service("a", 1), service("b", 2)))
    builder.offer(snapshot(service("a", 1), service("b", 2, 3), changed={"b"}))
    builder.offer(snapshot(service("a", 1), service("b", 2, 3), service("c", 4), changed={"c"}))
    with structlog.testing.capture_logs() as logs:
        running(builder)
        await builder.ready.wait()
        await until(lambda: builder.current is not None)
    view = builder.current
    assert view is not None
    assert [e["event"] for e in logs].count("route_table_swapped") == 1
    assert view.version == 1
    assert sorted(view.services) == ["a", "b", "c"]
    assert len(view.services["b"].snapshot.instances) == 2
    assert {r.prefix for r in view.table.routes} == {"/a", "/b", "/c"}


async def test_a_failing_build_keeps_the_view_and_its_changes_are_built_with_the_next_snapshot(
    make_builder: Callable[..., ViewBuilder], running: Callable[[ViewBuilder], asyncio.Task[None]]
) -> None:
    builder = make_builder(broken=frozenset({"boom"}))
    running(builder)
    builder.offer(snapshot(service("a", 1)))
    await until(lambda: builder.current is not None)
    first = builder.current
    with structlog.testing.capture_logs() as logs:
        # a's new instance arrives together with a service whose build hits a bug
        builder.offer(snapshot(service("a", 1, 2), service("boom", 9), changed={"a", "boom"}))
        await until(lambda: any(e["event"] == "view_build_failed" for e in logs))
    assert builder.current is first  # nothing half-built is ever swapped in
    builder.offer(snapshot(service("a", 1, 2), changed={"boom"}))  # boom left; a's change was not in this one
    await until(lambda: builder.current is not first)
    view = builder.current
    assert view is not None
    assert sorted(view.services) == ["a"]
    assert len(view.services["a"].snapshot.instances) == 2  # carried over from the failed build
    assert {r.prefix for r in view.table.routes} == {"/a"}


async def test_a_large_build_lets_the_loop_run_and_freezes_what_it_built(
    make_builder: Callable[..., ViewBuilder],
) -> None:
    builder = make_builder()
    names = [f"s{i}" for i in range(LARGE_BUILD + 500)]
    kv = {f"services/{name}": json.dumps({"retries": {"attempts": 2}}).encode() for name in names}
    big = snapshot(*(service(name, 1, 2) for name in names), kv=kv)
    turns = 0
    done = asyncio.Event()

    async def elsewhere() -> None:
        nonlocal turns
        while not done.is_set():
            turns += 1
            await asyncio.sleep(0)

    frozen = gc.get_freeze_count()
    other = asyncio.create_task(elsewhere())
    try:
        await builder.apply(big)
    finally:
        done.set()
        await other
    try:
        assert builder.current is not None
        assert len(builder.current.services) == len(names)
        assert turns > 20  # the loop ran other tasks while 1,500 services and their policies were built
        assert gc.isenabled()
        assert gc.get_freeze_count() > frozen

        # consulgw/defaults changes: every policy is parsed again, the view follows
        defaults = replace(
            big, kv=MappingProxyType({**kv, "defaults": b'{"timeouts": {"connect": "2s"}}'}), changed=frozenset()
        )
        await builder.apply(defaults)
        assert builder.current.services["s7"].policy.timeouts.connect == 2.0
        assert builder.current.version == 2
    finally:
        gc.unfreeze()
