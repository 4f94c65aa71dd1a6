"""The Redis GCRA store (``backend: redis``): exact across any number of gateway processes and hosts.

Decisions are made by ONE Lua script, run atomically by Redis (``register_script``: EVALSHA, with an EVAL fallback
when the server answers NOSCRIPT, e.g. after a restart or SCRIPT FLUSH). The script reads the clock with Redis
``TIME``, so gateways whose clocks disagree still share one timeline, then for each key reads its theoretical
arrival time, decides, and writes it back with a TTL that ends when the key would be full again (an expired key and
a full key are the same thing in GCRA, so nothing is lost and Redis memory stays bounded by the active keys). There
is no read-modify-write across round trips, which is what made APISIX's limiter admit several times its limit
(anchors.md section 9.8).

**Batching.** A decision costs the gateway far more CPU in redis-py's command path than Redis spends on it, so the
decisions of concurrent requests share one round trip: a request that finds no round trip in flight is sent at once,
from its own task (no added latency or work when idle); requests that arrive while one is in flight wait for it and
then go together in one script call, sent by a task of the limiter (at most ``max_batch`` keys per call; a full
batch is sent at once). The script decides the keys of a
batch in order, each seeing the state the previous ones left (a key may appear several times), so a batch of N
decisions admits exactly what N single decisions in that order would: exactness does not depend on batching.

Redis 7 replicates the script's effects (SET with the computed value), not the script, so ``TIME`` inside it is
safe with replicas; ``redis.replicate_commands()`` is called for Redis 3.2-4.x, where it must be asked for. A script
call may only touch keys of one hash slot on a Redis Cluster (``redis+cluster://``), so there a batch is split into
one call per slot; every call still decides its keys in order.

Every decision is bounded by ``timeout`` seconds from the moment it is asked, waiting for its batch included
(``asyncio.timeout``), and so is every round trip (redis-py drops a connection whose command was cancelled, so a
late reply can never be read by the next command). Errors are translated once, here, to
``RateLimitBackendUnavailable`` (its ``__cause__`` is the client's error); the stage applies the policy's
``on_backend_error``. The tasks that send batches belong to the limiter; each ends within ``timeout``, and
``aclose()`` cancels those still running.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from redis.asyncio import RedisCluster
from redis.crc import key_slot

from consulgw.errors import RateLimitBackendUnavailable
from consulgw.ratelimit.gcra import Decision, Quota, decide
from consulgw.redisclient import RedisClient
from consulgw.tracing.api import NO_TRACER, Tracer

# KEYS[i] = limit key of decision i; ARGV[2i-1], ARGV[2i] = its interval and tolerance (µs).
# Returns {admitted_1 (0/1), tat_1 - now (µs), admitted_2, ...}: one pair per decision, in order.
# Repeated keys are read once and written once (state[key]); a key that admitted nothing is not written.
GCRA_SCRIPT = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local state, admitted, out = {}, {}, {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local interval = tonumber(ARGV[2 * i - 1])
  local tolerance = tonumber(ARGV[2 * i])
  local tat = state[key]
  if tat == nil then tat = tonumber(redis.call('GET', key)) or now end
  if tat < now then tat = now end
  local new_tat = tat + interval
  if new_tat - now <= tolerance then
    state[key] = new_tat
    admitted[key] = true
    out[2 * i - 1] = 1
    out[2 * i] = new_tat - now
  else
    state[key] = tat
    out[2 * i - 1] = 0
    out[2 * i] = tat - now
  end
end
for key in pairs(admitted) do
  local tat = state[key]
  redis.call('SET', key, string.format('%.0f', tat), 'PX', math.floor((tat - now) / 1000) + 1000)
end
return out
"""


@dataclass(frozen=True, slots=True)
class _Ask:
    key: str
    quota: Quota
    answer: asyncio.Future[tuple[bool, int]]


def _unavailable(message: str, cause: BaseException | None) -> RateLimitBackendUnavailable:
    error = RateLimitBackendUnavailable(message, headers={"Retry-After": "1"})
    error.__cause__ = cause
    return error


def _pairs(reply: object, count: int) -> list[tuple[bool, int]]:
    """The script's flat reply as (admitted, tat - now) per decision; ValueError/TypeError when it is not that."""
    if not isinstance(reply, list) or len(reply) != 2 * count:
        raise ValueError(f"expected a list of {2 * count} integers, got {type(reply).__name__}")
    return [(int(reply[2 * i]) == 1, int(reply[2 * i + 1])) for i in range(count)]


