"""Capacity benchmark for ``consulgw dev-agent`` (a script, not a test).

Starts the agent as a subprocess (``python -m consulgw dev-agent --listen 127.0.0.1:PORT
--http-max-conns-per-client 0``: thousands of parked queries come from one client IP, far past Consul's default
of 200 connections per client, so the limit is lifted as it must be on a real Consul for such a load) so its memory
can be read cleanly from /proc/<pid>/status (VmRSS), then:

1. parks ``--queries`` concurrent blocking queries (half ``/v1/health/service/<svc>``, half ``/v1/kv/<key>``, each
   with the current index and a long ``wait``) and reports the agent's RSS before/after and per parked query;
2. parks ``--watchers`` blocking GETs on one KV key, writes the key, and reports the time from the write to the last
   wake-up; repeated ``--rounds`` times, median reported.

Client side: raises RLIMIT_NOFILE to its hard limit and uses an aiohttp connector without a connection limit.
Everything talks to 127.0.0.1 only and stops by itself.

    .venv/bin/python bench/devagent_capacity.py --queries 5000 --watchers 1000 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import resource
import shlex
import socket
import statistics
import sys
import time
from dataclasses import dataclass
from types import SimpleNamespace

import aiohttp

SERVICES = 50
KEYS = 100


@dataclass(frozen=True, slots=True)
class Round:
    write_to_last_ms: float
    write_to_median_ms: float
    woke: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def raise_fd_limit(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def wait_ready(session: aiohttp.ClientSession, base: str, proc: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"dev agent exited with status {proc.returncode}")
        try:
            async with session.get(f"{base}/v1/status/leader") as resp:
                if resp.status == 200 and (await resp.json()) not in ("", None):
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("dev agent did not become ready within 30s")


async def settle_rss(pid: int, seconds: float = 1.0) -> int:
    """RSS once it stops moving (or after a few samples)."""
    last = rss_kib(pid)
    for _ in range(10):
        await asyncio.sleep(seconds / 4)
        now = rss_kib(pid)
        if abs(now - last) < 64:
            return now
        last = now
    return last


class SentCounter:
    """Counts requests whose headers reached the socket (aiohttp tracing)."""

    def __init__(self) -> None:
        self.sent = 0
        self.target = 0
        self.reached = asyncio.Event()
        self.config = aiohttp.TraceConfig()
        self.config.on_request_headers_sent.append(self._on_sent)

    async def _on_sent(self, session: aiohttp.ClientSession, ctx: SimpleNamespace, params: object) -> None:
        self.sent += 1
        if self.target and self.sent >= self.target:
            self.reached.set()

    async def wait_for(self, count: int, timeout: float) -> None:
        self.target = count
        if self.sent >= count:
            return
        self.reached.clear()
        try:
            await asyncio.wait_for(self.reached.wait(), timeout)
        except TimeoutError:
            raise RuntimeError(f"only {self.sent} of {count} requests were sent within {timeout:.0f}s") from None


async def blocking_get(session: aiohttp.ClientSession, url: str) -> float:
    async with session.get(url) as resp:
        await resp.read()
        if resp.status not in (200, 404):
            raise RuntimeError(f"{url} -> {resp.status}")
    return time.monotonic()


async def seed(session: aiohttp.ClientSession, base: str) -> None:
    for i in range(SERVICES):
        body = {
            "Name": f"bench-svc-{i}",
            "Port": 8000 + i,
            "Tags": ["bench"],
            "Check": {"TTL": "1h", "Status": "passing"},
        }
        async with session.put(f"{base}/v1/agent/service/register", json=body) as resp:
            assert resp.status == 200, await resp.text()
    for i in range(KEYS):
        async with session.put(f"{base}/v1/kv/bench/key-{i}", data=f"value-{i}".encode()) as resp:
            assert resp.status == 200, await resp.text()


async def index_of(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url) as resp:
        await resp.read()
        return int(resp.headers["X-Consul-Index"])


async def park_queries(base: str, pid: int, queries: int, wait: str) -> tuple[int, int, float]:
    counter = SentCounter()
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, trace_configs=[counter.config]) as session:
        health_index = {i: await index_of(session, f"{base}/v1/health/service/bench-svc-{i}") for i in range(SERVICES)}
        kv_index = {i: await index_of(session, f"{base}/v1/kv/bench/key-{i}") for i in range(KEYS)}
        before = await settle_rss(pid)
        started = time.monotonic()
        tasks = []
        for n in range(queries):
            if n % 2 == 0:
                i = (n // 2) % SERVICES
                url = f"{base}/v1/health/service/bench-svc-{i}?index={health_index[i]}&wait={wait}"
            else:
                i = (n // 2) % KEYS
                url = f"{base}/v1/kv/bench/key-{i}?index={kv_index[i]}&wait={wait}"
            tasks.append(asyncio.create_task(blocking_get(session, url)))
        await counter.wait_for(queries, timeout=120)
        open_s = time.monotonic() - started
        await asyncio.sleep(1.0)  # let the agent finish parsing and parking the last ones
        after = await settle_rss(pid)
        early = sum(t.done() for t in tasks)
        if early:
            raise RuntimeError(f"{early} blocking queries returned before any write (they should be parked)")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return before, after, open_s


async def watcher_round(base: str, watchers: int, wait: str, n: int) -> Round:
    key = f"bench/watched-{n}"
    counter = SentCounter()
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, trace_configs=[counter.config]) as session:
        async with session.put(f"{base}/v1/kv/{key}", data=b"before") as resp:
            assert resp.status == 200
        index = await index_of(session, f"{base}/v1/kv/{key}")
        sent_before = counter.sent
        tasks = [
            asyncio.create_task(blocking_get(session, f"{base}/v1/kv/{key}?index={index}&wait={wait}"))
            for _ in range(watchers)
        ]
        await counter.wait_for(sent_before + watchers, timeout=120)
        await asyncio.sleep(1.0)
        if any(t.done() for t in tasks):
            raise RuntimeError("a watcher returned before the write")
        write_at = time.monotonic()
        async with session.put(f"{base}/v1/kv/{key}", data=b"after") as resp:
            assert resp.status == 200
        done = await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
    lags = sorted((t - write_at) * 1000 for t in done)
    return Round(write_to_last_ms=lags[-1], write_to_median_ms=statistics.median(lags), woke=len(lags))


def table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    line = "+" + "-" * (width + 2) + "+" + "-" * 24 + "+"
    out = [line]
    for k, v in rows:
        out.append(f"| {k:<{width}} | {v:>22} |")
    out.append(line)
    return "\n".join(out)


async def main_async(args: argparse.Namespace) -> int:
    limit = raise_fd_limit(args.queries + args.watchers + 1024)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "consulgw", "dev-agent", "--listen", f"127.0.0.1:{port}", "--node", "bench-node",
           "--http-max-conns-per-client", "0"]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, base, proc)
            await seed(session, base)
        idle = await settle_rss(proc.pid)
        before, after, open_s = await park_queries(base, proc.pid, args.queries, args.wait)
        released = await settle_rss(proc.pid, 2.0)
        rounds = [await watcher_round(base, args.watchers, args.wait, n) for n in range(args.rounds)]
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()

    per_query = (after - before) * 1024 / args.queries
    last = statistics.median(r.write_to_last_ms for r in rounds)
    median = statistics.median(r.write_to_median_ms for r in rounds)
    print(f"# consulgw dev-agent capacity, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M UTC}")
    print(f"# command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"# agent: {shlex.join(cmd)} (pid {proc.pid}); client RLIMIT_NOFILE {limit}; cpus {os.cpu_count()}")
    print(
        table(
            [
                ("agent RSS idle (seeded)", f"{idle / 1024:.1f} MiB"),
                ("parked blocking queries", f"{args.queries}"),
                ("time to open and send all", f"{open_s:.2f} s"),
                ("agent RSS before", f"{before / 1024:.1f} MiB"),
                ("agent RSS with all parked", f"{after / 1024:.1f} MiB"),
                ("memory per parked query", f"{per_query / 1024:.1f} KiB"),
                ("agent RSS after release", f"{released / 1024:.1f} MiB"),
                ("watchers on one key", f"{args.watchers}"),
                ("rounds", f"{args.rounds}"),
                ("write -> last wake (median)", f"{last:.1f} ms"),
                ("write -> median wake (median)", f"{median:.1f} ms"),
                ("write -> last wake (per round)", ", ".join(f"{r.write_to_last_ms:.0f}" for r in rounds) + " ms"),
            ]
        )
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=5000, help="concurrent parked blocking queries (default 5000)")
    parser.add_argument("--watchers", type=int, default=1000, help="blocking watchers on one KV key (default 1000)")
    parser.add_argument("--rounds", type=int, default=5, help="watcher rounds; the median is reported (default 5)")
    parser.add_argument("--wait", default="5m", help="wait= for parked queries (default 5m; must outlast the run)")
    args = parser.parse_args()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
