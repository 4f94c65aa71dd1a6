"""The Markdown report: machine, command, throughput ratios, convergence, rebuild cost and memory."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from harness.discovery import Convergence, ScalePoint, percentile
from harness.throughput import Series, cpu_us_per_request, p99_ratio, ratio

BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"


def machine() -> dict[str, str]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load": load,
    }


def _f(value: float | None, fmt: str = "{:.2f}") -> str:
    return "n/a" if value is None else fmt.format(value)


def _ratio(series: dict[str, Series], key: str, ref: str, *, p99: bool = False) -> str:
    r = p99_ratio(series, key, ref) if p99 else ratio(series, key, ref)
    if r is None:
        return "n/a"
    med, lo, hi = r
    return f"{med:.2f} ({lo:.2f}-{hi:.2f})" if len(series[key].samples) > 1 else f"{med:.2f}"


def throughput_table(series: dict[str, Series], *, naive: str, nginx: str) -> str:
    rows = [
        "| target | req/s median (min-max) | p50 ms | p99 ms | x naive proxy | x nginx proxy | p99 x naive | target CPU % | CPU us/req | others' CPU % | RSS MiB | non-2xx / socket errors | runs with foreign load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, s in series.items():
        rps = s.values(lambda x: x.result.requests_per_s)
        bad = sum(x.result.non_2xx for x in s.samples), sum(x.result.socket_errors for x in s.samples)
        cpu = s.median(lambda x: x.cpu_pct)
        rows.append(
            f"| {s.target.label} | {statistics.median(rps):,.0f} ({min(rps):,.0f}-{max(rps):,.0f}) "
            f"| {_f(s.median(lambda x: x.result.p50_ms))} | {_f(s.median(lambda x: x.result.p99_ms))} "
            f"| {_ratio(series, key, naive)} | {_ratio(series, key, nginx)} | {_ratio(series, key, naive, p99=True)} "
            f"| {_f(cpu, '{:.0f}')} | {_f(s.median(cpu_us_per_request), '{:.0f}')} "
            f"| {_f(s.median(lambda x: x.other_cpu_pct), '{:.0f}')} "
            f"| {_f(s.median(lambda x: x.rss_kib / 1024 if x.rss_kib else None), '{:.0f}')} | {bad[0]} / {bad[1]} | {sum(1 for x in s.samples if x.foreign_load)} |"
        )
    return "\n".join(rows) + "\n"


@dataclass(frozen=True, slots=True, kw_only=True)
class Bar:
    """A target's figure against the naive proxy's, same round: ``throughput`` (req/s ratio, at least) or ``p99``
    (p99 ratio, at most)."""

    key: str
    measure: str  # "throughput" or "p99"
    at_least: float | None = None
    at_most: float | None = None

    def check(self, series: dict[str, Series], naive: str) -> tuple[float, bool] | None:
        r = ratio(series, self.key, naive) if self.measure == "throughput" else p99_ratio(series, self.key, naive)
        if r is None:
            return None
        value = r[0]
        ok = (self.at_least is None or value >= self.at_least) and (self.at_most is None or value <= self.at_most)
        return value, ok


def bar_lines(series: dict[str, Series], bars: tuple[Bar, ...], *, naive: str) -> str:
    """One line per bar: the same-run median against it, and whether it is met."""
    lines = ["Against the bar (same-run medians of per-round ratios to the naive proxy):", ""]
    for bar in bars:
        got = bar.check(series, naive)
        if bar.key not in series or got is None:
            continue
        label = series[bar.key].target.label
        value, ok = got
        what = "req/s" if bar.measure == "throughput" else "p99"
        limit = f">= {bar.at_least:g}" if bar.at_least is not None else f"<= {bar.at_most:g}"
        lines.append(f"- {label}: {what} {value:.2f}x the naive proxy's (bar {limit}): {'met' if ok else 'NOT met'}")
    return "\n".join(lines) + "\n"


def convergence_table(runs: list[tuple[str, Convergence]]) -> str:
    rows = [
        "| change | routed services already in Consul | trials | p50 ms | p99 ms | max ms | failures |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, c in runs:
        for what, values in (("register -> route answers", c.add_ms), ("deregister -> 404", c.remove_ms)):
            rows.append(
                f"| {what} ({label}) | {c.routed_services} | {len(values)} | {_f(percentile(values, 50), '{:.1f}')} "
                f"| {_f(percentile(values, 99), '{:.1f}')} | {_f(max(values) if values else None, '{:.1f}')} "
                f"| {len(c.failures)} |"
            )
    return "\n".join(rows) + "\n"


def _med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def scale_tables(points: list[ScalePoint]) -> str:
    rows = [
        "| services x instances | registration took s | table complete after last registration ms | swaps during "
        "registration | sum / max build_ms of those swaps | one-instance change build_ms (median) | one-route change "
        "build_ms (median) | route change: PUT -> swap logged ms (median) | `/-/routes` ms (bytes) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        rows.append(
            f"| {p.services} x {p.instances} | {p.register_s:.1f} | {_f(p.complete_ms, '{:.0f}')} | {p.swaps} "
            f"| {p.build_ms_total:.1f} / {p.build_ms_max:.1f} | {_f(_med(p.instance_change_ms))} "
            f"| {_f(_med(p.route_change_ms))} | {_f(_med(p.change_visible_ms), '{:.1f}')} "
            f"| {p.routes_json_ms:.0f} ({p.routes_json_bytes:,}) |"
        )
    rows += [
        "",
        "| services x instances | gateway RSS MiB (grown live) | peak RSS MiB | cold start: ready after s | cold start: "
        "listening -> first view ms | cold start: first build_ms | cold start RSS MiB | dev agent RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        rows.append(
            f"| {p.services} x {p.instances} | {p.rss_kib / 1024:.1f} | {p.hwm_kib / 1024:.1f} "
            f"| {_f(p.cold_ready_s)} | {_f(p.cold_view_ms, '{:.0f}')} | {_f(p.cold_build_ms, '{:.1f}')} "
            f"| {_f(p.cold_rss_kib / 1024 if p.cold_rss_kib else None, '{:.1f}')} | {p.agent_rss_kib / 1024:.1f} |"
        )
    notes = [f"- {p.services} services: {n}" for p in points for n in p.notes]
    return "\n".join(rows + (["", *notes] if notes else [])) + "\n"


def render(
    *,
    command: str,
    info: dict[str, str],
    tools: dict[str, str],
    settings: str,
    throughput: str | None,
    logging_cost: str | None,
    convergence: str | None,
    scale: str | None,
    profile: str | None,
    consul: str | None = None,
    answers: str | None = None,
) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        f"Run {now} on {info['nproc']} CPU(s), {info['cpu']}, Linux {info['kernel']}, Python {info['python']} "
        f"(load average at start: {info['load']}).",
        "",
        f"Command: `{command}`",
        "",
        f"Tools: {'; '.join(f'{k}: {v}' for k, v in tools.items())}. {settings}",
        "",
    ]
    if throughput:
        out += ["### Throughput and latency", "", throughput]
    if logging_cost:
        out += [logging_cost, ""]
    if answers:
        out += ["### Answers the gateway makes itself (cache, composite)", "", answers]
    if convergence:
        out += ["### Consul change -> route in force", "", convergence]
    if scale:
        out += ["### Route-table rebuild and memory by catalog size", "", scale]
    if consul:
        out += ["### Consul at scale (default: 10,000 services)", "", consul]
    if profile:
        out += ["### Profile (gateway under wrk load)", "", profile]
        out += [
            "What dominates: see \"What dominates the gateway's cost\" below, written from this run's profile.",
            "",
        ]
    return "\n".join(out)


def write_docs(path: Path, block: str) -> None:
    """Replace the text between the markers (append a marked section when the file has none)."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n\n"
    body = f"{BEGIN}\n{block.rstrip()}\n{END}"
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: body, text, count=1)
    else:
        text = text.rstrip() + "\n\n## Results\n\n" + body + "\n"
    path.write_text(text, encoding="utf-8")
