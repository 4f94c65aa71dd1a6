"""Sampling the gateway under wrk load with py-spy (pyinstrument when py-spy cannot attach) and summarising it."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from harness import wrk
from harness.throughput import cpu_seconds

RATE = 200  # py-spy samples per second
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")
_SITE = re.compile(r".*/(?:site|dist)-packages/")
_STDLIB = re.compile(r".*/lib/python3\.\d+/")


class ProfileError(RuntimeError):
    pass


def ensure_pyspy() -> str | None:
    """py-spy from the venv, installed with pip (it is on PyPI) when missing; None when that fails."""
    path = Path(sys.executable).parent / "py-spy"
    if not path.exists():
        print("bench: installing py-spy into the venv", flush=True)
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "py-spy"], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0 or not path.exists():
            print(f"bench: pip install py-spy failed:\n{proc.stdout}{proc.stderr}", flush=True)
            return None
    return str(path)


def short_file(path: str) -> str:
    path = _SITE.sub("", path)
    path = _STDLIB.sub("", path)
    marker = path.find("/consulgw/")
    if marker >= 0:
        path = path[marker + 1 :]
    return path.rsplit("/", 1)[-1] if path.startswith("/") else path


def package(file: str) -> str:
    """The package (first path component) a frame belongs to: consulgw.<sub>, aiohttp, structlog, asyncio, ..."""
    parts = file.split("/")
    if parts[0] == "consulgw" and len(parts) > 2:
        return f"consulgw.{parts[1]}"
    if parts[0] == "consulgw":
        return "consulgw." + parts[-1].removesuffix(".py")
    if len(parts) == 1:
        return parts[0].removesuffix(".py")
    return parts[0]


@dataclass(slots=True)
class Profile:
    samples: int = 0
    self_: Counter[str] = field(default_factory=Counter)
    total: Counter[str] = field(default_factory=Counter)
    packages: Counter[str] = field(default_factory=Counter)  # self time by package
    packages_total: Counter[str] = field(default_factory=Counter)  # inclusive time by package
    stacks: list[tuple[tuple[str, ...], int]] = field(default_factory=list)  # root-first function keys, count
    parked: int = 0  # samples of background threads parked in a threading wait, left out (see aggregate)

    def pct(self, count: int) -> float:
        return 100.0 * count / self.samples if self.samples else 0.0


def _frame_key(frame: str) -> tuple[str, str]:
    m = _FRAME.match(frame.strip())
    if m is None:
        return frame.strip(), frame.strip()
    file = short_file(m.group("file"))
    return f"{m.group('func')} ({file})", package(file)


# Leaf frames of a thread that is parked, not working: py-spy (blocking mode, which stops the process to sample it)
# records such a background thread as busy, e.g. the log sink's writer waiting for its next batch. A sample of a
# thread started by ``threading`` whose innermost frame is one of these is left out: it spent no CPU.
_PARKED = (
    "Condition.wait (threading.py)",
    "Event.wait (threading.py)",
    "Semaphore.acquire (threading.py)",
    "Thread._wait_for_tstate_lock (threading.py)",
)


def aggregate(raw: str) -> Profile:
    """Aggregate py-spy's ``--format raw`` (collapsed stacks, "f1;f2;...;fN count") into self and inclusive time.
    Samples of background threads parked in a ``threading`` wait are counted in ``parked`` and left out."""
    prof = Profile()
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_key(f) for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        leaf, leaf_pkg = frames[-1]
        if leaf in _PARKED and frames[0][0].startswith("Thread._bootstrap "):
            prof.parked += count
            continue
        prof.samples += count
        prof.self_[leaf] += count
        prof.packages[leaf_pkg] += count
        for name in {name for name, _ in frames}:
            prof.total[name] += count
        for pkg in {pkg for _, pkg in frames}:
            prof.packages_total[pkg] += count
        prof.stacks.append((tuple(name for name, _ in frames), count))
    return prof


def breakdown(prof: Profile, parent: str) -> tuple[int, Counter[str]]:
    """Where the time of the outermost frame whose key starts with ``parent`` goes: its direct callees (inclusive)
    and ``(self)``. Returns the parent's inclusive count and the split."""
    split: Counter[str] = Counter()
    total = 0
    for frames, count in prof.stacks:
        at = next((i for i, f in enumerate(frames) if f.startswith(parent)), None)
        if at is None:
            continue
        total += count
        # Skip frames of the parent itself (recursion, nested closures of the same method).
        nxt = next((f for f in frames[at + 1 :] if not f.startswith(parent)), "(self)")
        split[nxt] += count
    return total, split


