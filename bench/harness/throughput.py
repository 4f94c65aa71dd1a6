"""Alternating wrk runs over the targets, per-round ratios against the references, medians."""

from __future__ import annotations

import os
import statistics
import threading
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
    foreign_load: int  # other load generators (wrk, ab, hey, ...) seen running on the machine around this run
    other_cpu_pct: float  # CPU used by processes this harness did not start (% of one core)


def cpu_us_per_request(sample: Sample) -> float | None:
    """CPU microseconds the target spent per request served in a run: its cost, whatever else the machine did
    (throughput moves with other people's load on a shared machine; CPU per request much less)."""
    rps = sample.result.requests_per_s
    if sample.cpu_pct is None or not rps:
        return None
    return sample.cpu_pct / 100 / rps * 1e6


@dataclass(slots=True)
class Series:
    target: Target
    samples: list[Sample] = field(default_factory=list)

    def median(self, pick: Callable[[Sample], float | None]) -> float | None:
        values = [v for v in (pick(s) for s in self.samples) if v is not None]
        return statistics.median(values) if values else None

    def values(self, pick: Callable[[Sample], float]) -> list[float]:
        return [pick(s) for s in self.samples]


def cpu_seconds(pgid: int) -> float | None:
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


_LOADERS = frozenset({"wrk", "wrk2", "ab", "hey", "oha", "locust", "vegeta", "h2load", "siege", "bombardier"})


def foreign_loaders() -> int:
    """Load generators on this machine that this harness did not start (someone else is benchmarking)."""
    me = os.getpid()
    count = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as stat:
                text = stat.read()
        except OSError:
            continue
        name = text[text.find("(") + 1 : text.rfind(")")]
        ppid = int(text.rsplit(")", 1)[1].split()[1])
        if name in _LOADERS and ppid != me:
            count += 1
    return count


