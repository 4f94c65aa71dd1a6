"""The Consul watcher's status as the admin API, ``/-/ready`` and the metrics show it: one place for all three."""

from __future__ import annotations

from collections.abc import Callable

from consulgw.clock import Clock
from consulgw.discovery.watcher import WatcherStatus
from consulgw.metrics import ConsulMetrics


def sync_age(status: WatcherStatus, clock: Clock) -> float | None:
    """Seconds the view may be behind Consul: 0 while every watch is connected, else time since last contact."""
    if status.last_success is None:
        return None
    if status.consul_reachable:
        return 0.0
    return max(0.0, clock.monotonic() - status.last_success)


def kv_denied(status: WatcherStatus) -> bool:
    """The token may not read (some of) the KV prefix: policies are the last ones read (none at start-up)."""
    return status.kv_access in ("denied", "filtered")


class ConsulStatusRecorder:
    """Copies a WatcherStatus into ConsulMetrics; the watcher's running totals become counter increments."""

    def __init__(self, metrics: ConsulMetrics, clock: Clock) -> None:
        self._metrics = metrics
        self._clock = clock
        self._counted: dict[str, int] = {"errors": 0, "probes": 0, "reads": 0}

    def record(self, status: WatcherStatus) -> None:
        m = self._metrics
        self._add("errors", status.errors_total, lambda n: m.consul_errors.inc(n))
        self._add("probes", status.probes_total, lambda n: m.probes.labels("probe").inc(n))
        self._add("reads", status.reads_total, lambda n: m.probes.labels("read").inc(n))
        age = sync_age(status, self._clock)
        m.sync_age.set(age if age is not None else -1)
        m.consul_index.labels("services").set(status.services_index)
        m.consul_index.labels("kv").set(status.kv_index)
        m.kv_read_denied.set(1 if kv_denied(status) else 0)
        m.max_conns.set(status.max_conns)
        m.in_flight.set(status.in_flight)
        m.services.labels("live").set(status.live)
        m.services.labels("parked").set(status.parked)

    def _add(self, name: str, total: int, inc: Callable[[int], None]) -> None:
        counted = self._counted[name]
        if total < counted:  # the watcher restarted: its totals start over
            counted = 0
        if total > counted:
            inc(total - counted)
        self._counted[name] = total
