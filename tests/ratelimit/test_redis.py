"""The Redis store against the real Redis at 127.0.0.1:6379 (``make test`` guarantees it) and a private
redis-server that the tests stop and restart."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from consulgw.metrics import GatewayMetrics
from consulgw.pipeline.stages.ratelimit import RateLimitStage
from consulgw.policy.model import RateLimitPolicy
from consulgw.ratelimit.gcra import Quota
from consulgw.ratelimit.keys import limit_key
from consulgw.ratelimit.redisstore import RedisLimiter
from tests.ratelimit.support import CLIENT_IP_HEADER, FakeClock, PrivateRedis, make_deps, serve_stages

REDIS_URL = "redis://127.0.0.1:6379/0"


def _client(url: str = REDIS_URL) -> Redis:
    return Redis.from_url(url, socket_timeout=0.25, socket_connect_timeout=0.25)


@pytest.fixture
def service() -> str:
    return f"rltest-{uuid.uuid4().hex[:12]}"  # a unique key namespace per test


@pytest.fixture
async def redis_client() -> AsyncIterator[Redis]:
    client = _client()
    try:
        yield client
    finally:
        await client.aclose()


async def test_exactly_n_admitted_across_three_processes(service: str) -> None:
    n, attempts_per_client = 50, 60
    clients = [_client() for _ in range(3)]  # three independent connection pools = three gateway processes
    limiters = [RedisLimiter(c, timeout=2.0) for c in clients]
    quota = Quota.of(requests=n, per=60.0)
    key = limit_key(service, "ip", "203.0.113.7")
    try:
        results = await asyncio.gather(
            *(limiter.acquire(key, quota) for limiter in limiters for _ in range(attempts_per_client))
        )
        ttl = await clients[0].pttl(key)
    finally:
        for c in clients:
            await c.aclose()
    admitted = [d for d in results if d.allowed]
    assert len(admitted) == n
    # Every decision was atomic: each admitted request saw a different "remaining", from n-1 down to 0.
    assert sorted(d.remaining for d in admitted) == list(range(n))
    assert all(d.remaining == 0 and d.retry_after >= 1 for d in results if not d.allowed)
    assert 0 < ttl <= 61_000


async def test_keys_are_namespaced_hashed_and_expire(service: str, redis_client: Redis) -> None:
    limiter = RedisLimiter(redis_client, timeout=2.0)
    key = limit_key(service, "header.x-api-key", "secret-key-value")
    await limiter.acquire(key, Quota.of(requests=5, per=2.0))
    names = [k.decode() async for k in redis_client.scan_iter(match=f"consulgw:rl:{service}:*")]
    digest = hashlib.sha256(b"secret-key-value").hexdigest()
    assert names == [f"consulgw:rl:{service}:header.x-api-key:{digest}"]
    assert 0 < await redis_client.pttl(names[0]) <= 1_400  # 0.4 s of debt + 1 s of slack


async def test_stage_headers_and_429_over_redis(service: str, redis_client: Redis) -> None:
    policy = RateLimitPolicy(requests=3, per=30.0, backend="redis")
    metrics = GatewayMetrics()
    async with aiohttp.ClientSession() as http:
        deps = make_deps(service=service, http=http, clock=FakeClock(), redis=redis_client, metrics=metrics)
        async with serve_stages((RateLimitStage.from_policy(policy, deps),), service=service) as url:
            seen = []
            for _ in range(4):
                async with http.get(url, headers={CLIENT_IP_HEADER: "198.51.100.1"}) as resp:
                    seen.append((resp.status, dict(resp.headers)))
            async with http.get(url, headers={CLIENT_IP_HEADER: "198.51.100.2"}) as resp:
                other = resp.status
    assert [s for s, _ in seen] == [200, 200, 200, 429]
    assert [h["RateLimit-Remaining"] for _, h in seen] == ["2", "1", "0", "0"]
    assert all(h["RateLimit-Limit"] == "3" for _, h in seen)
    assert all(1 <= int(h["RateLimit-Reset"]) <= 30 for _, h in seen)
    assert 1 <= int(seen[3][1]["Retry-After"]) <= 10
    assert "Retry-After" not in seen[0][1]
    assert other == 200  # another client IP has its own bucket
    assert metrics.rate_limited.labels(service)._value.get() == 1


@pytest.mark.parametrize("on_error", [pytest.param("allow", id="allow"), pytest.param("deny", id="deny")])
async def test_redis_down_follows_policy_and_recovers(on_error: str, private_redis: PrivateRedis, service: str) -> None:
    policy = RateLimitPolicy(requests=2, per=60.0, backend="redis", on_backend_error=on_error)  # type: ignore[arg-type]
    metrics = GatewayMetrics()
    clock = FakeClock()
    redis = _client(f"redis://127.0.0.1:{private_redis.port}/0")
    try:
        async with aiohttp.ClientSession() as http:
            deps = make_deps(service=service, http=http, clock=clock, redis=redis, metrics=metrics)
            async with serve_stages((RateLimitStage.from_policy(policy, deps),), service=service) as url:

                async def hit() -> tuple[int, dict[str, str]]:
                    async with http.get(url) as resp:
                        return resp.status, dict(resp.headers)

                assert (await hit())[0] == 200  # Redis up: normal decision
                with capture_logs() as logs:
                    private_redis.stop()
                    down = []
                    for _ in range(6):
                        down.append(await hit())
                        clock.advance(0.2)  # some requests probe Redis again, the others fail fast
                    private_redis.start()
                    clock.advance(1.0)
                    recovered = [await hit() for _ in range(3)]
                    clock.advance(1.0)
                    recovered += [await hit() for _ in range(2)]
    finally:
        await redis.aclose()

    expected = 200 if on_error == "allow" else 503
    assert [s for s, _ in down] == [expected] * 6
    for _, headers in down:
        assert headers["RateLimit-Limit"] == "2"
        assert "RateLimit-Remaining" not in headers  # unknown while Redis is down; never invented
        if on_error == "deny":
            assert headers["Retry-After"] == "1"
    outcome = "allowed" if on_error == "allow" else "denied"
    assert metrics.rate_limit_backend_errors.labels(service, outcome)._value.get() >= 6
    # Back: the restarted Redis has an empty key space, so the limit starts afresh. (A request that meets a stale
    # pooled connection may still fall under the backend-error policy; real decisions carry RateLimit-Remaining.)
    decided = [(s, h["RateLimit-Remaining"]) for s, h in recovered if "RateLimit-Remaining" in h]
    assert len(decided) >= 4, recovered
    assert decided[:2] == [(200, "1"), (200, "0")]
    assert all(d == (429, "0") for d in decided[2:])
    events = [e["event"] for e in logs]
    assert events.count("rate_limit_backend_down") == 1  # once per outage, not per request
    assert events.count("rate_limit_backend_recovered") == 1
