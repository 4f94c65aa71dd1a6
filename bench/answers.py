"""Answers the gateway makes itself (issue 10): a cache hit next to a proxied request, and a composite's latency next
to its slowest call.

``run_answers(sup, workdir=..., ...)`` is one self-contained section for ``bench/run.py`` (the lead wires it in next
to the data-path rows): it starts its own dev agent, a small upstream with fixed delays (``/delay/<ms>``), and one
gateway, then measures with wrk in alternating rounds, like the other sections, and returns a Markdown block.
``upstream_url`` (e.g. the nginx upstream of ``bench/run.py``) serves the cache and proxied rows when given.

Run alone: ``.venv/bin/python bench/answers.py --rounds 3 --duration 10``.

Rows:

* ``proxied``: a route without policy, to the upstream;
* ``cache hit``: the same upstream behind ``"cache": {"mode": "override", "ttl": "1h"}``: after the first request
  every answer is a hit (checked before measuring), so the row is the cost of the cache step and the answer alone;
* ``slowest call``: the slowest service of the composite (``/delay/20``), through the gateway;
* ``composite``: ``/dashboard``, three calls (5, 10 and 20 ms) in parallel, ``merge: nest``. With parallel calls its
  latency should sit a little above the slowest call's, not at the sum (35 ms).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness import stack
from harness.http import Client, Consul, HttpError
from harness.procs import Component, ComponentFailed, Supervisor, free_port, http_status
from harness.throughput import Series, Target, cpu_us_per_request, run_rounds

UPSTREAM = """
import asyncio, json, sys
from aiohttp import web

async def handle(request):
    parts = request.path.strip("/").split("/")
    if len(parts) >= 2 and parts[-2] == "delay":
        await asyncio.sleep(int(parts[-1]) / 1000)
    return web.Response(body=json.dumps({"path": request.path, "ok": True}).encode(), content_type="application/json")

app = web.Application()
app.router.add_route("*", "/{tail:.*}", handle)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""

CACHED = {"cache": {"mode": "override", "ttl": "1h"}}
COMPOSITE = {
    "route": "/dashboard",
    "timeout": "2s",
    "calls": {
        "fast": {"service": "slowsvc", "path": "/delay/5", "required": True},
        "medium": {"service": "slowsvc", "path": "/delay/10", "required": True},
        "slow": {"service": "slowsvc", "path": "/delay/20", "required": True},
    },
    "merge": "nest",
}


def start_upstream(sup: Supervisor, workdir: Path) -> tuple[Component, str]:
    script = workdir / "delay_upstream.py"
    script.write_text(UPSTREAM)
    port = free_port()
    component = sup.start(
        "delay upstream", [sys.executable, str(script), str(port)], log=workdir / "delay-upstream.log"
    )
    url = f"http://127.0.0.1:{port}"
    sup.wait_http(component, url + "/")
    return component, url


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def _wait_ready(gw: stack.Gateway, timeout: float = 30.0) -> None:
    """Until the routes answer: the cached route (twice, so it is a hit), the slowest call and the composite."""
    deadline = time.monotonic() + timeout
    wanted = ("/proxied/", "/cached/", "/slowsvc/delay/20", "/dashboard")
    while time.monotonic() < deadline:
        if all(http_status(gw.url + path, timeout=5) == 200 for path in wanted):
            return
        time.sleep(0.2)
    raise ComponentFailed(f"{gw.component.name}: routes of the answers section not ready; log:\n{gw.component.tail()}")


