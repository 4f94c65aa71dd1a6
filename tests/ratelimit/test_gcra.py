"""GCRA arithmetic and the local store, with a manual clock."""

from __future__ import annotations

import pytest

from consulgw.ratelimit.gcra import Decision, Quota
from consulgw.ratelimit.local import LocalLimiter
from tests.ratelimit.support import FakeClock


@pytest.mark.parametrize(
    ("requests", "per", "burst", "capacity", "interval_us"),
    [
        pytest.param(10, 1.0, 0, 10, 100_000, id="10-per-second"),
        pytest.param(3, 1.0, 0, 3, 333_333, id="interval-rounded-to-a-microsecond"),
        pytest.param(100, 60.0, 20, 120, 600_000, id="burst-adds-capacity"),
        pytest.param(1, 3600.0, 0, 1, 3_600_000_000, id="one-per-hour"),
        pytest.param(10_000_000, 1.0, 0, 10_000_000, 1, id="clamped-to-1us"),
    ],
)
def test_quota_of(requests: int, per: float, burst: int, capacity: int, interval_us: int) -> None:
    quota = Quota.of(requests=requests, per=per, burst=burst)
    assert (quota.capacity, quota.interval_us) == (capacity, interval_us)


# (seconds to advance before the request, expected (allowed, remaining, reset, retry_after))
SCENARIOS = [
    pytest.param(
        Quota.of(requests=3, per=1.0),
        [(0, (True, 2, 1, 0)), (0, (True, 1, 1, 0)), (0, (True, 0, 1, 1)), (0, (False, 0, 1, 1))],
        id="three-at-once-then-reject",
    ),
    pytest.param(
        Quota.of(requests=3, per=3.0),
        [
            (0, (True, 2, 1, 0)),
            (0, (True, 1, 2, 0)),
            (0, (True, 0, 3, 1)),
            (0.5, (False, 0, 3, 1)),
            (0.5, (True, 0, 3, 1)),
        ],
        id="one-refills-after-the-interval",
    ),
    pytest.param(
        Quota.of(requests=2, per=10.0, burst=1),
        [
            (0, (True, 2, 5, 0)),
            (0, (True, 1, 10, 0)),
            (0, (True, 0, 15, 5)),
            (0, (False, 0, 15, 5)),
            (15, (True, 2, 5, 0)),
        ],
        id="burst-then-full-again-after-reset",
    ),
    pytest.param(
        Quota.of(requests=1, per=2.0),
        [(0, (True, 0, 2, 2)), (1.999, (False, 0, 1, 1)), (0.001, (True, 0, 2, 2))],
        id="boundary-is-inclusive",
    ),
]


@pytest.mark.parametrize(("quota", "steps"), SCENARIOS)
def test_local_decisions(quota: Quota, steps: list[tuple[float, tuple[bool, int, int, int]]]) -> None:
    clock = FakeClock()
    limiter = LocalLimiter(clock=clock)
    for advance, expected in steps:
        clock.advance(advance)
        d = limiter.acquire("k", quota)
        assert (d.allowed, d.remaining, d.reset, d.retry_after) == expected


@pytest.mark.parametrize(
    ("n", "extra"), [pytest.param(1, 5, id="1"), pytest.param(10, 3, id="10"), pytest.param(250, 50, id="250")]
)
def test_exactly_n_of_n_plus_k(n: int, extra: int) -> None:
    limiter = LocalLimiter(clock=FakeClock())
    quota = Quota.of(requests=n, per=60.0)
    decisions = [limiter.acquire("k", quota) for _ in range(n + extra)]
    assert sum(d.allowed for d in decisions) == n
    assert all(d.allowed for d in decisions[:n])
    remaining = [d.remaining for d in decisions[:n]]
    assert remaining == list(range(n - 1, -1, -1))  # strictly decreasing to zero
    assert all(0 <= d.reset <= 60 for d in decisions)
    assert all(d.retry_after >= 1 for d in decisions[n:])


def test_keys_are_independent() -> None:
    limiter = LocalLimiter(clock=FakeClock())
    quota = Quota.of(requests=1, per=60.0)
    assert limiter.acquire("a", quota).allowed
    assert not limiter.acquire("a", quota).allowed
    assert limiter.acquire("b", quota).allowed


def test_idle_keys_are_forgotten_and_count_is_capped() -> None:
    clock = FakeClock()
    limiter = LocalLimiter(clock=clock, max_keys=100)
    quota = Quota.of(requests=5, per=1.0)
    for i in range(100):
        limiter.acquire(f"k{i}", quota)
    assert len(limiter) == 100
    limiter.acquire("one-more", quota)  # cap reached: the oldest key is evicted
    assert len(limiter) == 100
    clock.advance(2.0)  # every key is full again, i.e. carries no state
    for _ in range(60):
        limiter.acquire("fresh", quota)
        clock.advance(0.0)
    assert len(limiter) < 100


@pytest.mark.parametrize(
    ("capacity", "count", "shares"),
    [
        pytest.param(10, 1, [10], id="one-worker"),
        pytest.param(10, 3, [4, 3, 3], id="split-adds-up"),
        pytest.param(2, 4, [1, 1, 1, 1], id="never-below-one"),
    ],
)
def test_worker_shares(capacity: int, count: int, shares: list[int]) -> None:
    quota = Quota(capacity=capacity, interval_us=1000)
    parts = [quota.for_worker(i, count) for i in range(count)]
    assert [p.capacity for p in parts] == shares
    assert all(p.interval_us == 1000 * count for p in parts)


def test_workers_together_admit_the_limit() -> None:
    clock = FakeClock()
    quota = Quota.of(requests=10, per=10.0)
    workers = [LocalLimiter(clock=clock) for _ in range(3)]
    admitted = sum(w.acquire("k", quota.for_worker(i, 3)).allowed for i, w in enumerate(workers) for _ in range(20))
    assert admitted == 10
    clock.advance(10.0)  # one period later: each worker refilled at a third of the rate, never more than the whole
    admitted = sum(w.acquire("k", quota.for_worker(i, 3)).allowed for i, w in enumerate(workers) for _ in range(20))
    assert 9 <= admitted <= 10  # worker 0's share of 4 takes 12 s to refill at one per 3 s
    clock.advance(12.0)  # every share full again
    admitted = sum(w.acquire("k", quota.for_worker(i, 3)).allowed for i, w in enumerate(workers) for _ in range(20))
    assert admitted == 10


def test_headers() -> None:
    allowed = Decision(allowed=True, limit=5, remaining=4, reset=1, retry_after=0)
    assert dict(allowed.headers()) == {"RateLimit-Limit": "5", "RateLimit-Remaining": "4", "RateLimit-Reset": "1"}
    rejected = Decision(allowed=False, limit=5, remaining=0, reset=3, retry_after=2)
    assert dict(rejected.headers())["Retry-After"] == "2"
