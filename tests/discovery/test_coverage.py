"""Coverage: which services hold a live slot, which are parked, and what the readers do next (pure, no clock)."""

from __future__ import annotations

import math

import pytest

from consulgw.discovery.coverage import Claim, Coverage, Job


def coverage(
    capacity: int = 2, *, residency: float = 10.0, idle_period: float = 100.0, burst: float = 10.0
) -> Coverage:
    return Coverage(capacity=capacity, residency=residency, idle_period=idle_period, burst_rate=burst)


def run(cov: Coverage, now: float, count: int) -> tuple[list[Job], float]:
    """The next ``count`` jobs, waiting as long as the coverage says between them; the jobs and the time after."""
    jobs: list[Job] = []
    while len(jobs) < count:
        job, wait = cov.next_job(now)
        if job is None:
            assert math.isfinite(wait)
            now += wait
            continue
        jobs.append(job)
    return jobs, now


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        pytest.param({"capacity": -1}, "capacity", id="negative-capacity"),
        pytest.param({"residency": -1.0}, "residency", id="negative-residency"),
        pytest.param({"idle_period": 0.0}, "idle_period", id="zero-idle-period"),
        pytest.param({"burst_rate": 0.0}, "burst_rate", id="zero-burst"),
    ],
)
def test_rejects_bad_parameters(bad: dict[str, float], message: str) -> None:
    options: dict[str, float] = {"capacity": 1, "residency": 1.0, "idle_period": 1.0, "burst_rate": 1.0}
    options.update(bad)
    with pytest.raises(ValueError, match=message):
        Coverage(**options)  # type: ignore[arg-type]


def test_services_take_free_slots_then_wait_for_a_reader() -> None:
    cov = coverage(capacity=2)
    for name in ("a", "b", "c"):
        cov.add(name, now=0.0)
    assert [cov.claim(n, 0.0) for n in ("a", "b", "c")] == [Claim(live=True), Claim(live=True), Claim(live=False)]
    assert cov.live == {"a", "b"}
    assert cov.parked == 1
    cov.need_read("c")
    cov.need_read("a")  # live: its watch reads it, never a reader
    assert cov.next_job(0.0) == (Job(kind="read", name="c"), 0.0)
    assert cov.next_job(0.0) == (None, math.inf)  # c is not read yet: nothing to probe


@pytest.mark.parametrize(
    ("quiet_for", "claimer_active", "evicts"),
    [
        pytest.param(10.0, 10.0, "a", id="quiet-long-enough-and-claimer-newer"),
        pytest.param(9.9, 9.9, None, id="quiet-for-less-than-residency"),
        pytest.param(10.0, 0.0, None, id="claimer-no-more-active-than-the-quietest"),
    ],
)
def test_a_slot_changes_hands_only_after_residency(quiet_for: float, claimer_active: float, evicts: str | None) -> None:
    cov = coverage(capacity=2, residency=10.0)
    cov.add("a", now=0.0)
    cov.add("b", now=0.0)
    cov.add("c", now=0.0)
    cov.claim("a", 0.0)
    cov.claim("b", 0.0)
    cov.touch("b", quiet_for)  # b is busy; a has been quiet since 0
    cov.touch("c", claimer_active)
    claim = cov.claim("c", quiet_for)
    assert claim == (Claim(live=True, evicted=evicts) if evicts else Claim(live=False))
    assert ("c" in cov.live) is (evicts is not None)


def test_zero_capacity_parks_everything() -> None:
    cov = coverage(capacity=0)
    cov.add("a", 0.0)
    assert cov.claim("a", 0.0) == Claim(live=False)
    assert cov.parked == 1


def test_probes_cycle_over_read_parked_services_at_the_idle_pace() -> None:
    cov = coverage(capacity=0, idle_period=10.0)
    for name in ("a", "b"):
        cov.add(name, 0.0)
        cov.mark_read(name)
    first, wait = cov.next_job(0.0)
    assert first is not None
    assert first.kind == "probe"
    assert wait == 0.0
    job, wait = cov.next_job(0.0)
    assert job is None
    assert wait == pytest.approx(5.0)
    second, _ = cov.next_job(5.0)
    third, _ = cov.next_job(10.0)
    assert second is not None
    assert third is not None
    assert {first.name, second.name} == {"a", "b"}
    assert third.name == first.name  # the cycle starts over


def test_a_boost_probes_every_parked_service_at_the_burst_rate_recent_first() -> None:
    cov = coverage(capacity=0, idle_period=100.0, burst=100.0)
    for t, name in enumerate(("old", "mid", "new")):
        cov.add(name, float(t))
        cov.mark_read(name)
    cov.next_job(0.0)  # an idle probe: the next one would be 33 s away
    cov.boost(3.0)
    assert cov.boosting
    jobs, now = run(cov, 3.0, 3)
    assert [j.name for j in jobs] == ["new", "mid", "old"]
    assert now - 3.0 < 0.05  # three probes at 100/s
    assert not cov.boosting  # one cycle, then the idle pace again
    _job, wait = cov.next_job(now)
    assert wait > 1.0


def test_a_boost_during_a_boost_runs_one_more_cycle_and_end_boost_stops_it() -> None:
    cov = coverage(capacity=0, burst=1000.0)
    for name in ("a", "b"):
        cov.add(name, 0.0)
        cov.mark_read(name)
    cov.boost(0.0)
    cov.boost(0.0)  # a second unexplained change mid-cycle: maybe in a service this cycle has probed already
    _jobs, now = run(cov, 0.0, 3)
    assert now < 0.01  # the first cycle and the start of the second, at the burst rate
    assert cov.boosting
    cov.end_boost()
    assert not cov.boosting


def test_reads_come_before_probes_and_removal_forgets_everything() -> None:
    cov = coverage(capacity=0)
    for name in ("a", "b"):
        cov.add(name, 0.0)
        cov.mark_read(name)
    cov.need_read("b")
    assert cov.next_job(0.0)[0] == Job(kind="read", name="b")
    cov.remove("a")
    cov.remove("b")
    assert len(cov) == 0
    assert cov.next_job(100.0) == (None, math.inf)


def test_a_claim_that_may_not_evict_takes_only_a_free_slot() -> None:
    cov = coverage(capacity=1, residency=0.0)
    for name in ("a", "b"):
        cov.add(name, 0.0)
    assert cov.claim("a", 0.0) == Claim(live=True)
    cov.touch("b", 5.0)
    assert cov.claim("b", 5.0, evict=False) == Claim(live=False)  # a has been quiet, but the slot is taken
    assert cov.claim("b", 5.0) == Claim(live=True, evicted="a")
