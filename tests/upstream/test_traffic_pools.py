"""Pools for traffic management: subset pools, drained instances, slow start, and the subset rendezvous."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consulgw.model.balancing import LB_ALGORITHMS
from consulgw.model.snapshot import Health, Instance, Weights
from consulgw.upstream.balancer import rendezvous_choice, slow_start_weight, stable_hash
from consulgw.upstream.pool import UpstreamPools


def inst(name: str, weight: int = 1, *, health: Health = Health.PASSING, version: str = "v1") -> Instance:
    return Instance(
        id=f"node/{name}",
        service="svc",
        service_id=name,
        node="node",
        address="10.0.0.1",
        port=8000,
        health=health,
        weights=Weights(passing=weight, warning=weight),
        meta={"version": version},
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:  # pragma: no cover - not used by the pools
        self.now += seconds


def test_subset_pools_hold_their_selection_and_share_the_service_counters() -> None:
    pools = UpstreamPools(rng=random.Random(0))
    a, b, c = inst("a"), inst("b"), inst("c", version="v2")
    pools.update("svc", [a, b, c], "round_robin", subsets={"stable": [a, b], "canary": [c], "none": []})
    stable, canary, empty = pools.subset("svc", "stable"), pools.subset("svc", "canary"), pools.subset("svc", "none")
    assert stable is not None
    assert canary is not None
    assert empty is not None
    assert [m.id for m in stable.members] == ["node/a", "node/b"]
    assert [m.id for m in canary.members] == ["node/c"]
    assert len(empty) == 0
    assert empty.pick("x") is None
    assert pools.subset("svc", "other") is None
    assert pools.subset("nope", "stable") is None
    assert {stable.pick("x").id for _ in range(4)} == {"node/a", "node/b"}  # type: ignore[union-attr]
    with canary.lease("node/c"):
        assert pools.stats("svc")["node/c"].in_flight == 1  # one set of counters per service


def test_subset_round_robin_positions_are_their_own() -> None:
    pools = UpstreamPools(rng=random.Random(0))
    members = [inst("a"), inst("b"), inst("c")]
    pools.update("svc", members, "round_robin", subsets={"ab": members[:2]})
    whole, ab = pools.pool("svc"), pools.subset("svc", "ab")
    assert whole is not None
    assert ab is not None
    seen = []
    for _ in range(6):
        seen.append(ab.pick("x").service_id)  # type: ignore[union-attr]
        whole.pick("x")  # interleaved picks of the whole pool do not disturb the subset's rotation
    assert seen == ["a", "b", "a", "b", "a", "b"]


def test_healthy_instances_at_weight_zero_are_draining_and_pinnable() -> None:
    pools = UpstreamPools(rng=random.Random(0))
    drained, critical, member = inst("d", 0), inst("x", health=Health.CRITICAL), inst("m")
    pools.update("svc", [drained, critical, member], "round_robin", subsets={"all": [drained, critical, member]})
    for pool in (pools.pool("svc"), pools.subset("svc", "all")):
        assert pool is not None
        assert [m.id for m in pool.members] == ["node/m"]
        assert [m.id for m in pool.draining] == ["node/d"]
        assert pool.pinnable("node/d") == drained
        assert pool.pinnable("node/m") == member
        assert pool.pinnable("node/x") is None  # critical: never pinned
        assert all(pool.pick(str(i)) == member for i in range(5))  # draining takes no new clients


@pytest.mark.parametrize(
    ("weight", "elapsed", "window", "expected"),
    [
        pytest.param(1, 0.0, 30.0, 10, id="starts-at-a-tenth"),
        pytest.param(1, 3.0, 30.0, 10, id="a-tenth-until-a-tenth-of-the-window"),
        pytest.param(1, 15.0, 30.0, 50, id="half-way"),
        pytest.param(1, 30.0, 30.0, 100, id="full-at-the-window"),
        pytest.param(3, 60.0, 30.0, 300, id="full-after"),
        pytest.param(2, 6.0, 30.0, 40, id="scaled-by-weight"),
        pytest.param(0, 0.0, 30.0, 0, id="weight-0-stays-0"),
    ],
)
def test_slow_start_weight(weight: int, elapsed: float, window: float, expected: int) -> None:
    assert slow_start_weight(weight, elapsed, window) == expected


def _share(pools: UpstreamPools, instance: str, picks: int = 400) -> float:
    pool = pools.pool("svc")
    assert pool is not None
    counts: Counter[str] = Counter()
    rng = random.Random(7)
    for _ in range(picks):
        chosen = pool.pick(f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}")
        assert chosen is not None
        counts[chosen.service_id] += 1
    return counts[instance] / picks


@pytest.mark.parametrize("algorithm", LB_ALGORITHMS)
def test_a_joining_instance_ramps_up_over_the_window_with_every_balancer(algorithm: str) -> None:
    clock = FakeClock()
    pools = UpstreamPools(rng=random.Random(0), clock=clock)
    pools.update("svc", [inst("a")], algorithm, slow_start=30.0)  # the first member list: nobody ramps
    pools.update("svc", [inst("a"), inst("b")], algorithm, slow_start=30.0)  # b joins now
    shares = []
    for _ in range(7):
        shares.append(_share(pools, "b"))
        clock.now += 5.0
    # 2 equal instances: b's share is f / (1 + f) with f its ramp factor: 0.09, 0.14, 0.25, 0.33, 0.40, 0.45, 0.5.
    assert shares[0] < 0.2, shares
    assert all(later >= earlier - 0.06 for earlier, later in itertools.pairwise(shares)), shares
    assert shares[-1] > 0.4, shares
    assert shares[-1] - shares[0] > 0.25, shares


def test_an_instance_back_from_critical_ramps_again_and_the_first_list_does_not() -> None:
    clock = FakeClock()
    pools = UpstreamPools(rng=random.Random(0), clock=clock)
    pools.update("svc", [inst("a"), inst("b")], "round_robin", slow_start=30.0)
    assert _share(pools, "b") == pytest.approx(0.5, abs=0.01)  # present from the start: full weight
    pools.update("svc", [inst("a"), inst("b", health=Health.CRITICAL)], "round_robin", slow_start=30.0)
    clock.now += 100
    pools.update("svc", [inst("a"), inst("b")], "round_robin", slow_start=30.0)  # back
    assert _share(pools, "b") < 0.15
    clock.now += 30
    assert _share(pools, "b") == pytest.approx(0.5, abs=0.01)


def test_without_slow_start_a_joining_instance_gets_its_share_at_once() -> None:
    pools = UpstreamPools(rng=random.Random(0), clock=FakeClock())
    pools.update("svc", [inst("a")], "round_robin")
    pools.update("svc", [inst("a"), inst("b")], "round_robin")
    assert _share(pools, "b") == pytest.approx(0.5, abs=0.01)


# -- the subset rendezvous a split uses ------------------------------------------------------------------------------


def choices(weights: dict[str, int]) -> list[tuple[str, int, int]]:
    return [(name, stable_hash(name), weight) for name, weight in weights.items()]


def test_rendezvous_choice_gives_each_name_its_share_and_never_weight_zero() -> None:
    counts = Counter(rendezvous_choice(f"client-{i}", choices({"a": 90, "b": 10, "c": 0})) for i in range(20000))
    assert counts["c"] == 0
    assert counts["b"] / 20000 == pytest.approx(0.10, abs=0.01)
    assert rendezvous_choice("x", choices({"a": 0})) is None


@settings(max_examples=50, deadline=None)
@given(
    before=st.lists(st.integers(0, 100), min_size=2, max_size=5),
    raise_by=st.integers(1, 100),
    which=st.integers(0, 4),
)
def test_raising_one_weight_moves_clients_only_to_it(before: list[int], raise_by: int, which: int) -> None:
    names = [f"s{i}" for i in range(len(before))]
    target = names[which % len(names)]
    old = dict(zip(names, before, strict=True))
    new = {**old, target: old[target] + raise_by}
    for i in range(300):
        key = f"user-{i}"
        was, now = rendezvous_choice(key, choices(old)), rendezvous_choice(key, choices(new))
        assert now in (was, target), (key, was, now)


def test_ninety_ten_to_fifty_fifty_moves_only_stable_to_canary() -> None:
    old, new = choices({"stable": 90, "canary": 10}), choices({"stable": 50, "canary": 50})
    moves = Counter((rendezvous_choice(f"u{i}", old), rendezvous_choice(f"u{i}", new)) for i in range(10000))
    assert moves[("canary", "stable")] == 0
    assert moves[("stable", "canary")] / 10000 == pytest.approx(0.40, abs=0.02)
