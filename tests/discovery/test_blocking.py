"""Pure blocking-query state: index rules, backoff with jitter, token bucket on an injected clock."""

from __future__ import annotations

import random

import pytest

from consulgw.discovery.blocking import Backoff, BlockingIndex, TokenBucket
from consulgw.discovery.consul_api import format_wait, read_timeout


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_700_000_000.0 + self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


# Each step: ("ok", returned index) or ("fail", None); expected: (index sent next, reset reported).
@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        pytest.param([("ok", 15)], [(15, False)], id="first-response"),
        pytest.param([("ok", 15), ("ok", 20), ("ok", 20)], [(15, False), (20, False), (20, False)], id="advance"),
        pytest.param([("ok", 0)], [(1, False)], id="zero-treated-as-one"),
        pytest.param([("ok", 15), ("ok", 0)], [(15, False), (0, True)], id="zero-after-15-is-backwards"),
        pytest.param([("ok", 50), ("ok", 12)], [(50, False), (0, True)], id="backwards-resets-to-zero"),
        pytest.param(
            [("ok", 50), ("ok", 12), ("ok", 12), ("ok", 13)],
            [(50, False), (0, True), (12, False), (13, False)],
            id="after-reset-blocks-on-new-index",
        ),
        pytest.param([("ok", 50), ("fail", None)], [(50, False), (0, False)], id="failure-rereads-non-blocking"),
        pytest.param(
            [("ok", 50), ("fail", None), ("ok", 7)],
            [(50, False), (0, False), (7, True)],
            id="restart-seen-after-failure-no-extra-reread",
        ),
        pytest.param(
            [("ok", 50), ("fail", None), ("ok", 50)],
            [(50, False), (0, False), (50, False)],
            id="blip-same-index",
        ),
        pytest.param([("fail", None), ("ok", 3)], [(0, False), (3, False)], id="failure-before-first"),
    ],
)
def test_blocking_index(steps: list[tuple[str, int | None]], expected: list[tuple[int, bool]]) -> None:
    state = BlockingIndex()
    assert state.index == 0
    got: list[tuple[int, bool]] = []
    for kind, returned in steps:
        if kind == "ok":
            assert returned is not None
            step = state.advance(returned)
            assert step.index == state.index
            got.append((state.index, step.reset))
        else:
            state.fail()
            got.append((state.index, False))
    assert got == expected


def test_index_step_reports_previous_and_returned() -> None:
    state = BlockingIndex()
    state.advance(40)
    step = state.advance(9)
    assert (step.previous, step.returned, step.reset, state.last) == (40, 9, True, 9)


@pytest.mark.parametrize(
    ("failures", "low", "high"),
    [
        pytest.param(1, 0.25, 0.5, id="first"),
        pytest.param(2, 0.5, 1.0, id="second"),
        pytest.param(4, 2.0, 4.0, id="fourth"),
        pytest.param(7, 15.0, 30.0, id="capped"),
        pytest.param(200, 15.0, 30.0, id="no-overflow"),
    ],
)
def test_backoff_bounds(failures: int, low: float, high: float) -> None:
    for seed in range(50):
        backoff = Backoff(random.Random(seed), base=0.5, cap=30.0)
        delays = [backoff.failure() for _ in range(failures)]
        assert low <= delays[-1] <= high
        assert backoff.failures == failures


def test_backoff_jitter_varies_and_is_reproducible() -> None:
    first = [Backoff(random.Random(seed)).failure() for seed in range(20)]
    again = [Backoff(random.Random(seed)).failure() for seed in range(20)]
    assert first == again
    assert len(set(first)) > 10


def test_backoff_success_resets() -> None:
    backoff = Backoff(random.Random(1), base=1.0, cap=30.0)
    for _ in range(6):
        backoff.failure()
    backoff.success()
    assert backoff.failures == 0
    assert backoff.failure() <= 1.0


@pytest.mark.parametrize(
    ("base", "cap"), [pytest.param(0.0, 1.0, id="zero-base"), pytest.param(2.0, 1.0, id="cap-below-base")]
)
def test_backoff_rejects_bad_bounds(base: float, cap: float) -> None:
    with pytest.raises(ValueError):
        Backoff(random.Random(1), base=base, cap=cap)


# Each step: seconds to advance the clock before a reserve(); expected: the delay reserve() returns.
@pytest.mark.parametrize(
    ("rate", "burst", "advances", "delays"),
    [
        pytest.param(1.0, 2, [0, 0], [0.0, 0.0], id="burst-of-two-free"),
        pytest.param(1.0, 2, [0, 0, 0], [0.0, 0.0, 1.0], id="third-waits-one-token"),
        pytest.param(1.0, 2, [0, 0, 0, 0], [0.0, 0.0, 1.0, 2.0], id="reservations-queue"),
        pytest.param(1.0, 2, [0, 0, 0.5], [0.0, 0.0, 0.5], id="partial-refill"),
        pytest.param(1.0, 2, [0, 0, 10, 0, 0], [0.0, 0.0, 0.0, 0.0, 1.0], id="refill-capped-at-burst"),
        pytest.param(0.25, 2, [0, 0, 0], [0.0, 0.0, 4.0], id="slow-rate"),
        pytest.param(1.0, 1, [0, 0], [0.0, 1.0], id="burst-one"),
    ],
)
def test_token_bucket(rate: float, burst: int, advances: list[float], delays: list[float]) -> None:
    clock = FakeClock()
    bucket = TokenBucket(clock, rate=rate, burst=burst)
    got = []
    for seconds in advances:
        clock.now += seconds
        got.append(bucket.reserve())
    assert got == pytest.approx(delays)


async def test_token_bucket_sleeping_the_delay_keeps_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(clock, rate=2.0, burst=2)
    start = clock.now
    for _ in range(12):
        await clock.sleep(bucket.reserve())
    # 2 free, then 10 more at 2 per second.
    assert clock.now - start == pytest.approx(5.0)


@pytest.mark.parametrize(
    ("rate", "burst"), [pytest.param(0.0, 2, id="zero-rate"), pytest.param(1.0, 0, id="zero-burst")]
)
def test_token_bucket_rejects_bad_parameters(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(FakeClock(), rate=rate, burst=burst)


@pytest.mark.parametrize(
    ("wait", "text"),
    [
        pytest.param(300.0, "300000ms", id="five-minutes"),
        pytest.param(2.0, "2000ms", id="two-seconds"),
        pytest.param(0.0001, "1ms", id="floor"),
        pytest.param(3600.0, "600000ms", id="clamped-to-ten-minutes"),
    ],
)
def test_format_wait(wait: float, text: str) -> None:
    assert format_wait(wait) == text


@pytest.mark.parametrize(
    ("wait", "margin", "expected"),
    [
        pytest.param(300.0, 10.0, 300 + 300 / 16 + 10, id="default"),
        pytest.param(2.0, 5.0, 2 + 2 / 16 + 5, id="short"),
        pytest.param(3600.0, 10.0, 600 + 600 / 16 + 10, id="clamped"),
    ],
)
def test_read_timeout_exceeds_consul_jitter(wait: float, margin: float, expected: float) -> None:
    assert read_timeout(wait, margin) == pytest.approx(expected)
