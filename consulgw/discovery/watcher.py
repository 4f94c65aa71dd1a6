"""Watch Consul with blocking queries and publish immutable CatalogSnapshots.

One blocking watch of ``/v1/catalog/services`` decides which services are routed (or named by ``watch_also``: services
a policy sends traffic to without routing them); each watched service gets its own
blocking watch of ``/v1/health/service/<name>`` (its own index: a change to one of 1,000 services re-reads only that
one); one blocking watch of ``/v1/kv/<prefix>?recurse`` reads the KV documents. Watches only update the watcher's
state and mark what changed; one publisher task turns bursts of changes into ONE new CatalogSnapshot per
``coalesce_window`` and publishes nothing when nothing differs. Errors never remove anything: the last good state
stays until Consul answers again. See docs/architecture-discovery.md.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TypeVar

import structlog

from consulgw.clock import Clock
from consulgw.discovery.blocking import Backoff, BlockingIndex, IndexStep, TokenBucket
from consulgw.discovery.consul_api import ConsulClient, Result
from consulgw.errors import DiscoveryError
from consulgw.model.snapshot import CatalogSnapshot, Instance, ServiceSnapshot

T = TypeVar("T")

IsRouted = Callable[[str, tuple[str, ...]], bool]
Publish = Callable[[CatalogSnapshot], None]

_EMPTY_KV: Mapping[str, bytes] = MappingProxyType({})


@dataclass(frozen=True, slots=True, kw_only=True)
class WatcherStatus:
    """What the admin API shows and /-/ready judges staleness by."""

    last_success: float | None = None  # clock.monotonic() of the last successful Consul response
    services_index: int = 0  # last X-Consul-Index of /v1/catalog/services
    kv_index: int = 0  # last X-Consul-Index of the KV prefix
    watches: int = 0  # running blocking watches (catalog + KV + one per routed service)
    errors_total: int = 0  # failed Consul requests since run() started
    consul_reachable: bool = False  # Consul has answered and no watch's latest request failed
    complete: bool = False  # a complete snapshot has been published
    failing_watches: int = 0  # watches whose latest request failed (backing off, will retry)


class _Watch:
    """Identity of one per-service watch task, so a superseded task can never write state."""

    __slots__ = ("name", "task")

    def __init__(self, name: str) -> None:
        self.name = name
        self.task: asyncio.Task[None] | None = None


class CatalogWatcher:
    """Blocking watches of the catalog, each routed service's health and the KV prefix -> CatalogSnapshots."""

    def __init__(
        self,
        client: ConsulClient,
        *,
        kv_prefix: str,
        is_routed: IsRouted,
        coalesce_window: float,
        clock: Clock,
        rng: random.Random,
        wait: float = 300.0,
        logger: structlog.typing.FilteringBoundLogger | None = None,
        rate: float = 1.0,
        burst: int = 2,
        min_backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        if coalesce_window < 0:
            raise ValueError(f"coalesce_window must be >= 0, got {coalesce_window!r}")
        if wait <= 0:
            raise ValueError(f"wait must be > 0, got {wait!r}")
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, got rate={rate!r} burst={burst!r}")
        if min_backoff <= 0 or max_backoff <= 0:
            raise ValueError(f"backoff bounds must be > 0, got {min_backoff!r} and {max_backoff!r}")
        self._client = client
        prefix = kv_prefix.lstrip("/")
        self._prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"  # as the settings normalise it
        self._is_routed = is_routed
        self._also: frozenset[str] = frozenset()  # watched even without route tags (watch_also)
        self._coalesce = coalesce_window
        self._clock = clock
        self._rng = rng
        self._wait = wait
        self._log: structlog.typing.FilteringBoundLogger = logger or structlog.get_logger("consulgw.discovery")
        self._rate = rate
        self._burst = burst
        self._min_backoff = min(min_backoff, max_backoff)
        self._max_backoff = max_backoff
        self._running = False
        self._tg: asyncio.TaskGroup | None = None
        self._changed: asyncio.Event | None = None
        self._reset_state()

    def _reset_state(self) -> None:
        self._watches: dict[str, _Watch] = {}
        self._services: dict[str, ServiceSnapshot] = {}  # keys are always a subset of _watches
        self._dirty: set[str] = set()
        self._kv: Mapping[str, bytes] | None = None
        self._kv_dirty = False
        self._catalog_read = False
        self._listing: Mapping[str, tuple[str, ...]] | None = None  # the last /v1/catalog/services answer
        self._published: CatalogSnapshot | None = None
        self._services_index = 0
        self._kv_index = 0
        self._errors = 0
        self._failing: set[object] = set()  # one token per watch whose latest request failed
        self._last_success: float | None = None

    @property
    def status(self) -> WatcherStatus:
        return WatcherStatus(
            last_success=self._last_success,
            services_index=self._services_index,
            kv_index=self._kv_index,
            watches=(2 + len(self._watches)) if self._running else 0,
            errors_total=self._errors,
            consul_reachable=self._running and self._last_success is not None and not self._failing,
            complete=self._published is not None,
            failing_watches=len(self._failing),
        )

    @property
    def snapshot(self) -> CatalogSnapshot | None:
        """The last published snapshot (None before the first complete one)."""
        return self._published

    async def run(self, publish: Publish) -> None:
        """Watch until cancelled, calling ``publish`` with each new CatalogSnapshot (the first one is complete).

        Consul errors never end it (they are retried); cancelling it cancels every watch and re-raises
        CancelledError. An exception from ``is_routed`` is a bug and ends it (as an ExceptionGroup).
        """
        if self._running:
            raise RuntimeError("CatalogWatcher.run() is already running")
        self._reset_state()
        self._changed = asyncio.Event()
        self._running = True
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self._catalog_watch(), name="consul-watch:catalog")
                tg.create_task(self._kv_watch(), name="consul-watch:kv")
                tg.create_task(self._publisher(publish), name="consul-watch:publisher")
        finally:
            self._tg = None
            self._running = False
            self._watches.clear()

    # -- one blocking loop, shared by every watch -----------------------------------------------------------------

    async def _blocking_loop(
        self,
        endpoint: str,
        fetch: Callable[[int], Awaitable[Result[T]]],
        apply: Callable[[Result[T], IndexStep], None],
    ) -> None:
        index = BlockingIndex()
        backoff = Backoff(self._rng, base=self._min_backoff, cap=self._max_backoff)
        bucket = TokenBucket(self._clock, rate=self._rate, burst=self._burst)
        token = object()  # this watch, in the set of failing watches
        try:
            while True:
                delay = bucket.reserve()
                if delay > 0:
                    await self._clock.sleep(delay)
                try:
                    result = await fetch(index.index)
                except DiscoveryError as exc:
                    index.fail()
                    retry_in = backoff.failure()
                    self._errors += 1
                    self._failing.add(token)
                    self._log.warning(
                        "consul_watch_failed",
                        endpoint=endpoint,
                        error=str(exc),
                        retry_in=round(retry_in, 3),
                        failures=backoff.failures,
                    )
                    await self._clock.sleep(retry_in)
                    continue
                self._last_success = self._clock.monotonic()
                self._failing.discard(token)
                if backoff.failures:
                    self._log.info("consul_watch_recovered", endpoint=endpoint, failures=backoff.failures)
                backoff.success()
                step = index.advance(result.index)
                if step.reset:
                    self._log.info(
                        "consul_index_reset", endpoint=endpoint, previous=step.previous, returned=step.returned
                    )
                apply(result, step)
        finally:
            self._failing.discard(token)  # a stopped watch no longer counts against reachability

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()

    # -- catalog --------------------------------------------------------------------------------------------------

    async def _catalog_watch(self) -> None:
        await self._blocking_loop(
            "/v1/catalog/services",
            lambda index: self._client.catalog_services(index, self._wait),
            self._apply_catalog,
        )

    def watch_also(self, names: frozenset[str]) -> None:
        """Also watch these services when they exist, with or without route tags (the one input besides the
        catalog: the view names the services its policies send traffic to). Applied to the last listing at once."""
        if names == self._also:
            return
        self._also = names
        if self._listing is not None:
            self._reconcile(self._listing)

    def _apply_catalog(self, result: Result[Mapping[str, tuple[str, ...]]], step: IndexStep) -> None:
        self._services_index = max(result.index, 1)
        self._listing = result.value
        self._reconcile(result.value)

    def _reconcile(self, listing: Mapping[str, tuple[str, ...]]) -> None:
        also = self._also
        routed = {name for name, tags in listing.items() if name in also or self._is_routed(name, tags)}
        gone = [name for name in self._watches if name not in routed]
        new = sorted(name for name in routed if name not in self._watches)
        for name in gone:
            self._stop_service(name)
        for name in new:
            self._start_service(name)
        if gone or not self._catalog_read:  # new services wake the publisher with their first health read
            self._catalog_read = True
            self._wake()

    def _start_service(self, name: str) -> None:
        if self._tg is None:  # run() is shutting down
            return
        watch = _Watch(name)
        self._watches[name] = watch
        watch.task = self._tg.create_task(self._health_watch(watch), name=f"consul-watch:health:{name}")

    def _stop_service(self, name: str) -> None:
        watch = self._watches.pop(name)
        if watch.task is not None:
            watch.task.cancel()
        if self._services.pop(name, None) is not None:
            self._dirty.add(name)

    # -- health, one watch per routed service ---------------------------------------------------------------------

    async def _health_watch(self, watch: _Watch) -> None:
        await self._blocking_loop(
            f"/v1/health/service/{watch.name}",
            lambda index: self._client.health_service(watch.name, index, self._wait),
            lambda result, step: self._apply_health(watch, result),
        )

    def _apply_health(self, watch: _Watch, result: Result[tuple[Instance, ...]]) -> None:
        if self._watches.get(watch.name) is not watch:  # superseded: the service left and maybe came back
            return
        instances = tuple(sorted(result.value, key=lambda inst: inst.id))
        old = self._services.get(watch.name)
        if old is not None and old.instances == instances:
            return  # a return is no guarantee of change (output-only check updates bump the index too)
        self._services[watch.name] = ServiceSnapshot(name=watch.name, index=max(result.index, 1), instances=instances)
        self._dirty.add(watch.name)
        self._wake()

    # -- KV -------------------------------------------------------------------------------------------------------

    async def _kv_watch(self) -> None:
        await self._blocking_loop(
            f"/v1/kv/{self._prefix}",
            lambda index: self._client.kv_list(self._prefix, index, self._wait),
            self._apply_kv,
        )

    def _apply_kv(self, result: Result[Mapping[str, bytes]], step: IndexStep) -> None:
        self._kv_index = max(result.index, 1)
        size = len(self._prefix)
        kv = {key[size:]: value for key, value in result.value.items() if key.startswith(self._prefix) and key[size:]}
        if self._kv is not None and dict(self._kv) == kv:
            return
        self._kv = MappingProxyType(kv)
        self._kv_dirty = True
        self._wake()

    # -- publishing -----------------------------------------------------------------------------------------------

    async def _publisher(self, publish: Publish) -> None:
        changed = self._changed
        if changed is None:  # pragma: no cover - run() always sets it first
            raise RuntimeError("publisher started outside run()")
        backoff = Backoff(self._rng, base=self._min_backoff, cap=self._max_backoff)
        last_publish: float | None = None
        while True:
            await changed.wait()
            if self._published is not None and self._coalesce > 0 and last_publish is not None:
                # At most one snapshot per window: a change after a quiet window is published at once (an isolated
                # change costs no window); changes that follow within it are gathered into the next snapshot.
                wait = last_publish + self._coalesce - self._clock.monotonic()
                if wait > 0:
                    await self._clock.sleep(wait)
            changed.clear()
            snapshot = self._next_snapshot()
            if snapshot is None:
                continue
            try:
                publish(snapshot)
            except Exception as exc:  # noqa: BLE001 - a consumer's bug must not stop discovery
                # The consumer did not take this snapshot: the next one is diffed against the last one it took.
                self._dirty |= snapshot.changed
                self._kv_dirty = self._kv_dirty or snapshot.kv_changed
                retry_in = backoff.failure()
                self._log.error(
                    "catalog_publish_failed",
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in=round(retry_in, 3),
                    exc_info=True,
                )
                await self._clock.sleep(retry_in)
                changed.set()
                continue
            backoff.success()
            self._published = snapshot
            last_publish = self._clock.monotonic()
            self._log.info(
                "catalog_snapshot_published",
                services=len(snapshot.services),
                changed=len(snapshot.changed),
                kv_changed=snapshot.kv_changed,
                services_index=snapshot.services_index,
                kv_index=snapshot.kv_index,
            )

    def _next_snapshot(self) -> CatalogSnapshot | None:
        previous = self._published
        if previous is None:
            complete = self._catalog_read and self._kv is not None and len(self._services) == len(self._watches)
            if not complete:
                return None
            changed = frozenset(self._services)
            kv_changed = True
        else:
            changed = frozenset(n for n in self._dirty if previous.services.get(n) != self._services.get(n))
            kv_changed = self._kv_dirty and dict(previous.kv) != dict(self._kv or _EMPTY_KV)
        self._dirty.clear()
        self._kv_dirty = False
        if previous is not None and not changed and not kv_changed:
            return None
        return CatalogSnapshot(
            services=MappingProxyType(dict(self._services)),
            kv=self._kv if self._kv is not None else _EMPTY_KV,
            services_index=self._services_index,
            kv_index=self._kv_index,
            complete=True,
            changed=changed,
            kv_changed=kv_changed,
        )
