"""Blocking watches of other datacenters, for the services a ``failover`` policy names.

:class:`RemoteWatches` owns one blocking watch of ``/v1/health/service/<name>?dc=<dc>`` per (service, datacenter)
pair it is told to watch (``watch``); the local :class:`~consulgw.discovery.watcher.CatalogWatcher` runs them in its task group and puts
its snapshots into every CatalogSnapshot (``CatalogSnapshot.remote``), so they reach the view (and, with
``--workers``, every worker) the same way local ones do. These watches are few (failover is configured per
service) and come on top of ``--consul-max-conns``' budget for the local datacenter: one connection each.

Like the local watches, an error never removes anything: a datacenter that cannot be reached (``500 No path to
datacenter``, ``Remote DC has no server currently reachable``) keeps its last answer, and is retried with backoff.
A pair no policy names any more is stopped and forgotten.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping
from types import MappingProxyType

import structlog

from consulgw.clock import Clock
from consulgw.discovery.blocking import Backoff, BlockingIndex, TokenBucket
from consulgw.discovery.consul_api import ConsulClient
from consulgw.errors import DiscoveryError
from consulgw.model.snapshot import ServiceSnapshot

Pair = tuple[str, str]  # (service, datacenter)
MOVED_RATE = 10.0  # requests per second after an answer that moved the index (the local watcher's default)


class RemoteWatches:
    """One blocking watch per wanted (service, datacenter); ``changed(service)`` is called when one's answer differs."""

    def __init__(
        self,
        client: ConsulClient,
        *,
        clock: Clock,
        rng: random.Random,
        wait: float,
        changed: Callable[[str], None],
        logger: structlog.typing.FilteringBoundLogger | None = None,
        rate: float = 1.0,
        burst: int = 2,
        min_backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        self._client = client
        self._clock = clock
        self._rng = rng
        self._wait = wait
        self._changed = changed
        self._log: structlog.typing.FilteringBoundLogger = logger or structlog.get_logger("consulgw.discovery")
        self._rate = rate
        self._burst = burst
        self._min_backoff = min(min_backoff, max_backoff)
        self._max_backoff = max_backoff
        self._wanted: frozenset[Pair] = frozenset()
        self._tasks: dict[Pair, asyncio.Task[None]] = {}
        self._snapshots: dict[Pair, ServiceSnapshot] = {}
        self._failing: set[Pair] = set()
        self._group: asyncio.TaskGroup | None = None
        self.errors = 0

    @property
    def wanted(self) -> frozenset[Pair]:
        return self._wanted

    @property
    def running(self) -> int:
        return len(self._tasks)

    @property
    def failing(self) -> frozenset[Pair]:
        return frozenset(self._failing)

    def snapshots(self) -> Mapping[Pair, ServiceSnapshot]:
        """The last answer of every wanted pair that has answered (an immutable copy)."""
        return MappingProxyType(dict(self._snapshots))

    def watch(self, pairs: frozenset[Pair]) -> None:
        """Watch exactly these pairs from now on (started at once while running; dropped ones are forgotten)."""
        if pairs == self._wanted:
            return
        self._wanted = pairs
        for pair in [p for p in self._tasks if p not in pairs]:
            self._tasks.pop(pair).cancel()
            self._failing.discard(pair)
            if self._snapshots.pop(pair, None) is not None:
                self._changed(pair[0])
        self._start_missing()

    def start(self, group: asyncio.TaskGroup) -> None:
        """Run the wanted watches as tasks of ``group`` (the CatalogWatcher's), now and whenever ``watch`` adds one;
        no task at all while no policy names another datacenter."""
        self._group = group
        self._start_missing()

    def stop(self) -> None:
        """The group is ending (its tasks are cancelled by it): forget the tasks, keep nothing running."""
        self._group = None
        self._tasks.clear()
        self._failing.clear()

    def _start_missing(self) -> None:
        group = self._group
        if group is None:
            return
        for pair in sorted(self._wanted):
            if pair not in self._tasks:
                self._tasks[pair] = group.create_task(
                    self._watch(pair), name=f"consul-watch:remote:{pair[1]}:{pair[0]}"
                )

    async def _watch(self, pair: Pair) -> None:
        name, dc = pair
        client = self._client.for_datacenter(dc)
        endpoint = f"/v1/health/service/{name}?dc={dc}"
        index = BlockingIndex()
        backoff = Backoff(self._rng, base=self._min_backoff, cap=self._max_backoff)
        still = TokenBucket(self._clock, rate=self._rate, burst=self._burst)
        moved = TokenBucket(self._clock, rate=MOVED_RATE, burst=10)  # as the local watches: real changes read fast
        bucket = still
        first = True
        while True:
            if not first:
                delay = bucket.reserve()
                if delay > 0:
                    await self._clock.sleep(delay)
            first = False
            try:
                result = await client.health_service(name, index.index, self._wait)
            except DiscoveryError as exc:
                index.fail()
                self.errors += 1
                self._failing.add(pair)
                retry_in = backoff.failure()
                self._log.warning(
                    "consul_remote_watch_failed",
                    endpoint=endpoint,
                    datacenter=dc,
                    error=str(exc),
                    retry_in=round(retry_in, 3),
                    failures=backoff.failures,
                )
                await self._clock.sleep(retry_in)
                continue
            if backoff.failures:
                self._log.info("consul_remote_watch_recovered", endpoint=endpoint, datacenter=dc)
            backoff.success()
            self._failing.discard(pair)
            step = index.advance(result.index)
            if step.reset:
                self._log.info("consul_index_reset", endpoint=endpoint, previous=step.previous)
            instances = tuple(sorted(result.value, key=lambda inst: inst.id))
            old = self._snapshots.get(pair)
            if self._tasks.get(pair) is not asyncio.current_task():
                return  # no longer wanted
            changed = old is None or old.instances != instances
            bucket = moved if changed or (step.previous and step.returned > step.previous) else still
            if changed:
                self._snapshots[pair] = ServiceSnapshot(name=name, index=max(result.index, 1), instances=instances)
                self._changed(name)