class RedisLimiter:
    """GCRA decisions in Redis, batched across concurrent requests. Cheap to build (one per stage); the connection
    pool belongs to the Redis client. Used from one event loop."""

    def __init__(
        self, redis: RedisClient, *, timeout: float = 0.25, max_batch: int = 64, tracer: Tracer = NO_TRACER
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch!r}")
        self._script = redis.register_script(GCRA_SCRIPT)
        self._timeout = timeout
        self._max_batch = max_batch
        self._waiting: list[_Ask] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._cluster = isinstance(redis, RedisCluster)
        self._tracer = tracer  # a CLIENT span per round trip (consulgw.tracing)

    async def acquire(self, key: str, quota: Quota) -> Decision:
        loop = asyncio.get_running_loop()
        if self._in_flight == 0:
            return await self._alone(key, quota, loop)
        answer: asyncio.Future[tuple[bool, int]] = loop.create_future()
        self._waiting.append(_Ask(key, quota, answer))
        if len(self._waiting) >= self._max_batch:
            self._send(loop)
        # The budget as a plain timer on the future (a fraction of asyncio.timeout's cost): when it fires first,
        # the answer fails and its batch skips it.
        expiry = loop.call_later(self._timeout, self._expire, answer)
        try:
            allowed, ahead = await answer
        finally:
            expiry.cancel()
        return decide(allowed, ahead, quota)

    def _expire(self, answer: asyncio.Future[tuple[bool, int]]) -> None:
        if not answer.done():
            cause = TimeoutError(f"no rate-limit decision within {self._timeout:g} s")
            answer.set_exception(_unavailable("the rate limit backend is unavailable", cause))

    async def _alone(self, key: str, quota: Quota, loop: asyncio.AbstractEventLoop) -> Decision:
        """Nothing in flight: this decision goes at once, from the caller's own task (no queue, no extra task).
        Requests arriving meanwhile wait and go together when it is answered."""
        self._in_flight += 1
        try:
            with self._tracer.redis_call("EVALSHA"):
                async with asyncio.timeout(self._timeout):
                    reply = await self._script(keys=[key], args=[quota.interval_us, quota.tolerance_us])
        except Exception as exc:  # whatever the client raises: see _exchange
            raise _unavailable("the rate limit backend is unavailable", exc) from exc
        finally:
            self._done(loop)
        try:
            ((allowed, ahead),) = _pairs(reply, 1)
        except (TypeError, ValueError) as exc:
            raise _unavailable("the rate limit backend gave an unexpected answer", exc) from exc
        return decide(allowed, ahead, quota)

    def _done(self, loop: asyncio.AbstractEventLoop) -> None:
        """A round trip ended (answered, failed or cancelled): what waited for it goes now."""
        self._in_flight -= 1
        if self._waiting and self._in_flight == 0:
            self._send(loop)

    def _send(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._waiting[: self._max_batch]
        del self._waiting[: self._max_batch]
        if not self._cluster:
            self._start(batch, loop)
            return
        by_slot: dict[int, list[_Ask]] = {}
        for ask in batch:
            by_slot.setdefault(key_slot(ask.key.encode()), []).append(ask)
        for group in by_slot.values():
            self._start(group, loop)

    def _start(self, batch: list[_Ask], loop: asyncio.AbstractEventLoop) -> None:
        self._in_flight += 1
        ended = [False]  # set by _exchange; a task cancelled before it ever ran ends in the callback instead
        task = loop.create_task(self._exchange(batch, loop, ended), name="consulgw-ratelimit-batch")
        self._tasks.add(task)

        def finished(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            if not ended[0]:
                self._fail(batch, "the rate limit backend is unavailable", None)
                self._done(loop)

        task.add_done_callback(finished)

    async def _exchange(self, batch: list[_Ask], loop: asyncio.AbstractEventLoop, ended: list[bool]) -> None:
        try:
            keys = [ask.key for ask in batch]
            args: list[int] = []
            for ask in batch:
                args += (ask.quota.interval_us, ask.quota.tolerance_us)
            try:
                with self._tracer.redis_call("EVALSHA"):
                    async with asyncio.timeout(self._timeout):
                        reply = await self._script(keys=keys, args=args)
            except Exception as exc:  # noqa: BLE001
                # RedisError, OSError, the budget running out (TimeoutError), or whatever else the client lets escape
                # on a confused connection (seen: AttributeError on an odd HELLO reply): no decision from the
                # backend, which the policy's on_backend_error answers. Cancellation is not an Exception.
                self._fail(batch, "the rate limit backend is unavailable", exc)
                return
            try:
                pairs = _pairs(reply, len(batch))
            except (TypeError, ValueError) as exc:
                self._fail(batch, "the rate limit backend gave an unexpected answer", exc)
                return
            for ask, pair in zip(batch, pairs, strict=True):
                if not ask.answer.done():  # its caller may have given up (timeout, client gone)
                    ask.answer.set_result(pair)
        except asyncio.CancelledError as exc:  # aclose(), or the loop shutting down
            self._fail(batch, "the rate limit backend is unavailable", exc)
            raise
        finally:
            ended[0] = True
            self._done(loop)

    @staticmethod
    def _fail(batch: list[_Ask], message: str, cause: BaseException | None) -> None:
        for ask in batch:
            if not ask.answer.done():
                ask.answer.set_exception(_unavailable(message, cause))

    async def aclose(self) -> None:
        """Cancel the batches in flight; their callers, and those still waiting, get ``RateLimitBackendUnavailable``."""
        waiting, self._waiting = self._waiting, []
        self._fail(waiting, "the rate limiter is closed", None)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
