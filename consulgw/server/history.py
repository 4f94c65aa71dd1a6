"""The dashboard's time series: a bounded ring of per-service and per-instance traffic, sampled every few seconds.

``TrafficHistory`` wakes every ``interval`` seconds (5 s: 180 points are the last 15 minutes) and writes one point
per series. It keeps its rings outside the swapped view and reads what the request path already counts:

- per service, from the Prometheus collectors: requests and 5xx (``consulgw_requests_total``), latency buckets
  (``consulgw_request_duration_seconds``, p50/p99 estimated like PromQL's ``histogram_quantile``), rate-limit
  rejections and breaker openings;
- per instance, from ``UpstreamPools`` (requests sent, in flight) and ``BreakerBoard`` (state);
- per instance errors and latency, from ``TrafficRecorder`` when the proxy calls its ``observe`` once per request
  (until then those series are null).

Sampling never holds the event loop for long: the collectors are read in a worker thread (they lock their values)
and the series are written 64 at a time, with the loop serving requests in between.

Bounds: ``points`` per series, at most ``max_series`` series (services first, in name order, then their
instances); a service or instance that leaves the view loses its series. Memory is about 4 KiB per series
(6 float32 rings of 180 points), under 8 MiB at the default cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from consulgw.clock import Clock
from consulgw.metrics import LATENCY_BUCKETS, GatewayMetrics
from consulgw.server.view import GatewayView
from consulgw.upstream.breaker import BreakerBoard
from consulgw.upstream.pool import UpstreamPools

SERVICE_FIELDS = ("requests", "errors", "p50", "p99", "rate_limited", "breaker_opened")
INSTANCE_FIELDS = ("requests", "errors", "p50", "p99", "in_flight", "breaker")
_BREAKER_VALUE = {"closed": 0.0, "half_open": 1.0, "open": 2.0}
_NAN = float("nan")
MAX_RECORDER_CELLS = 100_000  # (service, instance) pairs the recorder counts; the view bounds them far below this


class TrafficRecorder:
    """Per-request counters by service and instance: ``observe`` is the one call the proxy makes per request.

    Each cell is a list of integers: requests, 5xx answers, then one count per latency bucket (the buckets of
    ``consulgw_request_duration_seconds`` and +Inf). Cells only grow; ``TrafficHistory`` reads differences and
    drops the cells of services and instances that left the view.
    """

    __slots__ = ("_bounds", "cells")

    def __init__(self) -> None:
        self._bounds = LATENCY_BUCKETS
        self.cells: dict[tuple[str, str], list[int]] = {}

    def observe(self, service: str, instance: str | None, status: int, seconds: float) -> None:
        if instance is None:
            return
        cell = self.cells.get((service, instance))
        if cell is None:
            if len(self.cells) >= MAX_RECORDER_CELLS:
                return
            cell = self.cells[(service, instance)] = [0] * (3 + len(self._bounds))
        cell[0] += 1
        if status >= 500:
            cell[1] += 1
        cell[2 + bisect_left(self._bounds, seconds)] += 1

    def forget(self, keep: Callable[[str, str], bool]) -> None:
        for key in [k for k in self.cells if not keep(*k)]:
            del self.cells[key]


_CHUNK = 64  # series written between two yields to the event loop

# (requests, 5xx, rate-limited, breaker openings, latency buckets) per service, as read from the collectors.
_Readings = tuple[dict[str, float], dict[str, float], dict[str, float], dict[str, float], dict[str, tuple[float, ...]]]


@dataclass(frozen=True, slots=True, kw_only=True)
class _Plan:
    """What one sample writes: at which position, for which series."""

    position: int
    wall: float
    elapsed: float | None  # seconds since the previous sample; None for the first
    services: Sequence[str]
    instances: Sequence[tuple[str, str]]
    wanted: frozenset[str]


def _read_collectors(metrics: GatewayMetrics, wanted: frozenset[str]) -> _Readings:
    """The per-service counters, summed over routes. Safe in a worker thread: collectors lock their values."""
    requests, errors = _requests_by_service(metrics.requests.collect(), wanted)
    limited = _sum_by_service(metrics.rate_limited.collect(), wanted)
    opened = _sum_by_service(metrics.breaker_opened.collect(), wanted)
    buckets = _buckets_by_service(metrics.latency.collect(), wanted)
    return requests, errors, limited, opened, buckets


class _Series:
    """Fixed-size float32 rings, one per field, all written at the history's current position."""

    __slots__ = ("rings",)

    def __init__(self, fields: int, points: int) -> None:
        self.rings = tuple(array("f", [_NAN]) * points for _ in range(fields))


