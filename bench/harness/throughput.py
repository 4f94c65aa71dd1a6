"""Alternating wrk runs over the targets, per-round ratios against the references, medians."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from harness import wrk
from harness.procs import rss_kib


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    key: str
    label: str
    url: str
    headers: tuple[str, ...] = ()
    pid: int | None = None  # the process whose CPU and RSS are sampled around each run
    log_file: str | None = None  # measured for bytes logged per request


@dataclass(slots=True)
class Sample:
    round: int
    result: wrk.WrkResult
    cpu_pct: float | None  # CPU used by the target process during the run, % of one core
    rss_kib: int | None
    log_bytes_per_request: float | None


@dataclass(slots=True)
class Series:
    target: Target
    samples: list[Sample] = field(default_factory=list)

    def median(self, pick: Callable[[Sample], float | None]) -> float | None:
        values = [v for v in (pick(s) for s in self.samples) if v is not None]
        return statistics.median(values) if values else None

    def values(self, pick: Callable[[Sample], float]) -> list[float]:
        return [pick(s) for s in self.samples]


def _cpu_seconds(pgid: int) -> float | None:
    """User + system CPU seconds of every live process in the process group (nginx: master and worker)."""
    total = 0
    found = False
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the command: state, ppid, pgrp, ...
            total += int(fields[11]) + int(fields[12])
            found = True
    return total / os.sysconf("SC_CLK_TCK") if found else None


def _size(path: str | None) -> int | None:
    if path is None:
        return None
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def measure(target: Target, *, duration: float, threads: int, connections: int, round_no: int) -> Sample:
    cpu0 = _cpu_seconds(target.pid) if target.pid else None
    size0 = _size(target.log_file)
    t0 = time.monotonic()
    result, _ = wrk.run(target.url, duration=duration, threads=threads, connections=connections, headers=target.headers)
    elapsed = time.monotonic() - t0
    cpu1 = _cpu_seconds(target.pid) if target.pid else None
    size1 = _size(target.log_file)
    rss = rss_kib(target.pid)["VmRSS"] if target.pid else None
    cpu_pct = 100.0 * (cpu1 - cpu0) / elapsed if cpu0 is not None and cpu1 is not None else None
    per_req = (size1 - size0) / result.requests if size0 is not None and size1 is not None and result.requests else None
    return Sample(round=round_no, result=result, cpu_pct=cpu_pct, rss_kib=rss, log_bytes_per_request=per_req)


def run_rounds(
    targets: Sequence[Target],
    *,
    rounds: int,
    duration: float,
    threads: int,
    connections: int,
    warmup: float,
    between: Callable[[], None] = lambda: None,
) -> dict[str, Series]:
    """Warm every target once, then A B C ... per round; odd rounds run in reverse order (no position bias)."""
    series = {t.key: Series(target=t) for t in targets}
    if warmup > 0:
        for target in targets:
            print(f"bench: warm-up {target.label} ({warmup:g}s)", flush=True)
            wrk.run(target.url, duration=warmup, threads=threads, connections=connections, headers=target.headers)
            between()
    for r in range(rounds):
        order = list(targets) if r % 2 == 0 else list(reversed(targets))
        for target in order:
            sample = measure(target, duration=duration, threads=threads, connections=connections, round_no=r)
            series[target.key].samples.append(sample)
            res = sample.result
            cpu = f", target CPU {sample.cpu_pct:.0f}%" if sample.cpu_pct is not None else ""
            bad = f", {res.non_2xx} non-2xx, {res.socket_errors} socket errors" if res.bad else ""
            print(
                f"bench: round {r + 1}/{rounds} {target.label:<40} {res.requests_per_s:>10.0f} req/s  "
                f"p50 {res.p50_ms:.2f} ms  p99 {res.p99_ms:.2f} ms{cpu}{bad}",
                flush=True,
            )
            between()
    return series


def ratio(series: dict[str, Series], key: str, ref: str) -> tuple[float, float, float] | None:
    """Median, min and max over rounds of req/s(key) / req/s(ref) measured in the same round."""
    if key not in series or ref not in series:
        return None
    refs = {s.round: s.result.requests_per_s for s in series[ref].samples}
    values = [s.result.requests_per_s / refs[s.round] for s in series[key].samples if refs.get(s.round, 0) > 0]
    if not values:
        return None
    return statistics.median(values), min(values), max(values)