# The gateway's request path, outermost first: each gets a "where its time goes" table when it was sampled.
BREAKDOWNS = (
    "ProxyHandler.__call__ ",
    "Forwarder.forward ",
    "Forwarder._relay ",
    "AuthStage.__call__ ",
    "RateLimitStage.__call__ ",
    "JwtVerifier.check ",
    "RedisLimiter.acquire ",
    "BoundLoggerBase._proxy_to_logger ",
    "RequestHandler._handle_request ",
)


# The per-request CPU budget: every sample is charged to one component. A component is named by marks: substrings of
# a frame key ("function (short/file.py)"). SPECIFIC components are what the gateway spends on one concern (a library,
# or the gateway module that does that one thing); a sample goes to the INNERMOST frame on its stack that is one of
# them, so the code of a library called from the gateway's request path is charged to that library's row, however
# deep the stage chain above it is (a stage calls the next stage, so outer frames say little). Stage modules are not
# marks for that reason: their own glue falls to the generic gateway row. A frame matching marks of two components
# counts for the first listed. Only when no frame is specific do the GENERIC components apply (innermost again),
# and what matches nothing is the event loop's.
SPECIFIC: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("access log (structlog + JSON renderer)", ("(structlog/", "(consulgw/logs.py)", "(orjson")),
    ("JWT verification (PyJWT)", ("(jwt/", "(consulgw/auth/")),
    ("rate limit decision (Redis, redis-py)", ("(redis/", "(hiredis", "(consulgw/ratelimit/")),
    ("circuit breaker", ("(circuitbreaker.py)", "(consulgw/upstream/breaker.py)")),
    ("metrics (prometheus_client)", ("(prometheus_client/", "(consulgw/metrics.py)")),
    ("request id", ("(consulgw/ids.py)",)),
    ("header filtering", ("(consulgw/upstream/headers.py)",)),
    (
        "route lookup and target selection",
        ("(consulgw/routing/", "(consulgw/upstream/balancer.py)", "(consulgw/upstream/pool.py)"),
    ),
    (
        "upstream exchange (client side: aiohttp client or the gateway's transport)",
        (
            "(aiohttp/client",
            "(aiohttp/connector.py)",
            "(consulgw/upstream/transport.py)",
            "(consulgw/upstream/http1.py)",
            "(consulgw/upstream/connections.py)",
            "(consulgw/upstream/spool.py)",
            "(httptools/",
        ),
    ),
    (
        "response to the client (aiohttp server, the answer writer, the connection guard)",
        (
            "RequestHandler.finish_response ",
            "(aiohttp/web_response.py)",
            "(consulgw/server/listener.py)",
            "(consulgw/server/guard.py)",
        ),
    ),
)
GENERIC: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("gateway code (handler, pipeline, stages, context) and what it calls", ("(consulgw/",)),
    ("yardstick's own code (naive proxy handler / raw relay)", ("(naive_proxy.py)", "(raw_relay.py)")),
    ("request parsing and dispatch (aiohttp server)", ("(aiohttp/",)),
)
COMPONENTS = SPECIFIC + GENERIC
OTHER = "event loop (uvloop) and the rest"


# Where the event loop takes over: frames above it are process bootstrap (main, asyncio.run) on every stack.
_LOOP_ENTRY = ("Runner.run (", "run_app (", "BaseEventLoop.run_forever (", "BaseEventLoop._run_once (")


def _owner(frame: str, rules: tuple[tuple[str, tuple[str, ...]], ...]) -> str | None:
    return next((name for name, marks in rules if any(m in frame for m in marks)), None)


def charge(stack: tuple[str, ...]) -> str:
    """The component a sample with this (root-first) stack is charged to."""
    entry = max((i for i, f in enumerate(stack) if f.startswith(_LOOP_ENTRY)), default=-1)
    frames = stack[entry + 1 :]
    for rules in (SPECIFIC, GENERIC):
        for frame in reversed(frames):
            owner = _owner(frame, rules)
            if owner is not None:
                return owner
    return OTHER


def components(prof: Profile) -> Counter[str]:
    """Samples per component (see SPECIFIC and GENERIC); what matches nothing is the loop itself."""
    out: Counter[str] = Counter()
    for stack, count in prof.stacks:
        out[charge(stack)] += count
    return out


