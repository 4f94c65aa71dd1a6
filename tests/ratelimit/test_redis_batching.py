"""The Redis store batches the decisions of concurrent requests into one script call, and stays exact.

Against a private redis-server (its command statistics are ours alone) and a fake Redis that stays silent or answers
nonsense, to drive the failure paths of a batch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field

import pytest
from redis.asyncio import Redis

from consulgw.errors import RateLimitBackendUnavailable
from consulgw.ratelimit.gcra import Decision, Quota
from consulgw.ratelimit.keys import limit_key
from consulgw.ratelimit.redisstore import RedisLimiter
from tests.ratelimit.support import PrivateRedis


def _client(url: str, timeout: float = 2.0) -> Redis:
    return Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


async def _script_calls(client: Redis) -> int:
    stats = await client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval"))


async def test_concurrent_decisions_share_script_calls_and_stay_exact(private_redis: PrivateRedis) -> None:
    client = _client(private_redis.url)
    limiter = RedisLimiter(client, timeout=10.0)
    small, large = Quota.of(requests=10, per=60.0), Quota.of(requests=40, per=60.0, burst=2)
    a, b = limit_key("svc", "ip", "192.0.2.1"), limit_key("svc", "ip", "192.0.2.2")
    try:
        await client.config_resetstat()
        asks: list[Awaitable[Decision]] = []
        for _ in range(100):  # interleaved: one script call decides both keys, each several times
            asks += (limiter.acquire(a, small), limiter.acquire(b, large))
        results = await asyncio.gather(*asks)
        calls = await _script_calls(client)
    finally:
        await client.aclose()
    for decisions, quota in ((results[0::2], small), (results[1::2], large)):
        admitted = [d for d in decisions if d.allowed]
        assert len(admitted) == quota.capacity
        assert sorted(d.remaining for d in admitted) == list(range(quota.capacity))  # every decision saw the last
        assert all(d.remaining == 0 and d.retry_after >= 1 for d in decisions if not d.allowed)
    assert calls <= 10, calls  # 200 decisions: one alone, then batches of up to 64 (a NOSCRIPT retry at most)


async def test_a_batch_of_one_key_admits_exactly_what_single_calls_would(private_redis: PrivateRedis) -> None:
    # The same 30 decisions, once one at a time and once all at once, on two fresh keys: the same answers.
    client = _client(private_redis.url)
    limiter = RedisLimiter(client, timeout=10.0)
    quota = Quota.of(requests=7, per=3600.0, burst=3)
    try:
        single = [await limiter.acquire(limit_key("svc", "ip", "one-by-one"), quota) for _ in range(30)]
        batched = await asyncio.gather(*(limiter.acquire(limit_key("svc", "ip", "together"), quota) for _ in range(30)))
    finally:
        await client.aclose()
    assert [(d.allowed, d.remaining) for d in batched] == [(d.allowed, d.remaining) for d in single]
    assert sum(d.allowed for d in batched) == 10


@dataclass
class FakeRedis:
    """Speaks enough RESP for redis-py's connection set-up; EVALSHA/EVAL get silence or a wrong-shaped answer."""

    mode: str  # "silent" or "nonsense"
    port: int = 0
    script_calls: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ValueError):
            while True:
                count = int((await reader.readline()).strip().lstrip(b"*"))
                words = []
                for _ in range(count):
                    size = int((await reader.readline()).strip().lstrip(b"$"))
                    words.append((await reader.readexactly(size + 2))[:-2])
                if words[0].upper() == b"HELLO":  # no RESP3 here: redis-py falls back to RESP2
                    writer.write(b"-ERR unknown command 'HELLO'\r\n")
                    await writer.drain()
                    continue
                if words[0].upper() in (b"EVALSHA", b"EVAL"):
                    self.script_calls += 1
                    if self.mode == "silent":
                        continue
                writer.write(b"+OK\r\n")
                await writer.drain()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield f"redis://127.0.0.1:{self.port}/0"
        finally:
            server.close()
            for writer in self.writers:
                writer.close()
            await server.wait_closed()


async def test_waiting_decisions_fail_within_their_budget_when_redis_is_silent() -> None:
    fake = FakeRedis("silent")
    async with fake.running() as url:
        client = _client(url)
        limiter = RedisLimiter(client, timeout=0.3)
        try:
            results = await asyncio.gather(
                *(limiter.acquire(f"k{i % 3}", Quota.of(requests=5, per=1.0)) for i in range(20)),
                return_exceptions=True,
            )
        finally:
            await limiter.aclose()
            await client.aclose()
    assert all(isinstance(r, RateLimitBackendUnavailable) for r in results), results
    assert all(r.headers == {"Retry-After": "1"} for r in results if isinstance(r, RateLimitBackendUnavailable))
    assert 1 <= fake.script_calls < 20  # the 19 that waited went together (or were never sent)


async def test_a_wrong_answer_is_translated_for_single_and_batched_decisions() -> None:
    async with FakeRedis("nonsense").running() as url:
        client = _client(url)
        limiter = RedisLimiter(client, timeout=5.0)
        try:
            results = await asyncio.gather(
                *(limiter.acquire("k", Quota.of(requests=5, per=1.0)) for _ in range(5)), return_exceptions=True
            )
        finally:
            await client.aclose()
    assert all(isinstance(r, RateLimitBackendUnavailable) for r in results), results
    assert {r.message for r in results if isinstance(r, RateLimitBackendUnavailable)} == {
        "the rate limit backend gave an unexpected answer"
    }


async def test_aclose_answers_waiting_and_batched_decisions_at_once() -> None:
    async with FakeRedis("silent").running() as url:
        client = _client(url, timeout=60.0)
        limiter = RedisLimiter(client, timeout=60.0, max_batch=4)
        quota = Quota.of(requests=5, per=1.0)
        first = asyncio.create_task(limiter.acquire("k", quota))  # goes alone, from its own task
        await asyncio.sleep(0)
        others = [asyncio.create_task(limiter.acquire("k", quota)) for _ in range(6)]  # a full batch of 4 + 2 waiting
        await asyncio.sleep(0.05)
        try:
            await limiter.aclose()
            done, pending = await asyncio.wait(others, timeout=10)  # far below the 60 s budget
        finally:
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
            await client.aclose()
    assert not pending
    for task in done:
        with pytest.raises(RateLimitBackendUnavailable):
            task.result()


def test_a_batch_size_below_one_is_refused() -> None:
    client = Redis.from_url("redis://127.0.0.1:1/0")
    with pytest.raises(ValueError, match="max_batch"):
        RedisLimiter(client, max_batch=0)
