"""Per-instance circuit breakers with a manual clock."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from consulgw.metrics import GatewayMetrics
from consulgw.policy.model import BreakerPolicy
from consulgw.upstream.breaker import BreakerBoard


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_700_000_000.0 + self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


POLICY = BreakerPolicy(failure_threshold=3, recovery_timeout=10.0)


def board(policy: BreakerPolicy | None = POLICY) -> tuple[BreakerBoard, Clock, GatewayMetrics]:
    clock, metrics = Clock(), GatewayMetrics()
    b = BreakerBoard(clock=clock, metrics=metrics)
    b.configure("svc", policy)
    return b, clock, metrics


def gauge(metrics: GatewayMetrics, instance: str) -> float:
    return float(metrics.breaker_state.labels("svc", instance)._value.get())


def opened(metrics: GatewayMetrics) -> float:
    return float(metrics.breaker_opened.labels("svc")._value.get())


def trip(b: BreakerBoard, instance: str = "i1", n: int = 3) -> None:
    for _ in range(n):
        assert b.allow("svc", instance)
        b.record("svc", instance, ok=False)


def test_opens_after_consecutive_failures_only() -> None:
    b, _, metrics = board()
    trip(b, n=2)
    b.record("svc", "i1", ok=True)  # a success resets the count
    trip(b, n=2)
    assert b.state("svc", "i1") == "closed"
    with capture_logs() as logs:
        trip(b, n=1)
    assert b.state("svc", "i1") == "open"
    assert not b.allow("svc", "i1")
    assert opened(metrics) == 1
    assert gauge(metrics, "i1") == 2
    assert [e["event"] for e in logs] == ["circuit_breaker_opened"]
    assert logs[0]["service"] == "svc"
    assert logs[0]["instance"] == "i1"


def test_instances_are_independent() -> None:
    b, _, _ = board()
    trip(b, "i1")
    assert not b.allow("svc", "i1")
    assert b.allow("svc", "i2")
    assert b.state("svc", "i2") == "closed"


def test_one_half_open_probe_then_close_on_success() -> None:
    b, clock, metrics = board()
    trip(b)
    clock.now += 9.9
    assert not b.allow("svc", "i1")  # still open
    clock.now += 0.1
    assert b.state("svc", "i1") == "half_open"
    assert b.allow("svc", "i1")  # the probe
    assert not b.allow("svc", "i1")  # exactly one at a time
    assert not b.allow("svc", "i1")
    assert gauge(metrics, "i1") == 1
    with capture_logs() as logs:
        b.record("svc", "i1", ok=True)
    assert b.state("svc", "i1") == "closed"
    assert all(b.allow("svc", "i1") for _ in range(5))
    assert gauge(metrics, "i1") == 0
    assert [e["event"] for e in logs] == ["circuit_breaker_closed"]


def test_failed_probe_reopens_for_a_full_timeout() -> None:
    b, clock, metrics = board()
    trip(b)
    clock.now += 10
    assert b.allow("svc", "i1")
    b.record("svc", "i1", ok=False)
    assert b.state("svc", "i1") == "open"
    assert opened(metrics) == 2
    clock.now += 9.9
    assert not b.allow("svc", "i1")
    clock.now += 0.1
    assert b.allow("svc", "i1")  # the next probe
    b.record("svc", "i1", ok=True)
    assert b.state("svc", "i1") == "closed"


def test_closed_after_recovery_needs_threshold_failures_again() -> None:
    b, clock, _ = board()
    trip(b)
    clock.now += 10
    assert b.allow("svc", "i1")
    b.record("svc", "i1", ok=True)
    trip(b, n=2)
    assert b.state("svc", "i1") == "closed"


def test_late_results_do_not_decide() -> None:
    b, clock, _ = board()
    for _ in range(5):
        assert b.allow("svc", "i1")  # five requests in flight
    for _ in range(3):
        b.record("svc", "i1", ok=False)
    assert b.state("svc", "i1") == "open"
    b.record("svc", "i1", ok=True)  # answers of requests sent before it opened
    b.record("svc", "i1", ok=True)
    assert b.state("svc", "i1") == "open"
    clock.now += 10
    assert b.allow("svc", "i1")


def test_lost_probe_lease_expires() -> None:
    b, clock, _ = board()
    trip(b)
    clock.now += 10
    assert b.allow("svc", "i1")  # a probe whose outcome is never recorded
    clock.now += 5
    assert not b.allow("svc", "i1")
    clock.now += 5
    assert b.allow("svc", "i1")  # never stuck half-open


def test_zero_recovery_timeout_is_honoured() -> None:
    b, _, _ = board(BreakerPolicy(failure_threshold=1, recovery_timeout=0.0))
    trip(b, n=1)
    assert b.state("svc", "i1") == "half_open"
    assert b.allow("svc", "i1")


def test_without_policy_everything_is_allowed() -> None:
    b, _, _ = board(None)
    for _ in range(10):
        assert b.allow("svc", "i1")
        b.record("svc", "i1", ok=False)
    assert b.state("svc", "i1") == "closed"
    assert b.allow("other-service", "x")


def test_reconfigure_keeps_state_and_applies_new_values() -> None:
    b, clock, _ = board()
    trip(b)
    b.configure("svc", BreakerPolicy(failure_threshold=3, recovery_timeout=60.0))
    assert b.state("svc", "i1") == "open"
    clock.now += 30
    assert not b.allow("svc", "i1")
    clock.now += 30
    assert b.allow("svc", "i1")


def test_removing_the_policy_drops_breakers() -> None:
    b, _, metrics = board()
    trip(b)
    b.configure("svc", None)
    assert b.allow("svc", "i1")
    assert b.state("svc", "i1") == "closed"
    assert 'consulgw_circuit_breaker_state{instance="i1"' not in metrics.render().decode()


def test_forget_gone_instances() -> None:
    b, _, metrics = board()
    trip(b, "i1")
    trip(b, "i2")
    b.forget("svc", {"i2"})
    assert b.states("svc") == {"i2": "open"}
    assert b.allow("svc", "i1")  # i1 came back as a new instance: a fresh breaker
    text = metrics.render().decode()
    assert 'consulgw_circuit_breaker_state{instance="i2",service="svc"} 2.0' in text


@pytest.mark.parametrize(
    ("status", "failure"),
    [pytest.param(502, True, id="502"), pytest.param(500, False, id="500"), pytest.param(200, False, id="200")],
)
def test_failure_statuses(status: int, failure: bool) -> None:
    b, _, _ = board()
    assert b.is_failure_status("svc", status) is failure
