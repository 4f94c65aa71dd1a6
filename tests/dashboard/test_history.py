"""TrafficHistory and TrafficRecorder: the dashboard's time series, with a hand-driven clock and real collectors.

The view, pools, breakers and metrics are the gateway's own classes; only time is faked, and ``sample()`` is
called by the test instead of the background task.
"""

from __future__ import annotations

import math
import random
from types import MappingProxyType

import pytest

from consulgw.metrics import LATENCY_BUCKETS, GatewayMetrics
from consulgw.model.snapshot import Instance, ServiceSnapshot
from consulgw.policy.model import BreakerPolicy, ServicePolicy
from consulgw.routing.rules import ServiceRoutes
from consulgw.routing.table import RouteTable
from consulgw.server.history import TrafficHistory, TrafficRecorder, _quantiles
from consulgw.server.view import GatewayView, ServiceEntry
from consulgw.upstream.breaker import BreakerBoard
from consulgw.upstream.pool import UpstreamPools


async def _never_called(ctx: object) -> object:
    raise AssertionError("the time series never runs a request through the pipeline")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_700_000_000.0 + self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def instance(service: str, n: int) -> Instance:
    return Instance(id=f"node/{service}-{n}", service=service, service_id=f"{service}-{n}", node="node",
                    address="127.0.0.1", port=9000 + n)  # fmt: skip


class World:
    """A view of some services, with the pools, breakers, metrics and recorder the history reads."""

    def __init__(self, services: dict[str, int], *, points: int = 180, max_series: int = 2000) -> None:
        self.clock = Clock()
        self.metrics = GatewayMetrics()
        self.pools = UpstreamPools(rng=random.Random(1))
        self.breakers = BreakerBoard(clock=self.clock, metrics=self.metrics)
        self.recorder = TrafficRecorder()
        self.view: GatewayView | None = None
        self.set_services(services)
        self.history = TrafficHistory(
            view=lambda: self.view,
            metrics=self.metrics,
            pools=self.pools,
            breakers=self.breakers,
            recorder=self.recorder,
            clock=self.clock,
            interval=5.0,
            points=points,
            max_series=max_series,
        )

    def set_services(self, services: dict[str, int]) -> None:
        entries = {}
        for name, count in services.items():
            snapshot = ServiceSnapshot(name=name, index=1, instances=tuple(instance(name, n) for n in range(count)))
            self.pools.update(name, snapshot.instances, "round_robin")
            self.breakers.configure(name, BreakerPolicy(failure_threshold=1, recovery_timeout=60))
            entries[name] = ServiceEntry(snapshot=snapshot, routes=ServiceRoutes(service=name), policy=ServicePolicy(),
                                         chain=_never_called, lb="round_robin")  # fmt: skip
        self.view = GatewayView(table=RouteTable(), services=MappingProxyType(entries))

    def request(self, service: str, n: int, status: int, seconds: float) -> None:
        """What the request path records for one answered request through instance ``n``."""
        pool = self.pools.pool(service)
        assert pool is not None
        inst = f"node/{service}-{n}"
        pool.acquire(inst)
        pool.release(inst)
        self.metrics.observe_request(service, f"*/{service}", status, seconds)
        self.recorder.observe(service, inst, status, seconds)

    def tick(self) -> None:
        self.clock.now += 5.0
        self.history.sample()


def test_rates_errors_and_latency_per_service_and_instance() -> None:
    world = World({"users": 2})
    world.history.sample()  # baseline
    for _ in range(40):
        world.request("users", 0, 200, 0.004)
    for _ in range(10):
        world.request("users", 1, 503, 0.2)
    world.metrics.rate_limited.labels("users").inc(5)
    world.breakers.record("users", "node/users-1", ok=False)  # threshold 1: opens
    world.tick()
    data = world.history.snapshot()
    users = data["services"]["users"]
    assert data["interval"] == 5.0
    assert data["recorder"] is True
    assert len(data["t"]) == 2
    assert users["requests"] == [None, 10.0]  # 50 requests in 5 s
    assert users["errors"] == [None, 2.0]
    assert users["rate_limited"] == [None, 1.0]
    assert users["breaker_opened"] == [None, 1.0]
    assert 0.0025 < users["p50"][1] <= 0.005  # 40 of 50 fell in the (2.5 ms, 5 ms] bucket
    assert 0.1 < users["p99"][1] <= 0.25
    first, second = users["instances"]["node/users-0"], users["instances"]["node/users-1"]
    assert first["requests"] == [None, 8.0]
    assert first["errors"] == [None, 0.0]
    assert second["errors"] == [None, 2.0]
    assert second["breaker"] == [0.0, 2.0]  # closed at the baseline, open now
    assert 0.1 < second["p99"][1] <= 0.25


