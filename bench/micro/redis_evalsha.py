"""redis-py (asyncio) CPU per EVALSHA like RedisLimiter.acquire's, one at a time, 32 in flight, and pipelined.

    .venv/bin/python bench/micro/redis_evalsha.py [redis://127.0.0.1:6379/0]

Uses the gateway's client settings (socket timeouts, health_check_interval=5) and a trivial script returning two
integers, like the GCRA script's reply. Run it again in a venv with `hiredis` installed to see the parser's effect.
"""

from __future__ import annotations

import asyncio
import resource
import sys
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as redis_asyncio
import uvloop

SCRIPT = "return {1, 0}"
CALLS = 20000


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(name: str, call: Callable[[], Awaitable[object]], concurrency: int) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            await call()

    t0, c0 = time.perf_counter(), cpu()
    await asyncio.gather(*(one() for _ in range(CALLS)))
    wall = time.perf_counter() - t0
    print(
        f"{name:28s} {concurrency:2d} in flight: {(cpu() - c0) / CALLS * 1e6:6.1f} us CPU/call, {CALLS / wall:8.0f}/s"
    )


async def main(url: str) -> None:
    client = redis_asyncio.from_url(url, socket_timeout=0.25, socket_connect_timeout=0.25, health_check_interval=5)
    script = client.register_script(SCRIPT)
    await script(keys=["bench:micro"], args=[1, 2])

    async def plain() -> object:
        return await script(keys=["bench:micro"], args=[1, 2])

    async def with_timeout() -> object:
        async with asyncio.timeout(0.25):
            return await script(keys=["bench:micro"], args=[1, 2])

    for name, call in (("evalsha", plain), ("evalsha in asyncio.timeout", with_timeout)):
        for concurrency in (1, 32):
            await measure(name, call, concurrency)
    c0 = cpu()
    for _ in range(CALLS // 32):
        pipe = client.pipeline(transaction=False)
        for _ in range(32):
            await script(keys=["bench:micro"], args=[1, 2], client=pipe)
        await pipe.execute()
    print(f"{'evalsha, pipelines of 32':28s}              {(cpu() - c0) / CALLS * 1e6:6.1f} us CPU/call")
    await client.aclose()


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/0"))