class TrafficHistory:
    def __init__(
        self,
        *,
        view: Callable[[], GatewayView | None],
        metrics: GatewayMetrics,
        pools: UpstreamPools,
        breakers: BreakerBoard,
        recorder: TrafficRecorder,
        clock: Clock,
        interval: float = 5.0,
        points: int = 180,
        max_series: int = 2000,
    ) -> None:
        self._view = view
        self._metrics = metrics
        self._pools = pools
        self._breakers = breakers
        self._recorder = recorder
        self._clock = clock
        self.interval = interval
        self.points = points
        self._max_series = max_series
        self._times = array("d", [_NAN]) * points  # wall clock of each point
        self._position = -1  # index of the newest point
        self._filled = 0
        self._services: dict[str, _Series] = {}
        self._instances: dict[tuple[str, str], _Series] = {}
        self._untracked = 0
        self._last: float | None = None  # monotonic time of the previous sample
        self._previous: dict[object, tuple[float, ...]] = {}  # series key -> cumulative readings of last sample
        self._task: asyncio.Task[None] | None = None
        self._writing = False
        self._planned_view: GatewayView | None = None
        self._planned: tuple[list[str], list[tuple[str, str]]] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self.sample()  # the baseline: the first point has no rates yet
        self._task = asyncio.create_task(self._run(), name="consulgw-history")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def __aenter__(self) -> TrafficHistory:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def _run(self) -> None:
        while True:
            await self._clock.sleep(self.interval)
            await self.sample_async()

    # -- sampling ----------------------------------------------------------------------------------------------
    #
    # One sample: plan (which series, synchronously), read the Prometheus collectors (in a worker thread in the
    # background task: a histogram's collect() takes tens of milliseconds at a thousand services), write the new
    # point of every series in chunks (the event loop serves requests in between), then commit: only then does
    # ``snapshot`` see the new point, so a reader never sees half a sample.

    def sample(self) -> None:
        """Write one point of every series, all at once (the baseline at start, and tests)."""
        plan = self._plan()
        for _ in self._write(plan, _read_collectors(self._metrics, plan.wanted)):
            pass
        self._commit(plan)

    async def sample_async(self) -> None:
        """Write one point of every series without holding the event loop for long."""
        plan = self._plan()
        self._writing = True  # the oldest point is being overwritten: snapshot leaves it out meanwhile
        try:
            readings = await asyncio.to_thread(_read_collectors, self._metrics, plan.wanted)
            for _ in self._write(plan, readings):
                await asyncio.sleep(0)
            self._commit(plan)
        finally:
            self._writing = False

    def _plan(self) -> _Plan:
        now = self._clock.monotonic()
        elapsed = (now - self._last) if self._last is not None else None
        self._last = now
        view = self._view()
        if view is not self._planned_view or self._planned is None:  # series change only when the view does
            names = sorted(view.services) if view is not None else []
            wanted_instances: list[tuple[str, str]] = []
            if view is not None:
                for name in names:
                    wanted_instances.extend((name, i.id) for i in view.services[name].snapshot.instances)
            budget = self._max_series
            services = names[:budget]
            instances = wanted_instances[: max(0, budget - len(services))]
            self._untracked = len(names) - len(services) + len(wanted_instances) - len(instances)
            self._retain(services, instances)
            self._planned_view, self._planned = view, (services, instances)
        services, instances = self._planned
        return _Plan(
            position=(self._position + 1) % self.points,
            wall=self._clock.time(),
            elapsed=elapsed if elapsed is not None and elapsed > 0 else None,
            services=services,
            instances=instances,
            wanted=frozenset(services),
        )

    def _commit(self, plan: _Plan) -> None:
        self._times[plan.position] = plan.wall
        self._position = plan.position
        self._filled = min(self._filled + 1, self.points)

    def _retain(self, services: Sequence[str], instances: Sequence[tuple[str, str]]) -> None:
        keep_services, keep_instances = set(services), set(instances)
        for name in [n for n in self._services if n not in keep_services]:
            del self._services[name]
            self._previous.pop(name, None)
        for key in [k for k in self._instances if k not in keep_instances]:
            del self._instances[key]
            self._previous.pop(key, None)
        self._recorder.forget(lambda service, instance: (service, instance) in keep_instances)
        for name in services:
            if name not in self._services:
                self._services[name] = _Series(len(SERVICE_FIELDS), self.points)
        for key in instances:
            if key not in self._instances:
                self._instances[key] = _Series(len(INSTANCE_FIELDS), self.points)

    def _write(self, plan: _Plan, readings: _Readings) -> Iterator[None]:
        """Write the plan's point of every series; yields every ``_CHUNK`` series."""
        position, elapsed = plan.position, plan.elapsed
        requests, errors, limited, opened, buckets = readings
        for count, name in enumerate(plan.services, 1):
            if count % _CHUNK == 0:
                yield
            series = self._services.get(name)
            if series is None:
                continue
            reading = (
                requests.get(name, 0.0),
                errors.get(name, 0.0),
                limited.get(name, 0.0),
                opened.get(name, 0.0),
                *buckets.get(name, ()),
            )
            previous = self._previous.get(name)
            self._previous[name] = reading
            rings = series.rings
            if previous is None or elapsed is None:
                for ring in rings:
                    ring[position] = _NAN
                continue
            delta = _deltas(reading, previous)
            rings[0][position] = delta[0] / elapsed
            rings[1][position] = delta[1] / elapsed
            p50, p99 = _quantiles(delta[4:], (0.5, 0.99))
            rings[2][position] = p50
            rings[3][position] = p99
            rings[4][position] = delta[2] / elapsed
            rings[5][position] = delta[3]  # openings in this interval (a count, not a rate)
        stats_of: dict[str, Any] = {}
        cells = self._recorder.cells
        for count, key in enumerate(plan.instances, 1):
            if count % _CHUNK == 0:
                yield
            series = self._instances.get(key)
            if series is None:
                continue
            service, instance = key
            stats = stats_of.get(service)
            if stats is None:
                stats = stats_of[service] = self._pools.stats(service)
            counters = stats.get(instance)
            sent = float(counters.requests) if counters is not None else 0.0
            cell = cells.get(key)
            reading = (sent, *(float(c) for c in cell)) if cell is not None else (sent,)
            previous = self._previous.get(key)
            self._previous[key] = reading
            rings = series.rings
            rings[4][position] = float(counters.in_flight) if counters is not None else 0.0
            rings[5][position] = _BREAKER_VALUE.get(self._breakers.state(service, instance), _NAN)
            if previous is None or elapsed is None:
                for ring in rings[:4]:
                    ring[position] = _NAN
                continue
            rings[0][position] = (sent - previous[0] if sent >= previous[0] else sent) / elapsed
            if cell is not None:  # a cell that is new since the last sample counted everything in this interval
                before = previous[1:] if len(previous) == len(reading) else (0.0,) * len(cell)
                delta = _deltas(reading[1:], before)
                rings[1][position] = delta[1] / elapsed
                p50, p99 = _quantiles(delta[2:], (0.5, 0.99))
                rings[2][position] = p50
                rings[3][position] = p99
            else:
                for ring in rings[1:4]:
                    ring[position] = _NAN

    # -- reading -----------------------------------------------------------------------------------------------

    def snapshot(
        self, services: Sequence[str] | None = None, *, limit: int = 12, points: int | None = None
    ) -> dict[str, Any]:
        """The series as JSON-ready data: the named services (at most ``limit``), else the ``limit`` busiest."""
        count = min(self._filled, points or self.points, self.points - 1 if self._writing else self.points)
        order = [(self._position - count + 1 + i) % self.points for i in range(count)]
        if services is None:
            busiest = sorted(self._services, key=lambda n: (-_total(self._services[n].rings[0], order), n))
            chosen = busiest[:limit]
        else:
            chosen = [n for n in dict.fromkeys(services) if n in self._services][:limit]
        instances_of: dict[str, list[str]] = {}
        for service, instance in self._instances:
            instances_of.setdefault(service, []).append(instance)
        out: dict[str, Any] = {}
        for name in sorted(chosen):
            series = self._services[name]
            entry: dict[str, Any] = {f: _values(r, order) for f, r in zip(SERVICE_FIELDS, series.rings, strict=True)}
            entry["instances"] = {
                instance: {
                    f: _values(r, order)
                    for f, r in zip(INSTANCE_FIELDS, self._instances[(name, instance)].rings, strict=True)
                }
                for instance in sorted(instances_of.get(name, ()))
            }
            out[name] = entry
        return {
            "interval": self.interval,
            "points": self.points,
            "t": [round(self._times[i], 3) for i in order],
            "recorder": bool(self._recorder.cells),
            "services": out,
            "tracked_services": len(self._services),
            "untracked_series": self._untracked,
        }


