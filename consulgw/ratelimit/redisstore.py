"""The Redis GCRA store (``backend: redis``): exact across any number of gateway processes and hosts.

Each decision is ONE Lua script, run atomically by Redis (``register_script``: EVALSHA, with an EVAL fallback when
the server answers NOSCRIPT, e.g. after a restart or SCRIPT FLUSH). The script reads the clock with Redis ``TIME``,
so gateways whose clocks disagree still share one timeline, then reads the key's theoretical arrival time, decides,
and writes it back with a TTL that ends when the key would be full again (an expired key and a full key are the same
thing in GCRA, so nothing is lost and Redis memory stays bounded by the active keys). There is no read-modify-write
across round trips, which is what made APISIX's limiter admit several times its limit (anchors.md section 9.8).

Redis 7 replicates the script's effects (SET with the computed value), not the script, so ``TIME`` inside it is
safe with replicas; ``redis.replicate_commands()`` is called for Redis 3.2-4.x, where it must be asked for.

Every call is bounded by ``timeout`` seconds (``asyncio.timeout``; redis-py drops a connection whose command was
cancelled, so a late reply can never be read by the next command). Errors are translated once, here, to
``RateLimitBackendUnavailable``; the stage applies the policy's ``on_backend_error``.
"""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis
from redis.exceptions import RedisError

from consulgw.errors import RateLimitBackendUnavailable
from consulgw.ratelimit.gcra import Decision, Quota, decide
from consulgw.tracing.api import NO_TRACER, Tracer

# KEYS[1] = limit key; ARGV[1] = interval (µs), ARGV[2] = tolerance (µs). Returns {admitted (0/1), tat - now (µs)}.
GCRA_SCRIPT = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local new_tat = tat + interval
if new_tat - now <= tolerance then
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.floor((new_tat - now) / 1000) + 1000)
  return {1, new_tat - now}
end
return {0, tat - now}
"""


class RedisLimiter:
    """GCRA decisions in Redis. Cheap to build (one per stage); the connection pool belongs to the Redis client."""

    def __init__(self, redis: Redis, *, timeout: float = 0.25, tracer: Tracer = NO_TRACER) -> None:
        self._script = redis.register_script(GCRA_SCRIPT)
        self._timeout = timeout
        self._tracer = tracer  # a CLIENT span per decision (consulgw.tracing)

    async def acquire(self, key: str, quota: Quota) -> Decision:
        try:
            with self._tracer.redis_call("EVALSHA"):
                async with asyncio.timeout(self._timeout):
                    reply = await self._script(keys=[key], args=[quota.interval_us, quota.tolerance_us])
        except (RedisError, OSError, TimeoutError) as exc:
            raise RateLimitBackendUnavailable(
                "the rate limit backend is unavailable", headers={"Retry-After": "1"}
            ) from exc
        try:
            allowed, ahead = int(reply[0]), int(reply[1])
        except (TypeError, ValueError, IndexError) as exc:
            raise RateLimitBackendUnavailable(
                "the rate limit backend gave an unexpected answer", headers={"Retry-After": "1"}
            ) from exc
        return decide(allowed == 1, ahead, quota)
