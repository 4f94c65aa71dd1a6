"""Per-upstream-instance circuit breakers, on the ``circuitbreaker`` library's state machine.

What the library gives us and we use as is: consecutive-failure counting (a success resets the count), opening at
``failure_threshold``, the closed / open / half_open states (half_open = open and ``recovery_timeout`` elapsed), a
failed half-open call re-opening the breaker, and a successful one closing it (``CircuitBreaker.call``).

Why it is wrapped (``_InstanceBreaker`` subclass + ``BreakerBoard``), exactly:

1. Clock. The library reads ``time.monotonic`` directly. ``open_remaining`` (which its ``state`` property uses) is
   overridden to read the injected ``Clock``, and the opening instant is re-stamped from that clock right after the
   library opens the breaker, so tests (and the rest of the gateway) share one timeline.
2. One probe at a time. In the library, once ``recovery_timeout`` has passed every caller sees ``half_open`` and
   may call through: a recovering instance would get the whole backlog at once. ``allow`` lets exactly one probe
   through and refuses the rest until that probe is recorded. If a probe is never recorded (the proxy lost track of
   it), its lease expires after ``recovery_timeout`` and one new probe is let through, so a breaker can never be
   stuck half-open (the "never recovers" failure of anchors.md section 9.7).
3. Outcomes, not calls. The proxy streams responses, so there is no function to wrap: ``record(ok)`` replays the
   outcome through ``CircuitBreaker.call`` (a callable that raises our private ``_UpstreamFailed``, the breaker's
   only ``expected_exception``, or returns). Results of requests admitted before the breaker opened ("late" results
   that arrive while it is open and no probe is out) are ignored: only the probe decides when the breaker closes.
4. Zero values. The library's constructor treats ``recovery_timeout=0`` as "use the default 30 s"; the policy's
   values are set after construction (also on ``configure`` with a changed policy, so an open breaker stays open).

The library's global ``CircuitBreakerMonitor`` is only fed by its decorator, which is not used here, so no state
outlives a ``BreakerBoard``. Everything runs on the event loop thread without awaiting, so no locking is needed.
"""

from __future__ import annotations

import contextlib
from typing import Literal, Protocol

import structlog
from circuitbreaker import STATE_CLOSED, STATE_HALF_OPEN, STATE_OPEN, CircuitBreaker

from consulgw.clock import Clock
from consulgw.metrics import BREAKER_STATES, GatewayMetrics

BreakerState = Literal["closed", "open", "half_open"]


class BreakerPolicy(Protocol):
    """What a breaker needs of a service's policy (``consulgw.policy.model.BreakerPolicy`` is one)."""

    @property
    def failure_threshold(self) -> int: ...

    @property
    def recovery_timeout(self) -> float: ...

    @property
    def failure_statuses(self) -> frozenset[int]: ...


log = structlog.get_logger("consulgw.breaker")


class _UpstreamFailed(Exception):
    """The one exception the library counts as a failure; raised only inside ``_InstanceBreaker.failed``."""


def _raise_failed() -> None:
    raise _UpstreamFailed


def _succeed() -> None:
    return None


class _InstanceBreaker(CircuitBreaker):  # type: ignore[misc]  # the library ships no type information
    def __init__(self, policy: BreakerPolicy, clock: Clock, name: str) -> None:
        super().__init__(expected_exception=_UpstreamFailed, name=name)
        self._clock = clock
        self.tune(policy)
        self._opened = clock.monotonic()
        self.probe_started: float | None = None

    def tune(self, policy: BreakerPolicy) -> None:
        self._failure_threshold = max(1, policy.failure_threshold)
        self._recovery_timeout = max(0.0, policy.recovery_timeout)

    @property
    def open_remaining(self) -> float:
        return float(self._opened + self._recovery_timeout - self._clock.monotonic())

    @property
    def recovery_timeout(self) -> float:
        return float(self._recovery_timeout)

    def failed(self) -> None:
        with contextlib.suppress(_UpstreamFailed):
            self.call(_raise_failed)
        if self._state == STATE_OPEN:
            self._opened = self._clock.monotonic()  # the library stamped it with time.monotonic()

    def succeeded(self) -> None:
        self.call(_succeed)  # resets to closed with a zero failure count


