"""CPU per Redis rate-limit decision: ``RedisLimiter.acquire`` of this checkout, 1 and 32 decisions in flight.

    .venv/bin/python bench/micro/ratelimit_redis.py [redis://127.0.0.1:6379/0] [--calls 20000]

The client is built the way the gateway builds it (``redis.asyncio.from_url`` with 0.25 s socket timeouts and
``health_check_interval=5``); the quota is the benchmark's (10^8 requests/s, so every decision admits). "CPU" is this
process's user + system time (rusage) divided by the decisions made: the gateway's share of a decision, event loop
included; Redis's own CPU is not counted. Rows: one key for every request (what ``make bench`` sends: one client IP)
and 32 distinct keys. The first line says which reply parser redis-py uses (hiredis when the ``hiredis`` package is
installed); ``bench/micro/redis_evalsha.py`` shows the bare redis-py command path for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time

import redis.asyncio as redis_asyncio
import uvloop
from redis.utils import HIREDIS_AVAILABLE

from consulgw.errors import RateLimitBackendUnavailable
from consulgw.ratelimit.gcra import Quota
from consulgw.ratelimit.keys import limit_key
from consulgw.ratelimit.redisstore import RedisLimiter

QUOTA = Quota.of(requests=100_000_000, per=1.0)


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(limiter: RedisLimiter, keys: list[str], concurrency: int, calls: int) -> tuple[float, float, int]:
    """(CPU microseconds per decision, decisions per second, decisions that fell to the 250 ms budget) for
    ``calls`` decisions, ``concurrency`` in flight. On a busy shared machine (or a busy shared Redis) a decision can
    miss its budget, as it would in the gateway; it is counted, not fatal."""
    per_worker = calls // concurrency
    missed = 0

    async def worker(index: int) -> None:
        nonlocal missed
        key = keys[index % len(keys)]
        for _ in range(per_worker):
            try:
                decision = await limiter.acquire(key, QUOTA)
            except RateLimitBackendUnavailable:
                missed += 1
                continue
            if not decision.allowed:
                raise RuntimeError("the benchmark quota should admit everything")

    t0, c0 = time.perf_counter(), cpu()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    wall = time.perf_counter() - t0
    done = per_worker * concurrency
    return (cpu() - c0) / done * 1e6, done / wall, missed


async def main(url: str, calls: int) -> None:
    client = redis_asyncio.from_url(url, socket_timeout=0.25, socket_connect_timeout=0.25, health_check_interval=5)
    try:
        limiter = RedisLimiter(client, timeout=0.25)
        one = [limit_key("bench-micro", "ip", "127.0.0.1", quota="x")]
        many = [limit_key("bench-micro", "ip", f"10.0.0.{i}", quota="x") for i in range(32)]
        await measure(limiter, one, 1, 200)  # warm-up: script loaded, connections open
        await measure(limiter, many, 32, 2000)
        print(f"redis-py reply parser: {'hiredis' if HIREDIS_AVAILABLE else 'pure Python'}")
        for label, keys in (("one key", one), ("32 keys", many)):
            for concurrency in (1, 32):
                us, rate, missed = await measure(limiter, keys, concurrency, calls)
                note = f", {missed} missed the 250 ms budget" if missed else ""
                print(
                    f"RedisLimiter.acquire, {label:7s} {concurrency:2d} in flight: {us:6.1f} us CPU/decision, "
                    f"{rate:8.0f}/s{note}"
                )
    finally:
        await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--calls", type=int, default=20000, help="decisions per row (default 20000)")
    ns = parser.parse_args()
    uvloop.run(main(ns.url, ns.calls))
