"""UpstreamPools: membership from health and weights, counters that survive updates, draining, exclude/available."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from consulgw.errors import ConfigError
from consulgw.model.balancing import LB_ALGORITHMS
from consulgw.model.snapshot import Health, Instance, Weights
from consulgw.policy.parse import parse_policy
from consulgw.routing import parse_service_routes
from consulgw.upstream.pool import InstanceStats, UpstreamPools


def inst(name: str, weight: int = 1, *, health: Health = Health.PASSING, warning: int = 1) -> Instance:
    return Instance(
        id=f"node/{name}",
        service="svc",
        service_id=name,
        node="node",
        address="10.0.0.1",
        port=8000,
        health=health,
        weights=Weights(passing=weight, warning=warning),
    )


def pools_with(instances: list[Instance], algorithm: str = "round_robin") -> UpstreamPools:
    pools = UpstreamPools(rng=random.Random(0))
    pools.update("svc", instances, algorithm)
    return pools


def picks(pools: UpstreamPools, count: int, **kwargs: object) -> str:
    pool = pools.pool("svc")
    assert pool is not None
    out = []
    for i in range(count):
        picked = pool.pick(f"10.0.0.{i}", **kwargs)  # type: ignore[arg-type]
        out.append(picked.service_id if picked else "-")
    return "".join(out)


@pytest.mark.parametrize("algorithm", LB_ALGORITHMS)
def test_every_balancer_name_is_accepted_by_tags_policies_and_pools(algorithm: str) -> None:
    """One list of names (consulgw.model.balancing); the tag grammar, the KV schema and the pools all take it."""
    assert parse_service_routes("svc", ["gw.route=/", f"gw.lb={algorithm}"]).lb == algorithm
    assert parse_policy({"lb": algorithm}, key="test").lb == algorithm
    pools = UpstreamPools(rng=random.Random(0))
    pools.update("svc", [], algorithm)
    assert pools.pool("svc") is not None


def test_the_policy_schema_lists_the_same_balancers() -> None:
    schema = json.loads((Path(__file__).parents[2] / "consulgw" / "policy" / "schema.json").read_text())
    lb = schema["$defs"]["policy"]["properties"]["lb"]
    assert tuple(v for v in lb["then"]["enum"] if v is not None) == LB_ALGORITHMS  # the string form
    assert tuple(lb["properties"]["type"]["enum"]) == (*LB_ALGORITHMS, "hash")  # the object form


@pytest.mark.parametrize(
    ("instance", "member"),
    [
        pytest.param(inst("a"), True, id="passing"),
        pytest.param(inst("a", 0), False, id="passing-weight-0"),
        pytest.param(inst("a", health=Health.WARNING), True, id="warning-weight-1"),
        pytest.param(inst("a", health=Health.WARNING, warning=0), False, id="warning-weight-0"),
        pytest.param(inst("a", health=Health.CRITICAL), False, id="critical"),
        pytest.param(inst("a", health=Health.MAINTENANCE), False, id="maintenance"),
    ],
)
@pytest.mark.parametrize("algorithm", LB_ALGORITHMS)
def test_membership_follows_effective_weight(instance: Instance, member: bool, algorithm: str) -> None:
    pools = pools_with([instance, inst("b")], algorithm)
    pool = pools.pool("svc")
    assert pool is not None
    assert (instance in pool.members) is member
    assert ("a" in picks(pools, 20)) is member


def test_warning_uses_its_own_weight() -> None:
    pools = pools_with([inst("a", 3, health=Health.WARNING, warning=1), inst("b", 1)])
    assert Counter(picks(pools, 400)) == {"a": 200, "b": 200}


@pytest.mark.parametrize("algorithm", LB_ALGORITHMS)
def test_empty_pool_picks_none(algorithm: str) -> None:
    pools = pools_with([inst("a", health=Health.CRITICAL)], algorithm)
    pool = pools.pool("svc")
    assert pool is not None
    assert len(pool) == 0
    assert pool.pick("10.0.0.1") is None
    assert UpstreamPools(rng=random.Random(0)).pool("svc") is None


@pytest.mark.parametrize("algorithm", LB_ALGORITHMS)
def test_exclude_and_available_are_honoured(algorithm: str) -> None:
    pools = pools_with([inst("a"), inst("b"), inst("c")], algorithm)
    assert set(picks(pools, 30, exclude=frozenset({"node/a", "node/b"}))) == {"c"}
    assert set(picks(pools, 30, available=lambda m: m.service_id == "b")) == {"b"}
    assert picks(pools, 3, exclude=frozenset({"node/a"}), available=lambda m: m.service_id == "a") == "---"


@pytest.mark.parametrize("algorithm", LB_ALGORITHMS)
def test_available_is_asked_only_until_one_accepts(algorithm: str) -> None:
    pools = pools_with([inst(n) for n in "abcdef"], algorithm)
    pool = pools.pool("svc")
    assert pool is not None
    asked: list[str] = []

    def available(member: Instance) -> bool:
        asked.append(member.id)
        return len(asked) == 2  # reject the best, accept the second best

    picked = pool.pick("10.0.0.1", available=available)
    assert picked is not None
    assert len(asked) == 2
    assert picked.id == asked[1]


def test_round_robin_weights_1_3() -> None:
    result = picks(pools_with([inst("a", 1), inst("b", 3)]), 4000)
    assert Counter(result) == {"a": 1000, "b": 3000}
    assert all(result[i : i + 4].count("a") == 1 for i in range(0, 4000, 4))


def test_round_robin_state_survives_update() -> None:
    members = [inst("a", 5), inst("b"), inst("c")]
    pools = pools_with(members)
    first = picks(pools, 3)
    pools.update("svc", list(reversed(members)), "round_robin")  # same members, new snapshot
    assert first + picks(pools, 4) == "aabacaa"


def test_least_conn_prefers_less_loaded_and_respects_weights() -> None:
    pools = pools_with([inst("a", 1), inst("b", 3)], "least_conn")
    pool = pools.pool("svc")
    assert pool is not None
    held = Counter()
    for _ in range(400):  # never released: in-flight keeps growing
        picked = pool.pick("")
        assert picked is not None
        pool.acquire(picked.id)
        held[picked.service_id] += 1
    assert abs(held["a"] - 100) <= 1
    stats = pool.stats()
    assert stats["node/a"].in_flight == held["a"]
    for _ in range(held["b"]):
        pool.release("node/b")
    assert pool.pick("") == inst("b", 3)  # b is now idle


def test_ip_hash_sticks_and_moves_minimally() -> None:
    members = [inst(n) for n in "abcde"]
    pools = pools_with(members, "ip_hash")
    clients = [f"198.51.100.{i}" for i in range(250)]

    def assignment() -> dict[str, str]:
        pool = pools.pool("svc")
        assert pool is not None
        return {c: pool.pick(c).service_id for c in clients}  # type: ignore[union-attr]

    before = assignment()
    assert assignment() == before
    pools.update("svc", [m for m in members if m.service_id != "d"], "ip_hash")
    after = assignment()
    assert {c for c in clients if before[c] != after[c]} == {c for c in clients if before[c] == "d"}


def test_counters_survive_update_for_staying_instances() -> None:
    pools = pools_with([inst("a"), inst("b")])
    pool = pools.pool("svc")
    assert pool is not None
    pool.acquire("node/a")
    pool.acquire("node/a")
    pool.release("node/a")
    pools.update("svc", [inst("a", 2), inst("c")], "least_conn")
    new = pools.pool("svc")
    assert new is not None
    assert new is not pool
    assert new.algorithm == "least_conn"
    assert pools.stats("svc")["node/a"] == InstanceStats(instance_id="node/a", in_flight=1, requests=2, member=True)
    assert "node/b" not in pools.stats("svc")  # left with nothing in flight: dropped at once


def test_departed_instance_drains_then_is_dropped() -> None:
    pools = pools_with([inst("a"), inst("b")])
    old = pools.pool("svc")
    assert old is not None
    old.acquire("node/a")
    pools.update("svc", [inst("b")], "round_robin")
    assert pools.stats("svc")["node/a"] == InstanceStats(instance_id="node/a", in_flight=1, requests=1, member=False)
    assert set(picks(pools, 10)) == {"b"}
    old.release("node/a")  # released through the pool it was picked from
    assert "node/a" not in pools.stats("svc")


def test_returning_instance_keeps_its_counters_while_draining() -> None:
    pools = pools_with([inst("a")])
    pool = pools.pool("svc")
    assert pool is not None
    pool.acquire("node/a")
    pools.update("svc", [inst("a", health=Health.CRITICAL)], "round_robin")
    pools.update("svc", [inst("a")], "round_robin")
    assert pools.stats("svc")["node/a"].in_flight == 1
    pool.release("node/a")
    assert pools.stats("svc")["node/a"] == InstanceStats(instance_id="node/a", in_flight=0, requests=1, member=True)


def test_remove_service() -> None:
    pools = pools_with([inst("a")])
    pool = pools.pool("svc")
    assert pool is not None
    with pool.lease("node/a"):
        pools.remove("svc")
        assert pools.pool("svc") is None
        assert pools.services() == frozenset()
        assert pools.stats("svc")["node/a"].member is False
    assert pools.stats("svc") == {}
    pools.remove("svc")  # idempotent
    pools.remove("never-seen")


def test_service_back_before_drained_reuses_counters() -> None:
    pools = pools_with([inst("a")])
    pool = pools.pool("svc")
    assert pool is not None
    pool.acquire("node/a")
    pools.remove("svc")
    pools.update("svc", [inst("a")], "least_conn")
    assert pools.stats("svc")["node/a"].in_flight == 1
    pool.release("node/a")
    assert pools.stats("svc")["node/a"].in_flight == 0


def test_release_never_goes_negative() -> None:
    pools = pools_with([inst("a")])
    pool = pools.pool("svc")
    assert pool is not None
    pool.release("node/a")
    pool.release("node/unknown")
    pool.acquire("node/a")
    pool.release("node/a")
    pool.release("node/a")
    assert pools.stats("svc")["node/a"].in_flight == 0


def test_lease_releases_on_error() -> None:
    pools = pools_with([inst("a")])
    pool = pools.pool("svc")
    assert pool is not None
    seen: list[int] = []

    def handle() -> None:
        with pool.lease("node/a"):
            seen.append(pool.stats()["node/a"].in_flight)
            raise RuntimeError("upstream failed")

    with pytest.raises(RuntimeError):
        handle()
    assert seen == [1]
    assert pool.stats()["node/a"] == InstanceStats(instance_id="node/a", in_flight=0, requests=1, member=True)


def test_unknown_algorithm_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'fastest'"):
        pools_with([inst("a")], "fastest")


def test_stats_list_every_member() -> None:
    pools = pools_with([inst("a"), inst("b")])
    assert pools.stats("svc") == {
        "node/a": InstanceStats(instance_id="node/a", in_flight=0, requests=0, member=True),
        "node/b": InstanceStats(instance_id="node/b", in_flight=0, requests=0, member=True),
    }
    assert pools.stats("unknown") == {}


def test_duplicate_instance_ids_count_once() -> None:
    pools = pools_with([inst("a", 3), inst("a", 1), inst("b")])
    pool = pools.pool("svc")
    assert pool is not None
    assert [m.weight for m in pool.members] == [3, 1]