def _cache_hits(gw: stack.Gateway) -> float:
    admin = Client(gw.admin_url, timeout=10)
    try:
        status, data = admin.request("GET", "/metrics")
    finally:
        admin.close()
    if status != 200:
        raise HttpError(f"GET {gw.admin_url}/metrics -> {status}")
    total = 0.0
    for line in data.decode().splitlines():
        if line.startswith("consulgw_cache_hits_total{") and 'service="cached"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def run_answers(
    sup: Supervisor,
    *,
    workdir: Path,
    upstream_url: str | None = None,
    rounds: int = 3,
    duration: float = 10,
    warmup: float = 2,
    threads: int = 1,
    connections: int = 32,
    latency_connections: int = 4,
    max_others_cpu: float = 60.0,
) -> str:
    """The section's Markdown (two tables and how they were made)."""
    delay, delay_url = start_upstream(sup, workdir)
    target_url = upstream_url or delay_url
    agent, agent_url = stack.start_dev_agent(sup, workdir, label="dev agent (answers)")
    consul = Consul(agent_url)
    try:
        port = _port(target_url)
        consul.register(name="proxied", service_id="proxied-1", port=port, tags=["gw.route=/proxied strip=/proxied"])
        consul.register(name="cached", service_id="cached-1", port=port, tags=["gw.route=/cached strip=/cached"])
        consul.register(
            name="slowsvc", service_id="slowsvc-1", port=_port(delay_url), tags=["gw.route=/slowsvc strip=/slowsvc"]
        )
        consul.put_kv("consulgw/services/cached", json.dumps(CACHED).encode())
        consul.put_kv("consulgw/composites/dashboard", json.dumps(COMPOSITE).encode())
    finally:
        consul.close()
    gw = stack.start_gateway(sup, consul_url=agent_url, log=None, label="gateway (answers)")
    _wait_ready(gw)
    before = _cache_hits(gw)
    if http_status(gw.url + "/cached/", timeout=5) != 200 or _cache_hits(gw) <= before:
        raise ComponentFailed("the cached route does not answer from the cache; nothing to measure")

    def alive() -> None:
        for component in (delay, agent, gw.component):
            sup.check(component)

    pid = gw.component.pid
    cache_rows, cache_rounds = run_rounds(
        [
            Target(key="proxied", label="proxied (no policy)", url=gw.url + "/proxied/", pid=pid),
            Target(key="cache_hit", label="cache hit (memory)", url=gw.url + "/cached/", pid=pid),
        ],
        rounds=rounds,
        duration=duration,
        threads=threads,
        connections=connections,
        warmup=warmup,
        max_others_cpu=max_others_cpu,
        between=alive,
        ours=sup.groups,
    )
    composite_rows, composite_rounds = run_rounds(
        [
            Target(
                key="slowest", label="slowest call alone (20 ms upstream)", url=gw.url + "/slowsvc/delay/20", pid=pid
            ),
            Target(key="composite", label="composite: 5 + 10 + 20 ms calls", url=gw.url + "/dashboard", pid=pid),
        ],
        rounds=rounds,
        duration=duration,
        threads=threads,
        connections=latency_connections,
        warmup=warmup,
        max_others_cpu=max_others_cpu,
        between=alive,
        ours=sup.groups,
    )
    hits = _cache_hits(gw) - before
    for component in (gw.component, agent, delay):
        sup.stop(component)
    upstream = (
        "the bench's nginx upstream"
        if upstream_url
        else "a small aiohttp upstream (the same process as the slow service)"
    )
    return (
        f"Cache hit next to a proxied request (wrk -t{threads} -c{connections} -d{duration:g}s, upstream: {upstream}):\n\n"
        + table(cache_rows)
        + f"\n{cache_rounds.describe()}; {hits:,.0f} cache hits counted by the gateway during the cache rows.\n\n"
        + f"A composite next to its slowest call (wrk -t{threads} -c{latency_connections} -d{duration:g}s; the three "
        "calls answer after 5, 10 and 20 ms and run in parallel, so the sum would be 35 ms):\n\n"
        + table(composite_rows)
        + f"\n{composite_rounds.describe()}.\n"
    )


def table(series: dict[str, Series]) -> str:
    rows = [
        "| target | req/s median (min-max) | p50 ms | p99 ms | gateway CPU % | CPU us/req | others' CPU % | non-2xx / socket errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in series.values():
        rps = s.values(lambda x: x.result.requests_per_s)
        p50 = s.median(lambda x: x.result.p50_ms)
        p99 = s.median(lambda x: x.result.p99_ms)
        cpu = s.median(lambda x: x.cpu_pct)
        per_request = s.median(cpu_us_per_request)
        others = s.median(lambda x: x.other_cpu_pct)
        bad = sum(x.result.non_2xx for x in s.samples), sum(x.result.socket_errors for x in s.samples)
        rows.append(
            f"| {s.target.label} | {statistics.median(rps):,.0f} ({min(rps):,.0f}-{max(rps):,.0f}) "
            f"| {p50:.2f} | {p99:.2f} | {_pct(cpu)} | {_pct(per_request)} | {_pct(others)} | {bad[0]} / {bad[1]} |"
            if p50 is not None and p99 is not None
            else f"| {s.target.label} | - | - | - | - | - | - | - |"
        )
    return "\n".join(rows) + "\n"


def _pct(value: float | None) -> str:
    return f"{value:.0f}" if value is not None else "-"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/answers.py", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=10)
    p.add_argument("--warmup", type=float, default=2)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--latency-connections", type=int, default=4)
    p.add_argument("--no-install", action="store_true", help="never apt-get install wrk")
    args = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        stack.ensure_tools(("wrk",), install=not args.no_install)
    except stack.SetupError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="consulgw-bench-answers-"))
    try:
        with Supervisor() as sup:
            text = run_answers(
                sup,
                workdir=workdir,
                rounds=args.rounds,
                duration=args.duration,
                warmup=args.warmup,
                connections=args.connections,
                latency_connections=args.latency_connections,
            )
    except (ComponentFailed, HttpError) as exc:
        print(f"bench: FAILED: {exc}\nbench: logs kept in {workdir}", file=sys.stderr)
        return 1
    print(text)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
