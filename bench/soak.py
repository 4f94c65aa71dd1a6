"""Soak: N minutes of steady, modest load through a real ``consulgw run`` while Consul churns and policies change.

It looks for leaks, not speed. A dev agent holds a routed service of five instances (all served by one nginx); every
few seconds one instance flaps (maintenance on/off, its check failing/passing), one is deregistered or registered
again, and a short-lived service with a route of its own comes and goes; every 30 s the service's KV policy is
rewritten (rate limit, timeouts, retries, breaker). A client loop sends requests at a fixed rate over a fixed number
of keep-alive connections. Once per sample period it records the gateway's RSS, its open file descriptors
(/proc/<pid>/fd), its asyncio task count (``consulgw_event_loop_tasks`` on the admin /metrics) and the requests and
errors of the period, prints the row, and at the end prints the table and a verdict.

The verdict is a heuristic: for each of RSS, fds and tasks it compares the mean of the last third of the samples with
the mean of the first third; a growth beyond ``--tolerance`` (relative) plus a small absolute slack means "not flat".
It is not proof of a leak (an allocator may keep its high-water mark) nor of its absence (a slow leak may need hours).

Not collected by ``make test`` (bench/test_soak.py checks its parsing and verdict, and runs it for ~20 s).
Usage: .venv/bin/python bench/soak.py --minutes 30 [--write-docs]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import aiohttp
from harness import report, stack
from harness.procs import ComponentFailed, Supervisor, http_status, rss_kib

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "benchmarks.md"
BEGIN = "<!-- soak:begin -->"
END = "<!-- soak:end -->"
SERVICE = "soak"
STABLE = ("soak-1", "soak-2")  # never touched: the service always has healthy instances
FLAPPING = "soak-3"  # maintenance on / off
FAILING = "soak-4"  # its TTL check fails / passes
COMING_AND_GOING = "soak-5"  # deregistered / registered again
# What "flat" tolerates on top of --tolerance (absolute): allocator noise, a connection or two, a task or two.
SLACK = {"rss_mib": 4.0, "fds": 4.0, "tasks": 4.0}
_METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


# -- pure parts (bench/test_soak.py) ------------------------------------------------------------------------------


def metric_value(text: str, name: str) -> float | None:
    """The sum of every sample of ``name`` in a Prometheus text exposition (None when absent)."""
    total: float | None = None
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _METRIC_LINE.match(line)
        if m is None or m.group(1) != name:
            continue
        total = (total or 0.0) + float(m.group(3))
    return total


@dataclass(frozen=True, slots=True, kw_only=True)
class Sample:
    minute: float  # minutes of measured load when the sample was taken
    seconds: float  # length of the period the requests and errors were counted in
    rss_mib: float
    fds: int
    tasks: float | None
    requests: int
    errors: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Trend:
    name: str
    first: float
    last: float
    limit: float

    @property
    def flat(self) -> bool:
        return self.last <= self.limit


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    flat: bool | None  # None: too few samples to say
    trends: tuple[Trend, ...]
    text: str


def _thirds(values: list[float]) -> tuple[float, float]:
    third = max(1, len(values) // 3)
    return statistics.fmean(values[:third]), statistics.fmean(values[-third:])


def verdict(samples: list[Sample], *, tolerance: float = 0.10, slack: dict[str, float] | None = None) -> Verdict:
    """Flat when, for RSS, fds and tasks, the last third's mean is at most the first third's times (1 + tolerance)
    plus an absolute slack. A heuristic (see the module's docstring)."""
    slack = SLACK if slack is None else slack
    if len(samples) < 3:
        return Verdict(
            flat=None,
            trends=(),
            text=f"inconclusive: {len(samples)} sample(s), at least 3 are needed to compare thirds",
        )
    series: dict[str, list[float]] = {
        "rss_mib": [s.rss_mib for s in samples],
        "fds": [float(s.fds) for s in samples],
    }
    tasks = [s.tasks for s in samples]
    if all(t is not None for t in tasks):
        series["tasks"] = [float(t) for t in tasks if t is not None]
    trends = []
    for name, values in series.items():
        first, last = _thirds(values)
        trends.append(Trend(name=name, first=first, last=last, limit=first * (1 + tolerance) + slack.get(name, 0.0)))
    flat = all(t.flat for t in trends)
    parts = [
        f"{t.name} {t.first:.1f} -> {t.last:.1f} ({'ok' if t.flat else 'GROWING'}, limit {t.limit:.1f})" for t in trends
    ]
    head = "flat" if flat else "NOT flat"
    missing = "" if "tasks" in series else " (task count missing from some samples: not judged)"
    text = (
        f"{head}: last-third mean vs first-third mean, tolerance {tolerance:.0%} + slack: "
        + "; ".join(parts)
        + missing
        + ". A heuristic, not a proof."
    )
    return Verdict(flat=flat, trends=tuple(trends), text=text)


def table(samples: list[Sample]) -> str:
    rows = [
        "| minute | RSS MiB | open fds | asyncio tasks | requests | errors | req/s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in samples:
        tasks = "n/a" if s.tasks is None else f"{s.tasks:.0f}"
        rows.append(
            f"| {s.minute:.1f} | {s.rss_mib:.1f} | {s.fds} | {tasks} | {s.requests:,} | {s.errors:,} "
            f"| {s.requests / s.seconds if s.seconds > 0 else 0:.0f} |"
        )
    return "\n".join(rows) + "\n"


def write_docs(path: Path, block: str) -> None:
    """Replace the text between the soak markers, or append a "Soak" section with them."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    body = f"{BEGIN}\n{block.rstrip()}\n{END}"
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: body, text, count=1)
    else:
        text = text.rstrip() + "\n\n## Soak\n\n" + body + "\n"
    path.write_text(text, encoding="utf-8")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# -- the run ------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/soak.py", description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0, help="measured minutes of load (default 30)")
    p.add_argument("--sample", type=float, default=60.0, help="seconds between two samples (default 60)")
    p.add_argument("--warmup", type=float, default=30.0, help="seconds of unmeasured load first (default 30)")
    p.add_argument("--connections", type=int, default=8, help="keep-alive client connections (default 8)")
    p.add_argument("--rate", type=float, default=200.0, help="requests per second, all connections (default 200)")
    p.add_argument("--churn", type=float, default=3.0, help="seconds between two Consul changes (default 3)")
    p.add_argument("--policy", type=float, default=30.0, help="seconds between two KV policy edits (default 30)")
    p.add_argument("--tolerance", type=float, default=0.10, help="relative growth still called flat (default 0.10)")
    p.add_argument("--write-docs", action="store_true", help="write the result into docs/benchmarks.md (Soak)")
    p.add_argument("--docs", type=Path, default=DOCS, help=argparse.SUPPRESS)
    p.add_argument("--no-install", action="store_true", help="never apt-get install nginx")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    return p.parse_args(argv)


@dataclass(slots=True)
class Tally:
    requests: int = 0
    errors: int = 0
    kinds: Counter[str] = field(default_factory=Counter)

    def take(self) -> tuple[int, int]:
        out = (self.requests, self.errors)
        self.requests = self.errors = 0
        return out


class Soak:
    def __init__(self, args: argparse.Namespace, gateway: stack.Gateway, consul_url: str, upstream_port: int) -> None:
        self.args = args
        self.gw = gateway
        self.consul_url = consul_url
        self.port = upstream_port
        self.tally = Tally()
        self.all_kinds: Counter[str] = Counter()
        self.changes = Counter[str]()
        self.stop = asyncio.Event()

    # Consul ------------------------------------------------------------------------------------------------------

    async def _put(self, session: aiohttp.ClientSession, path: str, body: bytes | None = None) -> None:
        async with session.put(self.consul_url + path, data=body) as resp:
            if resp.status != 200:
                raise ComponentFailed(f"PUT {path} -> {resp.status}: {(await resp.read())[:200]!r}")
            await resp.read()

    async def register(self, session: aiohttp.ClientSession, service_id: str, name: str = SERVICE) -> None:
        route = f"/{name}" if name == SERVICE else f"/extra/{name}"
        doc = {
            "Name": name,
            "ID": service_id,
            "Address": "127.0.0.1",
            "Port": self.port,
            "Tags": [f"gw.route={route}"],
            "Check": {"CheckID": f"{service_id}-ttl", "TTL": "1h", "Status": "passing"},
        }
        await self._put(session, "/v1/agent/service/register", json.dumps(doc).encode())

    @staticmethod
    def policy(edit: int) -> dict[str, object]:
        doc: dict[str, object] = {
            "rate_limit": {"requests": 1_000_000 + edit, "per": "1s"},  # never reached: the edits are what count
            "timeouts": {"connect": f"{1 + edit % 2}s", "read": f"{10 + edit % 5}s"},
            "retries": {"attempts": 1 + edit % 2, "on": ["connect_failure", "502", "503"]},
        }
        if edit % 2:
            doc["circuit_breaker"] = {"failure_threshold": 50, "recovery_timeout": "5s"}
        return doc

    async def setup(self) -> None:
        async with aiohttp.ClientSession() as session:
            for sid in (*STABLE, FLAPPING, FAILING, COMING_AND_GOING):
                await self.register(session, sid)
            await self._put(session, f"/v1/kv/consulgw/services/{SERVICE}", json.dumps(self.policy(0)).encode())

    async def churn(self) -> None:
        step = 0
        async with aiohttp.ClientSession() as session:
            while not self.stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), self.args.churn)
                if self.stop.is_set():
                    return
                step += 1
                kind = step % 4
                if kind == 0:
                    enable = "true" if step % 8 == 0 else "false"
                    await self._put(session, f"/v1/agent/service/maintenance/{FLAPPING}?enable={enable}&reason=soak")
                    self.changes["maintenance"] += 1
                elif kind == 1:
                    verb = "fail" if step % 8 == 1 else "pass"
                    await self._put(session, f"/v1/agent/check/{verb}/{FAILING}-ttl")
                    self.changes["check"] += 1
                elif kind == 2:
                    if step % 8 == 2:
                        await self._put(session, f"/v1/agent/service/deregister/{COMING_AND_GOING}")
                    else:
                        await self.register(session, COMING_AND_GOING)
                    self.changes["instance"] += 1
                else:
                    # A service with a route of its own for one step: routes and metric label sets come and go.
                    name = f"extra-{step}"
                    await self.register(session, f"{name}-1", name=name)
                    previous = f"extra-{step - 4}-1"
                    if step > 4:
                        await self._put(session, f"/v1/agent/service/deregister/{previous}")
                    self.changes["service"] += 1

    async def edit_policies(self) -> None:
        edit = 0
        async with aiohttp.ClientSession() as session:
            while not self.stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), self.args.policy)
                if self.stop.is_set():
                    return
                edit += 1
                body = json.dumps(self.policy(edit)).encode()
                await self._put(session, f"/v1/kv/consulgw/services/{SERVICE}", body)
                self.changes["policy"] += 1

    # Load ------------------------------------------------------------------------------------------------------------

    async def client(self, index: int) -> None:
        interval = self.args.connections / self.args.rate
        connector = aiohttp.TCPConnector(limit=1)
        timeout = aiohttp.ClientTimeout(total=15)
        url = f"{self.gw.url}/{SERVICE}/item/{index}"
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            next_at = time.monotonic() + index * interval / self.args.connections
            while not self.stop.is_set():
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                next_at = max(next_at + interval, time.monotonic())
                kind = "ok"
                try:
                    async with session.get(url) as resp:
                        await resp.read()
                        if resp.status >= 400:
                            kind = str(resp.status)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    kind = type(exc).__name__
                self.tally.requests += 1
                if kind != "ok":
                    self.tally.errors += 1
                    self.tally.kinds[kind] += 1

    async def tasks_gauge(self, session: aiohttp.ClientSession) -> float | None:
        try:
            async with session.get(self.gw.admin_url + "/metrics") as resp:
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError):
            return None
        return metric_value(text, "consulgw_event_loop_tasks")

    async def run(self) -> list[Sample]:
        pid = self.gw.component.pid
        args = self.args
        samples: list[Sample] = []
        workers = [asyncio.create_task(self.client(i)) for i in range(args.connections)]
        workers += [asyncio.create_task(self.churn()), asyncio.create_task(self.edit_policies())]
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as admin:
                await self._sleep_checked(workers, args.warmup)
                self.tally.take()
                started = last = time.monotonic()
                end = started + args.minutes * 60
                next_sample = started + args.sample
                print(
                    f"soak: measuring {args.minutes:g} min, a sample every {args.sample:g}s\n" + table([]).rstrip(),
                    flush=True,
                )
                while True:
                    await self._sleep_checked(workers, max(0.0, min(next_sample, end) - time.monotonic()))
                    period = time.monotonic()
                    seconds, last = period - last, period
                    requests, errors = self.tally.take()
                    self.all_kinds.update(self.tally.kinds)
                    self.tally.kinds.clear()
                    sample = Sample(
                        minute=(period - started) / 60,
                        seconds=seconds,
                        rss_mib=rss_kib(pid)["VmRSS"] / 1024,
                        fds=open_fds(pid),
                        tasks=await self.tasks_gauge(admin),
                        requests=requests,
                        errors=errors,
                    )
                    samples.append(sample)
                    print(table([sample]).splitlines()[-1], flush=True)
                    if period >= end - 0.5:
                        break
                    next_sample += args.sample
        finally:
            self.stop.set()
            done, _ = await asyncio.wait(workers, timeout=20)
            for task in workers:
                task.cancel()
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    raise ComponentFailed(f"soak: a load or churn task failed: {task.exception()!r}")
        return samples

    async def _sleep_checked(self, workers: list[asyncio.Task[None]], seconds: float) -> None:
        """Sleep, but fail at once if the gateway died or a churn/load task raised."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(1.0, left))
            if not self.gw.component.alive():
                raise ComponentFailed(f"the gateway died:\n{self.gw.component.tail()}")
            for task in workers:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise ComponentFailed(f"soak: a load or churn task failed: {task.exception()!r}")


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _wait_route(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        got = http_status(url, timeout=5)
        if got == 200:
            return
        time.sleep(0.1)
    raise ComponentFailed(f"GET {url} answered {got}, expected 200")


def render(args: argparse.Namespace, command: str, samples: list[Sample], result: Verdict, extra: str) -> str:
    info = report.machine()
    first, last = samples[0], samples[-1]
    tasks = "n/a" if first.tasks is None or last.tasks is None else f"{first.tasks:.0f} -> {last.tasks:.0f}"
    lines = [
        f"Command: `{command}`",
        "",
        f"Machine: {info['nproc']} cores ({info['cpu']}), Linux {info['kernel']}, Python {info['python']}, load "
        f"average at the end {info['load']}; a shared machine (other engineers' work ran at the same time).",
        "",
        f"Load: {args.rate:g} requests/s over {args.connections} keep-alive connections (an aiohttp client loop) "
        f"through one `consulgw run` process (uvloop, JSON access log to a file), after {args.warmup:g}s of "
        f"warm-up. {extra}",
        "",
        table(samples).rstrip(),
        "",
        f"First -> last sample: RSS {first.rss_mib:.1f} -> {last.rss_mib:.1f} MiB, open fds {first.fds} -> "
        f"{last.fds}, asyncio tasks {tasks}, errors {sum(s.errors for s in samples):,} of "
        f"{sum(s.requests for s in samples):,} requests.",
        "",
        f"Verdict: {result.text}",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.minutes <= 0 or args.sample <= 0 or args.connections < 1 or args.rate <= 0:
        print("soak: --minutes, --sample, --connections and --rate must be positive", file=sys.stderr)
        return 2
    python = Path(sys.executable)
    shown = python.relative_to(REPO) if python.is_relative_to(REPO) else python
    command = f"{shown} bench/soak.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    try:
        tools = stack.ensure_tools(("nginx",), install=not args.no_install)
    except stack.SetupError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="consulgw-soak-"))
    print(f"soak: working directory {workdir}", flush=True)
    try:
        with Supervisor() as sup:
            nginx = stack.start_nginx(sup, tools["nginx"], workdir)
            stack.expect_upstream(nginx.upstream_url + "/")
            agent, agent_url = stack.start_dev_agent(sup, workdir)
            gateway = stack.start_gateway(sup, consul_url=agent_url, log=workdir / "gateway.log")
            soak = Soak(args, gateway, agent_url, nginx.upstream_port)
            asyncio.run(soak.setup())
            _wait_route(f"{gateway.url}/{SERVICE}/")
            samples = asyncio.run(soak.run())
            sup.check(gateway.component)
            sup.check(agent)
    except ComponentFailed as exc:
        print(f"soak: FAILED: {exc}", file=sys.stderr)
        print(f"soak: logs kept in {workdir}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("soak: interrupted; every started process was stopped", file=sys.stderr)
        return 130
    result = verdict(samples, tolerance=args.tolerance)
    kinds = ", ".join(f"{k} x{n}" for k, n in soak.all_kinds.most_common()) or "none"
    changes = ", ".join(f"{n} {k}" for k, n in sorted(soak.changes.items()))
    extra = (
        f"Consul changes every {args.churn:g}s and a KV policy edit every {args.policy:g}s: {changes} "
        f"(over the warm-up and the measured minutes). Error kinds: {kinds}."
    )
    block = render(args, command, samples, result, extra)
    print()
    print(block)
    if args.write_docs:
        write_docs(args.docs, block)
        print(f"soak: written to {args.docs}", flush=True)
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if result.flat is not False else 3


if __name__ == "__main__":
    raise SystemExit(main())