# -- helpers -----------------------------------------------------------------------------------------------------


def _sum_by_service(families: Iterable[Any], wanted: frozenset[str]) -> dict[str, float]:
    """A counter's ``_total`` samples added up per service (over its other labels)."""
    totals: dict[str, float] = {}
    for family in families:
        for sample in family.samples:
            service = sample.labels.get("service", "")
            if sample.name.endswith("_total") and service in wanted:
                totals[service] = totals.get(service, 0.0) + float(sample.value)
    return totals


def _requests_by_service(families: Iterable[Any], wanted: frozenset[str]) -> tuple[dict[str, float], dict[str, float]]:
    """(all answers, 5xx answers) per service, from ``consulgw_requests_total``."""
    totals: dict[str, float] = {}
    errors: dict[str, float] = {}
    for family in families:
        for sample in family.samples:
            service = sample.labels.get("service", "")
            if not sample.name.endswith("_total") or service not in wanted:
                continue
            totals[service] = totals.get(service, 0.0) + float(sample.value)
            if sample.labels.get("status_class") == "5xx":
                errors[service] = errors.get(service, 0.0) + float(sample.value)
    return totals, errors


def _buckets_by_service(families: Iterable[Any], wanted: frozenset[str]) -> dict[str, tuple[float, ...]]:
    """Per service, the latency histogram's per-bucket counts (not cumulative), summed over routes, +Inf last."""
    index = {_bound_key(b): i for i, b in enumerate(LATENCY_BUCKETS)}
    sums: dict[str, list[float]] = {}
    for family in families:
        for sample in family.samples:
            if not sample.name.endswith("_bucket"):
                continue
            service = sample.labels.get("service", "")
            if service not in wanted:
                continue
            le = sample.labels.get("le", "")
            slot = len(LATENCY_BUCKETS) if le == "+Inf" else index.get(_bound_key(_float(le)))
            if slot is None:
                continue
            row = sums.setdefault(service, [0.0] * (len(LATENCY_BUCKETS) + 1))
            row[slot] += float(sample.value)
    out: dict[str, tuple[float, ...]] = {}
    for service, cumulative in sums.items():
        counts = [cumulative[0]] + [max(0.0, cumulative[i] - cumulative[i - 1]) for i in range(1, len(cumulative))]
        out[service] = tuple(counts)
    return out


