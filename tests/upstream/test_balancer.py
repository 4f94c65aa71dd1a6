"""Balancing strategies as pure functions: smooth WRR, weighted least-conn, weighted rendezvous hashing."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consulgw.model.snapshot import Instance, Weights
from consulgw.upstream.balancer import Rendezvous, least_conn_pick, smooth_weighted_pick, stable_hash


def inst(name: str, weight: int = 1) -> Instance:
    return Instance(
        id=f"node/{name}",
        service="svc",
        service_id=name,
        node="node",
        address="10.0.0.1",
        port=8000,
        weights=Weights(passing=weight, warning=weight),
    )


def names(picks: list[Instance | None]) -> str:
    return "".join(p.service_id if p else "-" for p in picks)


# --- smooth weighted round-robin -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weights", "pattern"),
    [
        pytest.param({"a": 5, "b": 1, "c": 1}, "aabacaa", id="nginx-5-1-1"),
        pytest.param({"a": 1, "b": 1, "c": 1}, "abc", id="equal"),
        pytest.param({"a": 1, "b": 3}, "babb", id="1-3"),
        pytest.param({"a": 2, "b": 1}, "aba", id="2-1"),
        pytest.param({"a": 1}, "a", id="single"),
    ],
)
def test_smooth_wrr_pattern(weights: dict[str, int], pattern: str) -> None:
    members = [inst(n, w) for n, w in weights.items()]
    current: dict[str, int] = {}
    picks = [smooth_weighted_pick(members, current) for _ in range(len(pattern) * 3)]
    assert names(picks) == pattern * 3


def test_smooth_wrr_1_3_exact_and_interleaved_over_4000() -> None:
    members = [inst("a", 1), inst("b", 3)]
    current: dict[str, int] = {}
    picks = names([smooth_weighted_pick(members, current) for _ in range(4000)])
    assert Counter(picks) == {"a": 1000, "b": 3000}
    windows = [picks[i : i + 4] for i in range(0, 4000, 4)]
    assert all(w.count("a") == 1 for w in windows)  # never a burst
    assert "bbbb" not in picks


def test_smooth_wrr_empty() -> None:
    assert smooth_weighted_pick([], {}) is None


def test_smooth_wrr_available_is_lazy_and_skips() -> None:
    members = [inst("a", 5), inst("b", 1), inst("c", 1)]
    asked: list[str] = []

    def available(member: Instance) -> bool:
        asked.append(member.service_id)
        return member.service_id != "a"

    current: dict[str, int] = {}
    picks = names([smooth_weighted_pick(members, current, available=available) for _ in range(4)])
    assert picks == "bcbc"
    assert asked[:2] == ["a", "b"]  # best first; "c" was not asked on the first pick
    assert "node/a" not in current  # a rejected member takes no part in the step: no weight piles up


def test_smooth_wrr_all_unavailable_changes_nothing() -> None:
    members = [inst("a"), inst("b")]
    current = {"node/a": 1, "node/b": -1}
    assert smooth_weighted_pick(members, current, available=lambda _m: False) is None
    assert current == {"node/a": 1, "node/b": -1}


def test_smooth_wrr_with_available_true_matches_fast_path() -> None:
    members = [inst("a", 5), inst("b", 2), inst("c", 3)]
    fast: dict[str, int] = {}
    lazy: dict[str, int] = {}
    for _ in range(50):
        assert smooth_weighted_pick(members, fast) == smooth_weighted_pick(members, lazy, available=lambda _m: True)
    assert fast == lazy


# --- weighted least connections -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weights", "in_flight", "expected"),
    [
        pytest.param({"a": 1, "b": 1}, {"node/a": 3, "node/b": 1}, "b", id="less-loaded"),
        pytest.param({"a": 1, "b": 3}, {"node/a": 2, "node/b": 5}, "b", id="weight-scales-load"),
        pytest.param({"a": 1, "b": 3}, {"node/a": 1, "node/b": 4}, "a", id="heavier-but-full"),
        pytest.param({"a": 2, "b": 1}, {"node/a": 1}, "b", id="missing-counts-as-zero"),
    ],
)
def test_least_conn_prefers_least_loaded(weights: dict[str, int], in_flight: dict[str, int], expected: str) -> None:
    members = [inst(n, w) for n, w in weights.items()]
    picked = least_conn_pick(members, in_flight, random.Random(0))
    assert picked is not None
    assert picked.service_id == expected


def test_least_conn_ties_are_weighted_random() -> None:
    members = [inst("a", 1), inst("b", 3)]
    rng = random.Random(42)
    counts = Counter(names([least_conn_pick(members, {}, rng) for _ in range(4000)]))
    assert 850 < counts["a"] < 1150  # expectation 1000 (binomial sd ~27)


def test_least_conn_held_connections_follow_weights() -> None:
    members = [inst("a", 1), inst("b", 3)]
    in_flight: Counter[str] = Counter()
    rng = random.Random(1)
    for _ in range(400):
        picked = least_conn_pick(members, in_flight, rng)
        assert picked is not None
        in_flight[picked.id] += 1
    assert abs(in_flight["node/a"] - 100) <= 1
    assert abs(in_flight["node/b"] - 300) <= 1


def test_least_conn_available_falls_to_next() -> None:
    members = [inst("a"), inst("b"), inst("c")]
    picked = least_conn_pick(
        members, {"node/b": 5, "node/c": 1}, random.Random(0), available=lambda m: m.id != "node/a"
    )
    assert picked is not None
    assert picked.service_id == "c"
    assert least_conn_pick(members, {}, random.Random(0), available=lambda _m: False) is None
    assert least_conn_pick([], {}, random.Random(0)) is None


def test_least_conn_is_reproducible_with_a_seeded_rng() -> None:
    members = [inst(n) for n in "abcd"]
    first = names([least_conn_pick(members, {}, random.Random(7)) for _ in range(20)])
    second = names([least_conn_pick(members, {}, random.Random(7)) for _ in range(20)])
    assert first == second


# --- weighted rendezvous hashing (ip_hash) --------------------------------------------------------------------------

KEYS = [f"10.{i // 250}.{i % 250}.7" for i in range(5000)]


def assignment(ring: Rendezvous) -> dict[str, str]:
    result = {}
    for key in KEYS:
        picked = ring.pick(key)
        assert picked is not None
        result[key] = picked.service_id
    return result


def test_stable_hash_is_stable_across_processes() -> None:
    assert stable_hash("10.0.0.1") == 0x538EF646E14D03E6


def test_rendezvous_is_stable_and_order_independent() -> None:
    members = [inst(n) for n in "abcde"]
    assert assignment(Rendezvous.build(members)) == assignment(Rendezvous.build(list(reversed(members))))


def test_rendezvous_removal_moves_only_the_removed_members_keys() -> None:
    members = [inst(n) for n in "abcde"]
    before = assignment(Rendezvous.build(members))
    after = assignment(Rendezvous.build([m for m in members if m.service_id != "c"]))
    moved = {k for k in KEYS if before[k] != after[k]}
    assert moved == {k for k in KEYS if before[k] == "c"}


def test_rendezvous_addition_moves_about_one_nth_and_only_to_the_new_member() -> None:
    members = [inst(n) for n in "abcd"]
    before = assignment(Rendezvous.build(members))
    after = assignment(Rendezvous.build([*members, inst("e")]))
    moved = [k for k in KEYS if before[k] != after[k]]
    assert all(after[k] == "e" for k in moved)
    assert 0.16 < len(moved) / len(KEYS) < 0.24  # expectation 1/5


def test_rendezvous_respects_weights() -> None:
    counts = Counter(assignment(Rendezvous.build([inst("a", 1), inst("b", 3)])).values())
    assert 0.22 < counts["a"] / len(KEYS) < 0.28  # expectation 1/4


def test_rendezvous_exclude_and_available_walk_the_keys_own_ranking() -> None:
    ring = Rendezvous.build([inst(n) for n in "abcde"])
    ranking = ring.ranked("192.0.2.1")
    assert sorted(m.service_id for m in ranking) == list("abcde")
    assert ring.pick("192.0.2.1") == ranking[0]
    assert ring.pick("192.0.2.1", exclude=frozenset({ranking[0].id})) == ranking[1]
    asked: list[Instance] = []

    def available(member: Instance) -> bool:
        asked.append(member)
        return member not in ranking[:2]

    assert ring.pick("192.0.2.1", available=available) == ranking[2]
    assert asked == ranking[:3]
    assert ring.pick("192.0.2.1", available=lambda _m: False) is None
    assert Rendezvous.build([]).pick("x") is None


@given(
    member_count=st.integers(min_value=2, max_value=8),
    removed=st.integers(min_value=0, max_value=7),
    weights=st.lists(st.integers(min_value=1, max_value=5), min_size=8, max_size=8),
    keys=st.lists(st.text(min_size=1, max_size=15), min_size=1, max_size=40, unique=True),
)
def test_rendezvous_removal_property(member_count: int, removed: int, weights: list[int], keys: list[str]) -> None:
    members = [inst(f"m{i}", weights[i]) for i in range(member_count)]
    gone = members[removed % member_count]
    full = Rendezvous.build(members)
    rest = Rendezvous.build([m for m in members if m is not gone])
    for key in keys:
        before, after = full.pick(key), rest.pick(key)
        assert after is not None
        if before is not gone:
            assert after == before
        else:
            assert after == full.ranked(key)[1]  # its keys go to their own second choice


@given(
    member_count=st.integers(min_value=1, max_value=7),
    weights=st.lists(st.integers(min_value=1, max_value=5), min_size=8, max_size=8),
    keys=st.lists(st.text(min_size=1, max_size=15), min_size=1, max_size=40, unique=True),
)
def test_rendezvous_addition_property(member_count: int, weights: list[int], keys: list[str]) -> None:
    members = [inst(f"m{i}", weights[i]) for i in range(member_count)]
    newcomer = inst("new", weights[7])
    before = Rendezvous.build(members)
    after = Rendezvous.build([*members, newcomer])
    for key in keys:
        old, new = before.pick(key), after.pick(key)
        assert new in (old, newcomer)  # a key either stays or moves to the newcomer, never elsewhere


@given(weights=st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=6), cycles=st.integers(1, 3))
def test_smooth_wrr_every_cycle_is_exact(weights: list[int], cycles: int) -> None:
    members = [inst(f"m{i}", w) for i, w in enumerate(weights)]
    current: dict[str, int] = {}
    total = sum(weights)
    for _ in range(cycles):
        cycle = Counter(getattr(smooth_weighted_pick(members, current), "id", None) for _ in range(total))
        assert cycle == {m.id: m.weight for m in members}
    assert all(v == 0 for v in current.values())  # back to the start after whole cycles