def process_cpu() -> dict[int, tuple[int, int, int, int]]:
    """Every process: pid -> (start time, pgid, ppid, CPU ticks), from /proc/<pid>/stat."""
    out: dict[int, tuple[int, int, int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(entry.name)] = (int(fields[19]), int(fields[2]), int(fields[1]), int(fields[11]) + int(fields[12]))
    return out


def foreign_cpu(
    before: dict[int, tuple[int, int, int, int]], after: dict[int, tuple[int, int, int, int]], ours: frozenset[int]
) -> float:
    """CPU seconds used between two snapshots by processes that are not ours (not this harness, its children, or a
    process group it started). Processes that came and went between the snapshots are not seen."""
    me = os.getpid()
    ticks = 0
    for pid, (start, pgid, ppid, cpu) in after.items():
        if pid == me or ppid == me or pgid in ours:
            continue
        prev = before.get(pid)
        ticks += cpu - prev[3] if prev is not None and prev[0] == start else cpu
    return ticks / os.sysconf("SC_CLK_TCK")


def group_rss_kib(pgid: int) -> int:
    """VmRSS summed over the process group (nginx master + worker, gateway supervisor + workers)."""
    total = 0
    for pid, (_start, group, _ppid, _cpu) in process_cpu().items():
        if group == pgid:
            try:
                total += rss_kib(pid).get("VmRSS", 0)
            except OSError:
                continue
    return total


def _size(path: str | None) -> int | None:
    if path is None:
        return None
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def measure(
    target: Target, *, duration: float, threads: int, connections: int, round_no: int, ours: frozenset[int]
) -> Sample:
    cpu0 = cpu_seconds(target.pid) if target.pid else None
    procs0 = process_cpu()
    size0 = _size(target.log_file)
    seen = [foreign_loaders()]
    stop = threading.Event()

    def watch() -> None:  # someone else's benchmark starting mid-run is what we most need to know about
        while not stop.wait(0.5):
            seen.append(foreign_loaders())

    watcher = threading.Thread(target=watch, name="foreign-load", daemon=True)
    watcher.start()
    t0 = time.monotonic()
    try:
        result, _ = wrk.run(
            target.url, duration=duration, threads=threads, connections=connections, headers=target.headers
        )
    finally:
        stop.set()
        watcher.join()
    elapsed = time.monotonic() - t0
    other = 100.0 * foreign_cpu(procs0, process_cpu(), ours) / elapsed
    foreign = max(seen)
    cpu1 = cpu_seconds(target.pid) if target.pid else None
    size1 = _size(target.log_file)
    rss = group_rss_kib(target.pid) if target.pid else None
    cpu_pct = 100.0 * (cpu1 - cpu0) / elapsed if cpu0 is not None and cpu1 is not None else None
    per_req = (size1 - size0) / result.requests if size0 is not None and size1 is not None and result.requests else None
    return Sample(
        round=round_no,
        result=result,
        cpu_pct=cpu_pct,
        rss_kib=rss,
        log_bytes_per_request=per_req,
        foreign_load=foreign,
        other_cpu_pct=other,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Rounds:
    run: int
    clean: tuple[int, ...]  # rounds in which no run overlapped foreign load
    max_others_cpu: float
    used: tuple[int, ...]  # rounds the medians are taken over

    def describe(self) -> str:
        if len(self.used) == len(self.clean) and len(self.used) < self.run:
            left = self.run - len(self.clean)
            return (
                f"{self.run} rounds run; {left} overlapped someone else's load (a load generator, or other processes "
                f"above {self.max_others_cpu:g}% of a core) and {'is' if left == 1 else 'are'} left out, so the "
                f"medians are over the {len(self.used)} clean rounds"
            )
        if len(self.clean) < self.run:
            return (
                f"{self.run} rounds run; only {len(self.clean)} free of someone else's load (a load generator, or "
                f"other processes above {self.max_others_cpu:g}% of a core), too few to leave the others out: the "
                f"medians are over all {self.run} rounds and are noisier than usual"
            )
        return (
            f"{self.run} rounds run, none overlapped someone else's load generator or other processes above "
            f"{self.max_others_cpu:g}% of a core"
        )


def run_rounds(
    targets: Sequence[Target],
    *,
    rounds: int,
    duration: float,
    threads: int,
    connections: int,
    warmup: float,
    max_extra: int = 3,
    max_others_cpu: float = 60.0,
    between: Callable[[], None] = lambda: None,
    ours: Callable[[], frozenset[int]] = frozenset,
) -> tuple[dict[str, Series], Rounds]:
    """Warm every target once, then A B C ... per round; odd rounds run in reverse order (no position bias).

    A round in which any run overlapped someone else's load generator, or other processes used more than
    ``max_others_cpu`` % of a core, is not clean; up to ``max_extra`` extra rounds are run until ``rounds`` clean ones
    exist. The medians use the clean rounds when there are enough of them."""
    series = {t.key: Series(target=t) for t in targets}
    if warmup > 0:
        for target in targets:
            print(f"bench: warm-up {target.label} ({warmup:g}s)", flush=True)
            wrk.run(target.url, duration=warmup, threads=threads, connections=connections, headers=target.headers)
            between()
    clean: list[int] = []
    r = 0
    while r < rounds or (len(clean) < rounds and r < rounds + max_extra):
        order = list(targets) if r % 2 == 0 else list(reversed(targets))
        foreign = False
        for target in order:
            sample = measure(
                target, duration=duration, threads=threads, connections=connections, round_no=r, ours=ours()
            )
            series[target.key].samples.append(sample)
            foreign = foreign or sample.foreign_load > 0 or sample.other_cpu_pct > max_others_cpu
            res = sample.result
            cpu = f", target CPU {sample.cpu_pct:.0f}%" if sample.cpu_pct is not None else ""
            bad = f", {res.non_2xx} non-2xx, {res.socket_errors} socket errors" if res.bad else ""
            bad += f", others' CPU {sample.other_cpu_pct:.0f}%"
            if sample.foreign_load:
                bad += f", {sample.foreign_load} foreign load generator(s) running"
            print(
                f"bench: round {r + 1} {target.label:<42} {res.requests_per_s:>10.0f} req/s  "
                f"p50 {res.p50_ms:.2f} ms  p99 {res.p99_ms:.2f} ms{cpu}{bad}",
                flush=True,
            )
            between()
        if not foreign:
            clean.append(r)
        elif r + 1 >= rounds and len(clean) < rounds and r + 1 < rounds + max_extra:
            print("bench: someone else's load overlapped this round; running another", flush=True)
        r += 1
    used = tuple(clean) if len(clean) >= rounds else tuple(range(r))
    chosen = {
        key: Series(target=s.target, samples=[x for x in s.samples if x.round in used]) for key, s in series.items()
    }
    return chosen, Rounds(run=r, clean=tuple(clean), used=used, max_others_cpu=max_others_cpu)


def ratio(
    series: dict[str, Series], key: str, ref: str, pick: Callable[[Sample], float] = lambda s: s.result.requests_per_s
) -> tuple[float, float, float] | None:
    """Median, min and max over rounds of pick(key) / pick(ref) measured in the same round (req/s by default)."""
    if key not in series or ref not in series:
        return None
    refs = {s.round: pick(s) for s in series[ref].samples}
    values = [pick(s) / refs[s.round] for s in series[key].samples if refs.get(s.round, 0) > 0]
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


def p99_ratio(series: dict[str, Series], key: str, ref: str) -> tuple[float, float, float] | None:
    """Median, min and max over rounds of p99(key) / p99(ref), same round (below 1: key's tail is shorter)."""
    return ratio(series, key, ref, lambda s: s.result.p99_ms)
