"""``CacheOwner``: everything of the cache that lives as long as the process, created and closed by the Gateway.

It holds the memory store (one per process, bounded by ``--cache-memory-bytes``), the Redis store over the gateway's
``--redis`` client, the fills in flight, the purge generations read from KV, and the background tasks the cache
starts (stale-while-revalidate refreshes, stores of streamed answers, deleting a purged generation from Redis).
Cache steps are rebuilt with every policy change; the owner is not, so a policy edit keeps the cached entries, the
fills in flight and their waiters.

``close`` cancels every background task and waits for them; a task spawned after that is not started.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Mapping
from types import MappingProxyType, TracebackType
from typing import Any

import structlog

from consulgw.cache.flight import Flights
from consulgw.cache.memory import MemoryStore
from consulgw.cache.redisstore import RedisStore
from consulgw.clock import Clock
from consulgw.errors import CacheUnavailable
from consulgw.metrics import GatewayMetrics
from consulgw.redisclient import RedisClient

DEFAULT_MEMORY_BYTES = 64 * 1024 * 1024
NO_PURGE = "0"  # the generation of a service whose purge key does not exist

log = structlog.get_logger("consulgw.cache")


class CacheOwner:
    def __init__(
        self,
        *,
        clock: Clock,
        metrics: GatewayMetrics,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
        redis: RedisClient | None = None,
        redis_timeout: float = 0.25,
        retry_interval: float = 0.5,
    ) -> None:
        self.clock = clock
        self.metrics = metrics
        self.memory = MemoryStore(max_bytes=memory_bytes, clock=clock, on_size=metrics.cache_memory_bytes.set)
        self.redis = RedisStore(redis, timeout=redis_timeout) if redis is not None else None
        self.flights = Flights()
        self._generations: Mapping[str, str] = MappingProxyType({})
        self._purges_known = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._retry_interval = retry_interval
        self._down_since: float | None = None
        self._next_try = 0.0

    async def __aenter__(self) -> CacheOwner:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- background work -------------------------------------------------------------------------------------------

    def spawn(self, work: Coroutine[Any, Any, Any], *, name: str) -> bool:
        """Run ``work`` in the background, owned here. False (and ``work`` is closed) once the owner is closing."""
        if self._closed:
            work.close()
            return False
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return True

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("cache_task_failed", task=task.get_name(), error=repr(task.exception()))

    @property
    def background(self) -> int:
        return len(self._tasks)

    # -- purge generations -----------------------------------------------------------------------------------------

    def generation(self, service: str) -> str:
        return self._generations.get(service, NO_PURGE)

    def apply_purges(self, generations: Mapping[str, str]) -> None:
        """The generations the current KV snapshot gives (``consulgw.cache.purge.generations``). A service whose
        generation changed is purged here: its memory entries at once, its older Redis generations in the
        background. The first call only records them (nothing cached before this process started is in memory)."""
        old = self._generations
        self._generations = MappingProxyType(dict(generations))
        if not self._purges_known:
            self._purges_known = True
            return
        for service in sorted(set(old) | set(generations)):
            before, now = old.get(service, NO_PURGE), generations.get(service, NO_PURGE)
            if before == now:
                continue
            dropped = self.memory.purge(service)
            log.info("cache_purged", service=service, generation=now, memory_entries=dropped)
            if self.redis is not None:
                self.spawn(self._drop_redis(service, now), name=f"consulgw-cache-purge-{service}")

    async def _drop_redis(self, service: str, generation: str) -> None:
        assert self.redis is not None
        try:
            dropped = await self.redis.drop_other_generations(service, generation)
        except CacheUnavailable as exc:  # the entries are unreachable anyway; their TTL removes them
            log.warning("cache_purge_incomplete", service=service, error=repr(exc.__cause__))
            return
        log.info("cache_purged_redis", service=service, generation=generation, keys=dropped)

    # -- Redis outages: log once, skip the backend briefly --------------------------------------------------------

    def backend_usable(self) -> bool:
        if self._down_since is None:
            return True
        now = self.clock.monotonic()
        if now >= self._next_try:
            self._next_try = now + self._retry_interval  # this caller probes; the others skip for a while
            return True
        return False

    def backend_failed(self, service: str, exc: BaseException) -> None:
        now = self.clock.monotonic()
        self._next_try = now + self._retry_interval
        if self._down_since is None:
            self._down_since = now
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            log.warning("cache_backend_down", service=service, error=f"{type(cause).__name__}: {cause}")

    def backend_ok(self, service: str) -> None:
        if self._down_since is not None:
            log.info(
                "cache_backend_recovered",
                service=service,
                down_seconds=round(self.clock.monotonic() - self._down_since, 1),
            )
            self._down_since = None