def test_without_the_recorder_hook_instances_still_get_request_rates() -> None:
    world = World({"users": 1})
    world.history.sample()
    pool = world.pools.pool("users")
    assert pool is not None
    for _ in range(15):
        pool.acquire("node/users-0")
        pool.release("node/users-0")
    world.tick()
    data = world.history.snapshot()
    assert data["recorder"] is False
    inst = data["services"]["users"]["instances"]["node/users-0"]
    assert inst["requests"] == [None, 3.0]
    assert inst["errors"] == [None, None]
    assert inst["p99"] == [None, None]


def test_the_ring_is_bounded_and_reads_oldest_first() -> None:
    world = World({"users": 1}, points=3)
    world.history.sample()
    for count in (5, 10, 15, 20):
        for _ in range(count):
            world.request("users", 0, 200, 0.001)
        world.tick()
    data = world.history.snapshot()
    assert data["services"]["users"]["requests"] == [2.0, 3.0, 4.0]
    assert data["t"] == sorted(data["t"])
    assert len(world.history.snapshot(points=2)["t"]) == 2


def test_series_follow_the_view_and_respect_the_cap() -> None:
    world = World({"a": 3, "b": 3, "c": 1}, max_series=5)
    world.history.sample()
    data = world.history.snapshot()
    assert sorted(data["services"]) == ["a", "b", "c"]
    assert sum(len(s["instances"]) for s in data["services"].values()) == 2  # 5 series: 3 services, 2 instances
    assert data["untracked_series"] == 5
    world.set_services({"b": 1})
    world.tick()
    data = world.history.snapshot()
    assert list(data["services"]) == ["b"]
    assert list(data["services"]["b"]["instances"]) == ["node/b-0"]
    assert data["untracked_series"] == 0


def test_snapshot_picks_named_or_busiest_services() -> None:
    world = World({f"s{i}": 1 for i in range(5)})
    world.history.sample()
    for i in range(5):
        for _ in range(i * 3):
            world.request(f"s{i}", 0, 200, 0.001)
    world.tick()
    assert sorted(world.history.snapshot(limit=2)["services"]) == ["s3", "s4"]
    assert sorted(world.history.snapshot(["s0", "nope", "s1"], limit=5)["services"]) == ["s0", "s1"]


def test_a_service_that_comes_back_starts_from_zero_not_negative() -> None:
    world = World({"users": 1})
    world.history.sample()
    for _ in range(10):
        world.request("users", 0, 200, 0.001)
    world.tick()
    world.metrics.forget_service("users")  # the service left the table: its counters start again
    for _ in range(5):
        world.request("users", 0, 200, 0.001)
    world.tick()
    assert world.history.snapshot()["services"]["users"]["requests"][-1] == 1.0


def test_recorder_ignores_requests_without_an_instance() -> None:
    recorder = TrafficRecorder()
    recorder.observe("users", None, 404, 0.001)
    assert recorder.cells == {}
    recorder.observe("users", "n/u", 200, 99.0)  # beyond the last bucket: counted in +Inf
    assert recorder.cells[("users", "n/u")][-1] == 1


@pytest.mark.parametrize(
    ("counts", "q", "expected"),
    [
        pytest.param({}, 0.5, math.nan, id="no-requests"),
        pytest.param({0: 10}, 0.5, LATENCY_BUCKETS[0] / 2, id="first-bucket-interpolated-from-zero"),
        pytest.param({3: 4}, 1.0, LATENCY_BUCKETS[3], id="top-of-bucket"),
        pytest.param({1: 50, 5: 50}, 0.5, LATENCY_BUCKETS[1], id="median-at-the-edge"),
        pytest.param({len(LATENCY_BUCKETS): 3}, 0.99, LATENCY_BUCKETS[-1], id="beyond-the-last-bound"),
    ],
)
def test_quantiles(counts: dict[int, int], q: float, expected: float) -> None:
    row = [float(counts.get(i, 0)) for i in range(len(LATENCY_BUCKETS) + 1)]
    [value] = _quantiles(row, (q,))
    assert (math.isnan(value) and math.isnan(expected)) or value == pytest.approx(expected)
