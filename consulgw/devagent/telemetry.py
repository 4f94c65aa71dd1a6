"""``/v1/agent/metrics``: the agent's metrics in go-metrics' in-memory shape, and in Prometheus' text format.

Like Consul's in-memory sink, samples are kept in 10-second intervals for one minute; the JSON view shows the last
complete interval (the current one while only one exists): ``{"Timestamp", "Gauges", "Points", "Counters",
"Samples"}``, gauges as ``{"Name", "Value", "Labels"}`` and samples as ``{"Name", "Count", "Rate", "Sum", "Min",
"Max", "Mean", "Stddev", "Labels"}``. Names carry Consul's ``consul.`` prefix.

The dev agent measures what it can honestly measure, under Consul's metric names: every HTTP request
(``consul.api.http``, labelled with method and path pattern, in milliseconds), the sizes of its state
(``consul.state.nodes``, ``.services``, ``.service_instances``, ``.kv_entries``) and its own process
(``consul.runtime.alloc_bytes``, ``.sys_bytes``, and ``.num_goroutines`` counted as asyncio tasks). Prometheus output
needs ``telemetry.prometheus_retention_time``, as in Consul.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import resource
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from prometheus_client.core import CollectorRegistry, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from consulgw.clock import Clock

INTERVAL = 10.0
RETAIN = 60.0
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Labels = tuple[tuple[str, str], ...]


@dataclass(slots=True)
class _Aggregate:
    count: int = 0
    total: float = 0.0
    squares: float = 0.0
    low: float = math.inf
    high: float = -math.inf

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.squares += value * value
        self.low = min(self.low, value)
        self.high = max(self.high, value)

    def json(self, name: str, labels: Labels, seconds: float) -> dict[str, object]:
        mean = self.total / self.count if self.count else 0.0
        variance = (self.squares - self.count * mean * mean) / (self.count - 1) if self.count > 1 else 0.0
        return {
            "Name": name,
            "Count": self.count,
            "Rate": go_number(self.total / seconds),
            "Sum": go_number(self.total),
            "Min": go_number(self.low if self.count else 0.0),
            "Max": go_number(self.high if self.count else 0.0),
            "Mean": go_number(mean),
            "Stddev": go_number(math.sqrt(max(variance, 0.0))),
            "Labels": dict(labels),
        }


def go_number(value: float) -> float | int:
    """Go's encoding/json writes integral floats without a fraction (``3``, not ``3.0``)."""
    return int(value) if value.is_integer() else value


@dataclass(slots=True)
class _Interval:
    start: float
    samples: dict[tuple[str, Labels], _Aggregate] = field(default_factory=dict)
    counters: dict[tuple[str, Labels], _Aggregate] = field(default_factory=dict)


Gauges = Callable[[], Iterable[tuple[str, float]]]


class Telemetry:
    """In-memory intervals of samples and counters, plus gauges read when displayed."""

    def __init__(self, clock: Clock, gauges: Gauges) -> None:
        self._clock = clock
        self._gauges = gauges
        self._intervals: deque[_Interval] = deque()
        self._totals: dict[tuple[str, Labels], _Aggregate] = {}  # since start, for Prometheus summaries

    def _current(self) -> _Interval:
        now = self._clock.time()
        start = now - (now % INTERVAL)
        if not self._intervals or self._intervals[-1].start != start:
            self._intervals.append(_Interval(start=start))
            while self._intervals and self._intervals[0].start < now - RETAIN:
                self._intervals.popleft()
        return self._intervals[-1]

    def sample(self, name: str, value: float, labels: Labels = ()) -> None:
        key = (name, labels)
        self._current().samples.setdefault(key, _Aggregate()).add(value)
        self._totals.setdefault(key, _Aggregate()).add(value)

    def count(self, name: str, value: float = 1.0, labels: Labels = ()) -> None:
        self._current().counters.setdefault((name, labels), _Aggregate()).add(value)

    def summary(self) -> dict[str, object]:
        current = self._current()
        shown = self._intervals[-2] if len(self._intervals) > 1 else current
        stamp = dt.datetime.fromtimestamp(shown.start, dt.UTC).strftime("%Y-%m-%d %H:%M:%S +0000 UTC")
        gauges: list[dict[str, object]] = [
            {"Name": name, "Value": go_number(value), "Labels": {}} for name, value in sorted(self._gauges())
        ]
        return {
            "Timestamp": stamp,
            "Gauges": gauges,
            "Points": [],
            "Counters": [agg.json(n, lb, INTERVAL) for (n, lb), agg in sorted(shown.counters.items())],
            "Samples": [agg.json(n, lb, INTERVAL) for (n, lb), agg in sorted(shown.samples.items())],
        }

    def prometheus(self) -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_PrometheusView(self))
        return generate_latest(registry)

    def prometheus_families(self) -> Iterable[GaugeMetricFamily | SummaryMetricFamily]:
        for name, value in sorted(self._gauges()):
            yield GaugeMetricFamily(_prom_name(name), name, value=value)
        families: dict[str, SummaryMetricFamily] = {}
        for (name, labels), agg in sorted(self._totals.items()):
            keys = [k for k, _ in labels]
            family = families.get(name)
            if family is None:
                family = families[name] = SummaryMetricFamily(_prom_name(name), name, labels=keys)
            family.add_metric([v for _, v in labels], count_value=agg.count, sum_value=agg.total)
        yield from families.values()


class _PrometheusView(Collector):
    def __init__(self, telemetry: Telemetry) -> None:
        self._telemetry = telemetry

    def collect(self) -> Iterable[GaugeMetricFamily | SummaryMetricFamily]:
        return self._telemetry.prometheus_families()


def _prom_name(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def process_gauges() -> list[tuple[str, float]]:
    """``consul.runtime.*`` for this process: resident memory now, and its peak."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rss = 0.0
    try:
        with open("/proc/self/statm") as handle:
            rss = float(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        rss = float(usage.ru_maxrss) * 1024
    return [("consul.runtime.alloc_bytes", rss), ("consul.runtime.sys_bytes", float(usage.ru_maxrss) * 1024)]