def comparison(rows: list[tuple[str, Profile, float]]) -> str:
    """One table: CPU microseconds per request by component, one column per profiled target."""
    split = [(label, components(prof), prof.samples, per_req) for label, prof, per_req in rows]
    names = [name for name, _ in COMPONENTS] + [OTHER]
    head = "| component | " + " | ".join(f"{label} us/req (%)" for label, *_ in split) + " |"
    lines = [head, "|---|" + "---:|" * len(split)]
    for name in names:
        if not any(counts[name] for _, counts, _, _ in split):
            continue
        cells = [
            f"{counts[name] / samples * per_req:.0f} ({100 * counts[name] / samples:.0f}%)" if counts[name] else "-"
            for _, counts, samples, per_req in split
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| **total CPU per request** | " + " | ".join(f"**{per_req:.0f}**" for *_, per_req in split) + " |")
    return "\n".join(lines) + "\n"


def summary(prof: Profile, *, title: str, top: int = 25, rate: int, requests: float | None, cpu: float | None) -> str:
    """Markdown tables. With ``requests`` (served while sampling) and ``cpu`` (the process's CPU seconds over the
    same window, from /proc) each row also gets CPU microseconds per request: its share of the samples x cpu /
    requests. (Sample counts alone would count time spent runnable but waiting for a core as work.)"""

    def us(count: int) -> str:
        if not requests or not cpu or not prof.samples:
            return "n/a"
        return f"{count / prof.samples * cpu / requests * 1e6:.1f}"

    per_req = (
        f" The process used {cpu:.2f} CPU-seconds for ~{requests:,.0f} requests: "
        f"{cpu / requests * 1e6:.0f} us of CPU per request."
        if requests and cpu
        else ""
    )
    lines = [
        f"#### {title}",
        "",
        f"{prof.samples} samples at {rate} Hz ({prof.samples / rate:.1f} s not idle"
        + (f"; {prof.parked} more of background threads parked in a wait left out" if prof.parked else "")
        + f").{per_req}",
        "",
    ]
    lines += ["| self % | us/req | function (file) |", "|---:|---:|---|"]
    lines += [f"| {prof.pct(c):.1f} | {us(c)} | `{name}` |" for name, c in prof.self_.most_common(top)]
    lines += ["", "| inclusive % | us/req | function (file) |", "|---:|---:|---|"]
    lines += [f"| {prof.pct(c):.1f} | {us(c)} | `{name}` |" for name, c in prof.total.most_common(top)]
    for parent in BREAKDOWNS:
        total, split = breakdown(prof, parent)
        if not total:
            continue
        lines += ["", f"Where `{parent.strip()}` ({prof.pct(total):.1f}%, {us(total)} us/req) goes:", ""]
        lines += ["| % of all | us/req | callee |", "|---:|---:|---|"]
        lines += [f"| {prof.pct(c):.1f} | {us(c)} | `{name}` |" for name, c in split.most_common(12)]
    lines += ["", "| package | self % | inclusive % | self us/req |", "|---|---:|---:|---:|"]
    lines += [
        f"| {pkg} | {prof.pct(c):.1f} | {prof.pct(prof.packages_total[pkg]):.1f} | {us(c)} |"
        for pkg, c in prof.packages.most_common(15)
    ]
    return "\n".join(lines) + "\n"


def _load(
    target_url: str, headers: tuple[str, ...], duration: float, connections: int, into: list[wrk.WrkResult]
) -> threading.Thread:
    def go() -> None:
        try:
            into.append(wrk.run(target_url, duration=duration, connections=connections, headers=headers)[0])
        except (wrk.WrkError, OSError, subprocess.SubprocessError) as exc:
            print(f"bench: wrk under the profiler failed: {exc}", flush=True)

    thread = threading.Thread(target=go, name="wrk-load", daemon=True)
    thread.start()
    return thread


def record_pyspy(
    pyspy: str,
    pid: int,
    *,
    url: str,
    headers: tuple[str, ...],
    duration: float,
    connections: int,
    out: Path,
    fmt: str,
    rate: int = RATE,
) -> tuple[subprocess.CompletedProcess[str], wrk.WrkResult | None, float | None]:
    """py-spy record for ``duration`` seconds while wrk loads the target (wrk starts 1 s earlier, ends 1 s later).

    py-spy pauses the process for each sample (its default, blocking mode): consistent stacks, a little overhead.
    Idle samples (the loop waiting in epoll) are not recorded, so percentages are of the time the process ran."""
    results: list[wrk.WrkResult] = []
    load = _load(url, headers, duration + 2, connections, results)
    time.sleep(1.0)
    argv = [
        pyspy,
        "record",
        "--pid",
        str(pid),
        "--rate",
        str(rate),
        "--duration",
        str(int(duration)),
        "--full-filenames",
        "--format",
        fmt,
        "--output",
        str(out),
    ]
    cpu0 = cpu_seconds(pid)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    cpu1 = cpu_seconds(pid)
    load.join(timeout=duration + 30)
    cpu = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
    return proc, (results[0] if results else None), cpu