def _bound_key(value: float) -> str:
    return f"{value:.9g}"


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return _NAN


def _deltas(now: Sequence[float], before: Sequence[float]) -> list[float]:
    """Increases of counters; a counter that went down was reset (its service left and came back)."""
    if len(now) != len(before):
        return list(now)
    return [n - b if n >= b else n for n, b in zip(now, before, strict=True)]


def _quantiles(counts: Sequence[float], qs: Sequence[float]) -> list[float]:
    """Quantiles from per-bucket counts (LATENCY_BUCKETS then +Inf), interpolated inside the bucket."""
    total = sum(counts)
    if total <= 0 or len(counts) != len(LATENCY_BUCKETS) + 1:
        return [_NAN for _ in qs]
    out: list[float] = []
    for q in qs:
        rank = q * total
        seen = 0.0
        value = LATENCY_BUCKETS[-1]
        for i, count in enumerate(counts):
            if count > 0 and seen + count >= rank:
                if i >= len(LATENCY_BUCKETS):
                    value = LATENCY_BUCKETS[-1]  # beyond the last bound: the bound is all we know
                else:
                    lower = LATENCY_BUCKETS[i - 1] if i > 0 else 0.0
                    value = lower + (LATENCY_BUCKETS[i] - lower) * ((rank - seen) / count)
                break
            seen += count
        out.append(value)
    return out


def _total(ring: array[float], order: Sequence[int]) -> float:
    return sum(v for v in (ring[i] for i in order) if not math.isnan(v))


def _values(ring: array[float], order: Sequence[int]) -> list[float | None]:
    return [None if math.isnan(v := ring[i]) else round(v, 6) for i in order]