class BreakerBoard:
    """Breakers of every upstream instance, created on first use, per service policy."""

    def __init__(self, *, clock: Clock, metrics: GatewayMetrics) -> None:
        self._clock = clock
        self._metrics = metrics
        self._policies: dict[str, BreakerPolicy] = {}
        self._breakers: dict[str, dict[str, _InstanceBreaker]] = {}

    def configure(self, service: str, policy: BreakerPolicy | None) -> None:
        """Set (or with None, remove) a service's breaker policy. Existing breakers keep their state."""
        if policy is None:
            self._policies.pop(service, None)
            for instance_id in list(self._breakers.get(service, {})):
                self._drop(service, instance_id)
            self._breakers.pop(service, None)
            return
        if self._policies.get(service) == policy:
            return
        self._policies[service] = policy
        for breaker in self._breakers.get(service, {}).values():
            breaker.tune(policy)

    def policy(self, service: str) -> BreakerPolicy | None:
        return self._policies.get(service)

    def is_failure_status(self, service: str, status: int) -> bool:
        """True when the service's policy counts this upstream status as a failure."""
        policy = self._policies.get(service)
        return policy is not None and status in policy.failure_statuses

    def allow(self, service: str, instance_id: str) -> bool:
        """May a request go to this instance now? At most one half-open probe is out at a time."""
        breaker = self._breaker(service, instance_id)
        if breaker is None:
            return True
        state = breaker.state
        if state == STATE_CLOSED:
            return True
        if state == STATE_OPEN:
            self._publish(service, instance_id, "open")
            return False
        now = self._clock.monotonic()
        if breaker.probe_started is not None and now - breaker.probe_started < max(breaker.recovery_timeout, 0.001):
            return False  # a probe is out; wait for its result
        breaker.probe_started = now
        self._publish(service, instance_id, "half_open")
        log.info("circuit_breaker_half_open", service=service, instance=instance_id)
        return True

    def record(self, service: str, instance_id: str, ok: bool) -> None:
        """The outcome of one attempt on this instance (failure: a failure status, connect failure or timeout)."""
        breaker = self._breaker(service, instance_id)
        if breaker is None:
            return
        if breaker.state != STATE_CLOSED:
            if breaker.probe_started is None:
                return  # a late result of a request sent before the breaker opened: only the probe decides
            breaker.probe_started = None
            if ok:
                breaker.succeeded()
                self._publish(service, instance_id, "closed")
                log.info("circuit_breaker_closed", service=service, instance=instance_id)
            else:
                breaker.failed()
                self._opened(service, instance_id, breaker, reopened=True)
            return
        if ok:
            breaker.succeeded()
            return
        breaker.failed()
        if breaker.state != STATE_CLOSED:
            self._opened(service, instance_id, breaker, reopened=False)

    def state(self, service: str, instance_id: str) -> BreakerState:
        breaker = self._breakers.get(service, {}).get(instance_id)
        if breaker is None or service not in self._policies:
            return "closed"
        state: BreakerState
        if breaker.probe_started is not None or breaker.state == STATE_HALF_OPEN:
            state = "half_open"
        elif breaker.state == STATE_OPEN:
            state = "open"
        else:
            state = "closed"
        self._publish(service, instance_id, state)
        return state

    def states(self, service: str) -> dict[str, BreakerState]:
        """Every known instance's state (for /-/routes)."""
        return {instance_id: self.state(service, instance_id) for instance_id in list(self._breakers.get(service, {}))}

    def forget(self, service: str, instance_ids_still_present: frozenset[str] | set[str]) -> None:
        """Drop the breakers (and gauge series) of instances that left the service."""
        for instance_id in list(self._breakers.get(service, {})):
            if instance_id not in instance_ids_still_present:
                self._drop(service, instance_id)

    def _breaker(self, service: str, instance_id: str) -> _InstanceBreaker | None:
        policy = self._policies.get(service)
        if policy is None:
            return None
        instances = self._breakers.setdefault(service, {})
        breaker = instances.get(instance_id)
        if breaker is None:
            breaker = instances[instance_id] = _InstanceBreaker(policy, self._clock, f"{service}/{instance_id}")
            self._publish(service, instance_id, "closed")
        return breaker

    def _opened(self, service: str, instance_id: str, breaker: _InstanceBreaker, *, reopened: bool) -> None:
        self._metrics.breaker_opened.labels(service).inc()
        self._publish(service, instance_id, "open")
        log.warning(
            "circuit_breaker_opened",
            service=service,
            instance=instance_id,
            failures=breaker.failure_count,
            recovery_timeout=breaker.recovery_timeout,
            reopened=reopened,
        )

    def _publish(self, service: str, instance_id: str, state: BreakerState) -> None:
        self._metrics.breaker_state.labels(service, instance_id).set(BREAKER_STATES[state])

    def _drop(self, service: str, instance_id: str) -> None:
        self._breakers.get(service, {}).pop(instance_id, None)
        with contextlib.suppress(KeyError):
            self._metrics.breaker_state.remove(service, instance_id)
