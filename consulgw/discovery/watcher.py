"""Watch Consul with a bounded number of connections and publish immutable CatalogSnapshots.

Four datacenter-wide blocking watches say what changed: ``/v1/catalog/services`` (which services exist and are
routed; its index moves on every instance registered, changed or removed anywhere), ``/v1/health/state/critical``
and ``/v1/health/state/warning`` (which checks are not passing: a health change names its service, or its node) and
``/v1/kv/<prefix>?recurse`` (the policy documents). Routed services (and those named by ``watch_also``: services a
policy sends traffic to without routing them) are then read one by one, never all at once:

- up to ``max_conns - 4 - readers`` services hold their own blocking watch of ``/v1/health/service/<name>`` (live):
  a change is read the moment Consul makes it, for that service alone;
- the others are parked (see :mod:`consulgw.discovery.coverage`): their last answer and index are kept, and a few
  reader connections read them again when a change signal names them (a new route tag, a check that stops or starts
  passing), or when an index-only probe finds that their index moved. Index moves of the catalog that no live watch
  explains start one fast probe cycle over the parked services.

So the watcher never holds more than ``max_conns`` requests to Consul at once, whatever the number of services.
Watches only update the watcher's state and mark what changed; one publisher task turns bursts of changes into ONE
new CatalogSnapshot per ``coalesce_window`` and publishes nothing when nothing differs. Errors never remove anything:
the last good state stays until Consul answers again. See docs/architecture-discovery.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal, TypeVar

import structlog

from consulgw.clock import Clock
from consulgw.discovery.blocking import Backoff, BlockingIndex, IndexStep, TokenBucket
from consulgw.discovery.consul_api import ConsulClient, Result
from consulgw.discovery.coverage import Coverage, Job
from consulgw.discovery.health import CheckStatus
from consulgw.discovery.remote import RemoteWatches
from consulgw.errors import ConsulPermissionDenied, DiscoveryError
from consulgw.model.snapshot import CatalogSnapshot, Instance, ServiceSnapshot

T = TypeVar("T")

IsRouted = Callable[[str, tuple[str, ...]], bool]
Publish = Callable[[CatalogSnapshot], None]
KvAccess = Literal["unknown", "ok", "filtered", "denied"]

_EMPTY_KV: Mapping[str, bytes] = MappingProxyType({})
FIXED_WATCHES: Final = 4  # catalog, critical checks, warning checks, KV
MIN_CONNS: Final = FIXED_WATCHES + 1  # and at least one reader
MAX_READERS: Final = 8
_STATES: Final = ("critical", "warning")
DENIED_RETRY: Final = 10.0  # seconds between two reads of a KV prefix the token may not read (at most ``wait``)
KV_HINT: Final = (
    'grant the gateway\'s token key_prefix "{prefix}" {{ policy = "read" }} (deploy/consul/gateway-policy.hcl)'
)


def reader_count(max_conns: int) -> int:
    """Connections kept for reads and probes of parked services (the rest are blocking watches)."""
    return max(1, min(MAX_READERS, (max_conns - FIXED_WATCHES) // 8))


@dataclass(frozen=True, slots=True, kw_only=True)
class WatcherStatus:
    """What the admin API shows and /-/ready judges staleness by."""

    last_success: float | None = None  # clock.monotonic() of the last successful Consul response
    services_index: int = 0  # last X-Consul-Index of /v1/catalog/services
    kv_index: int = 0  # last X-Consul-Index of the KV prefix
    watches: int = 0  # running blocking watches: the 4 datacenter-wide ones + one per live service
    errors_total: int = 0  # failed Consul requests since run() started
    consul_reachable: bool = False  # Consul has answered and no watch's latest request failed
    complete: bool = False  # a complete snapshot has been published
    failing_watches: int = 0  # watches whose latest request failed (backing off, will retry)
    live: int = 0  # routed services with a blocking watch of their own
    parked: int = 0  # routed services without one (read on change signals and probes)
    max_conns: int = 0  # the connection budget (--consul-max-conns)
    remote_watches: int = 0  # blocking watches of other datacenters (failover policies), beyond max_conns
    remote_failing: int = 0  # of those, the ones whose latest request failed
    in_flight: int = 0  # requests to Consul right now (each holds one connection)
    max_in_flight: int = 0  # the most requests ever in flight at once since run() started
    probes_total: int = 0  # index-only probes of parked services
    reads_total: int = 0  # full reads of parked services
    kv_access: KvAccess = "unknown"  # ok | filtered (some keys hidden by ACLs) | denied (403) | unknown (not read)
    kv_error: str = ""  # Consul's answer when kv_access is not ok


class _Watch:
    """Identity of one per-service watch task, so a superseded task can never write state."""

    __slots__ = ("name", "start", "task")

    def __init__(self, name: str, start: int) -> None:
        self.name = name
        self.start = start  # the index the watch blocks on first (0: read at once)
        self.task: asyncio.Task[None] | None = None


class CatalogWatcher:
    """Datacenter-wide watches + a bounded set of per-service watches and readers -> CatalogSnapshots."""

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
        max_conns: int = 64,
        residency: float = 30.0,
        probe_rate: float = 1000.0,
        explain_grace: float = 0.05,
        moved_rate: float = 10.0,
    ) -> None:
        if coalesce_window < 0:
            raise ValueError(f"coalesce_window must be >= 0, got {coalesce_window!r}")
        if wait <= 0:
            raise ValueError(f"wait must be > 0, got {wait!r}")
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, got rate={rate!r} burst={burst!r}")
        if min_backoff <= 0 or max_backoff <= 0:
            raise ValueError(f"backoff bounds must be > 0, got {min_backoff!r} and {max_backoff!r}")
        if max_conns < MIN_CONNS:
            raise ValueError(f"max_conns must be >= {MIN_CONNS}, got {max_conns!r}")
        if explain_grace < 0:
            raise ValueError(f"explain_grace must be >= 0, got {explain_grace!r}")
        if moved_rate <= 0:
            raise ValueError(f"moved_rate must be > 0, got {moved_rate!r}")
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
        self._max_conns = max_conns
        self._readers = reader_count(max_conns)
        self._residency = residency
        self._probe_rate = probe_rate
        self._explain_grace = explain_grace
        self._moved_rate = moved_rate
        self._running = False
        self._tg: asyncio.TaskGroup | None = None
        self._changed: asyncio.Event | None = None
        self._jobs: asyncio.Event | None = None
        self._recovered: asyncio.Event | None = None
        self._remote = RemoteWatches(
            client, clock=clock, rng=rng, wait=wait, changed=self._remote_changed, logger=self._log,
            rate=rate, burst=burst, min_backoff=min_backoff, max_backoff=max_backoff,
        )  # fmt: skip
        self._reset_state()

    def _reset_state(self) -> None:
        self._coverage = Coverage(
            capacity=self._max_conns - FIXED_WATCHES - self._readers,
            residency=self._residency,
            idle_period=self._wait,
            burst_rate=self._probe_rate,
        )
        self._catalog: dict[str, tuple[str, ...]] = {}  # every service in the last catalog answer -> its tags
        self._routed_by_tags: dict[str, tuple[tuple[str, ...], bool]] = {}  # name -> (tags, is_routed(tags))
        self._watches: dict[str, _Watch] = {}  # live services
        self._services: dict[str, ServiceSnapshot] = {}  # keys are always a subset of the routed services
        self._indexes: dict[str, int] = {}  # routed service -> index of the answer held
        self._node_services: dict[str, set[str]] = {}  # node -> routed services with an instance on it
        self._nonpassing: dict[str, frozenset[CheckStatus]] = {}  # "critical" / "warning" -> checks in that state
        self._observed: deque[int] = deque(maxlen=512)  # recent per-service indexes (explain catalog moves)
        self._unexplained: dict[int, float] = {}  # catalog index -> when to start probing if nothing explains it
        self._hunted: set[int] = set()  # catalog indexes the current fast probe cycle looks for
        self._dirty: set[str] = set()
        self._remote_dirty: set[str] = set()  # services whose other-datacenter answers changed
        self._kv: Mapping[str, bytes] | None = None
        self._kv_dirty = False
        self._kv_access: KvAccess = "unknown"
        self._kv_error = ""
        self._catalog_read = False
        self._published: CatalogSnapshot | None = None
        self._services_index = 0
        self._kv_index = 0
        self._errors = 0
        self._failing: set[object] = set()  # one token per watch or reader whose latest request failed
        self._last_success: float | None = None
        self._in_flight = 0
        self._max_in_flight = 0
        self._probes = 0
        self._reads = 0

    @property
    def status(self) -> WatcherStatus:
        return WatcherStatus(
            last_success=self._last_success,
            services_index=self._services_index,
            kv_index=self._kv_index,
            watches=(FIXED_WATCHES + len(self._watches)) if self._running else 0,
            errors_total=self._errors,
            consul_reachable=self._running and self._last_success is not None and not self._failing,
            complete=self._published is not None,
            failing_watches=len(self._failing),
            live=len(self._watches),
            parked=len(self._coverage) - len(self._watches),
            max_conns=self._max_conns,
            remote_watches=self._remote.running,
            remote_failing=len(self._remote.failing),
            in_flight=self._in_flight,
            max_in_flight=self._max_in_flight,
            probes_total=self._probes,
            reads_total=self._reads,
            kv_access=self._kv_access,
            kv_error=self._kv_error,
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
        self._jobs = asyncio.Event()
        self._recovered = asyncio.Event()
        self._running = True
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self._catalog_watch(), name="consul-watch:catalog")
                tg.create_task(self._kv_watch(), name="consul-watch:kv")
                for state in _STATES:
                    tg.create_task(self._state_watch(state), name=f"consul-watch:state:{state}")
                for number in range(self._readers):
                    tg.create_task(self._reader(number), name=f"consul-watch:reader:{number}")
                tg.create_task(self._publisher(publish), name="consul-watch:publisher")
                self._remote.start(tg)
        finally:
            self._remote.stop()
            self._tg = None
            self._running = False
            self._watches.clear()

    # -- connection accounting ----------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _request(self) -> AsyncIterator[None]:
        """Around every request to Consul: each one holds one connection while it is in flight."""
        self._in_flight += 1
        self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            yield
        finally:
            self._in_flight -= 1

    # -- one blocking loop, shared by every watch -----------------------------------------------------------------

    async def _blocking_loop(
        self,
        endpoint: str,
        fetch: Callable[[int], Awaitable[Result[T]]],
        apply: Callable[[Result[T], IndexStep], bool],
        *,
        start: int = 0,
        on_denied: Callable[[ConsulPermissionDenied], None] | None = None,
    ) -> None:
        """Request, apply, repeat, taking a token before each request after the first:

        - after an answer that moved the index or carried new data, from a bucket of ``moved_rate`` per second with
          a burst of 10: real changes up to that rate (and bursts of 10) are read back to back, and Consul never
          renders, say, a 10,000-service catalog more than ``moved_rate`` times a second for one watch, even while
          thousands of services register (faster changes are read together, by the next request);
        - after an answer that neither moved the index nor changed anything (a spurious wake-up, a blocking query
          that returned at once with nothing new, a timeout: what spins), from a bucket of ``rate`` (burst
          ``burst``), Consul's guidance.

        ``apply`` says whether the answer carried new data."""
        index = BlockingIndex(start)
        backoff = Backoff(self._rng, base=self._min_backoff, cap=self._max_backoff)
        still = TokenBucket(self._clock, rate=self._rate, burst=self._burst)
        moved = TokenBucket(self._clock, rate=self._moved_rate, burst=10)
        token = object()  # this watch, in the set of failing watches
        bucket: TokenBucket | None = None  # the bucket the next request takes a token from (None: the first)
        try:
            while True:
                if bucket is not None:
                    delay = bucket.reserve()
                    if delay > 0:
                        await self._clock.sleep(delay)
                try:
                    async with self._request():
                        result = await fetch(index.index)
                except DiscoveryError as exc:
                    if on_denied is not None and isinstance(exc, ConsulPermissionDenied):
                        # Consul answered: it is reachable, this token just may not read this. Not a failing watch.
                        index.fail()
                        self._last_success = self._clock.monotonic()
                        self._failing.discard(token)
                        backoff.success()
                        on_denied(exc)
                        await self._clock.sleep(min(DENIED_RETRY, self._wait))
                        continue
                    # Any other failure, a 403 included where nothing is expected to be hidden from the token (the
                    # catalog, health): logged, counted, retried with backoff; the watcher never stops for it.
                    index.fail()
                    await self._failed(token, endpoint, exc, backoff)
                    continue
                self._succeeded(token, endpoint, backoff)
                step = index.advance(result.index)
                if step.reset:
                    self._log.info(
                        "consul_index_reset", endpoint=endpoint, previous=step.previous, returned=step.returned
                    )
                changed = apply(result, step)
                bucket = moved if changed or (step.previous and step.returned > step.previous) else still
        finally:
            self._failing.discard(token)  # a stopped watch no longer counts against reachability

    async def _failed(self, token: object, endpoint: str, exc: DiscoveryError, backoff: Backoff) -> None:
        """A request of a watch or reader failed: counted, logged, and waited out with backoff."""
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
        await self._backoff(retry_in)

    def _succeeded(self, token: object, endpoint: str, backoff: Backoff) -> None:
        self._last_success = self._clock.monotonic()
        self._failing.discard(token)
        if backoff.failures:
            self._log.info("consul_watch_recovered", endpoint=endpoint, failures=backoff.failures)
            if self._failing and self._recovered is not None:  # Consul is back: the others need not wait out
                self._recovered.set()  # their backoff (it wakes every current waiter; later ones wait again)
                self._recovered.clear()
        backoff.success()

    async def _backoff(self, seconds: float) -> None:
        """Wait ``seconds`` after a failure, or until another request to Consul succeeds again."""
        if self._recovered is None:  # pragma: no cover - run() always sets it first
            await self._clock.sleep(seconds)
            return
        await self._sleep_or_wake(self._recovered, seconds)

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()

    def _wake_readers(self) -> None:
        if self._jobs is not None:
            self._jobs.set()

    # -- catalog --------------------------------------------------------------------------------------------------

    async def _catalog_watch(self) -> None:
        await self._blocking_loop(
            "/v1/catalog/services",
            lambda index: self._client.catalog_services(index, self._wait),
            self._apply_catalog,
        )

    def watch_also(self, names: frozenset[str]) -> None:
        """Also watch these services when they exist, with or without route tags (the one input besides the
        catalog: the view names the services its policies send traffic to). Applied to the last catalog at once."""
        if names == self._also:
            return
        changed = names ^ self._also
        self._also = names
        now = self._clock.monotonic()
        gone = False
        for name in sorted(changed):
            if name not in self._catalog:
                continue
            if self._wanted(name) and name not in self._coverage:
                self._coverage.add(name, now)
                self._request_read(name, now)
            elif not self._wanted(name) and name in self._coverage:
                self._stop_service(name)
                gone = True
        if gone:
            self._wake()

    def watch_remote(self, pairs: frozenset[tuple[str, str]]) -> None:
        """Watch these (service, datacenter) pairs in their datacenters (failover policies name them); their answers
        go into ``CatalogSnapshot.remote``. See consulgw.discovery.remote."""
        self._remote.watch(pairs)

    def _remote_changed(self, name: str) -> None:
        self._remote_dirty.add(name)
        self._wake()

    def _wanted(self, name: str) -> bool:
        """Is this service of the catalog watched: routed by its tags, or named by ``watch_also``?"""
        routed = self._routed_by_tags.get(name)
        return name in self._also or (routed is not None and routed[1])

    def _apply_catalog(self, result: Result[Mapping[str, tuple[str, ...]]], step: IndexStep) -> bool:
        previous_index = self._services_index
        self._services_index = max(result.index, 1)
        catalog = result.value
        old = self._catalog
        differs = [name for name, tags in catalog.items() if old.get(name) != tags]
        removed = [name for name in old if name not in catalog]
        for name in removed:
            self._routed_by_tags.pop(name, None)
        for name in differs:  # is_routed only for services whose tags changed: the catalog may list 10,000
            tags = catalog[name]
            self._routed_by_tags[name] = (tags, self._is_routed(name, tags))
        self._catalog = dict(catalog)
        now = self._clock.monotonic()
        gone = [name for name in removed if name in self._coverage]
        gone += [name for name in differs if name in self._coverage and not self._wanted(name)]
        new = sorted(name for name in differs if name not in self._coverage and self._wanted(name))
        retagged = [name for name in differs if name in self._coverage and name in old and name not in gone]
        for name in gone:
            self._stop_service(name)
        for name in new:
            self._coverage.add(name, now)
            self._request_read(name, now)
        for name in retagged:  # an instance's tags changed: its service did
            self._suspect(name, now)
        first = not self._catalog_read
        if gone or first:  # new services wake the publisher with their first health read
            self._catalog_read = True
            self._wake()
        if previous_index and not step.reset and self._services_index > previous_index:
            self._catalog_moved(self._services_index, now, single=self._services_index == previous_index + 1)
        return first or bool(differs or removed)

    def _stop_service(self, name: str) -> None:
        watch = self._watches.pop(name, None)
        if watch is not None and watch.task is not None:
            watch.task.cancel()
        self._coverage.remove(name)
        self._indexes.pop(name, None)
        if (old := self._services.pop(name, None)) is not None:
            self._set_nodes(name, old, None)
            self._dirty.add(name)

    # -- deciding who reads a service -----------------------------------------------------------------------------

    def _suspect(self, name: str, now: float) -> None:
        """Something says ``name`` may have changed: a live watch sees it by itself; a parked service is read."""
        if name not in self._coverage or name in self._watches:
            return
        self._coverage.touch(name, now)
        self._request_read(name, now)

    def _request_read(self, name: str, now: float) -> None:
        """Read ``name`` soon: on a free live slot, else by a reader at once (taking another service's slot would
        first wait for that watch to give its connection back); the reader may then move it into a live slot."""
        claim = self._coverage.claim(name, now, evict=False)
        if claim.live:
            self._start_watch(name, claim.evicted)
        else:
            self._coverage.need_read(name)
            self._wake_readers()

    def _start_watch(self, name: str, evicted: str | None) -> None:
        if self._tg is None:  # run() is shutting down
            return
        previous: asyncio.Task[None] | None = None
        if evicted is not None:
            gone = self._watches.pop(evicted, None)
            if gone is not None and gone.task is not None:
                gone.task.cancel()
                previous = gone.task
        watch = _Watch(name, self._indexes.get(name, 0))
        self._watches[name] = watch
        watch.task = self._tg.create_task(self._health_watch(watch, previous), name=f"consul-watch:health:{name}")

    def _catalog_moved(self, index: int, now: float, *, single: bool) -> None:
        """The catalog's index moved: some instance somewhere was registered, changed or removed, maybe in a parked
        service. A move by one raft entry (``single``) is one write: explained if a per-service answer carries that
        index within ``explain_grace``, else looked for by a fast probe cycle that stops when it finds it. A longer
        move may hide several writes behind the last one: a whole fast cycle."""
        if self._coverage.parked == 0:
            return
        if not single:
            self._coverage.boost(now)
            self._wake_readers()
            return
        if index in self._observed:
            return
        self._unexplained[index] = now + self._explain_grace
        self._wake_readers()

    def _observe(self, index: int) -> None:
        self._observed.append(index)
        self._unexplained.pop(index, None)
        if index in self._hunted:  # a service answered with the index the fast cycle hunts: found
            self._hunted.discard(index)
            if not self._hunted:
                self._coverage.end_boost()

    # -- health, one watch per live service -----------------------------------------------------------------------

    async def _health_watch(self, watch: _Watch, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:  # the slot's previous watch gives its connection back first
            await asyncio.wait({previous})
        await self._blocking_loop(
            f"/v1/health/service/{watch.name}",
            lambda index: self._client.health_service(watch.name, index, self._wait),
            lambda result, _step: self._apply_watched(watch, result),
            start=watch.start,
        )

    def _apply_watched(self, watch: _Watch, result: Result[tuple[Instance, ...]]) -> bool:
        if self._watches.get(watch.name) is not watch:  # superseded: the service left, was parked or came back
            return False
        return self._store(watch.name, result)

    def _store(self, name: str, result: Result[tuple[Instance, ...]]) -> bool:
        """Keep an answer for ``name``; True when its instances differ from what was held."""
        index = max(result.index, 1)
        self._indexes[name] = index
        self._observe(index)
        self._coverage.mark_read(name)
        instances = tuple(sorted(result.value, key=lambda inst: inst.id))
        old = self._services.get(name)
        if old is not None and old.instances == instances:
            return False  # a return is no guarantee of change (output-only check updates bump the index too)
        snapshot = ServiceSnapshot(name=name, index=index, instances=instances)
        self._services[name] = snapshot
        self._set_nodes(name, old, snapshot)
        self._coverage.touch(name, self._clock.monotonic())
        self._dirty.add(name)
        self._wake()
        return True

    def _set_nodes(self, name: str, old: ServiceSnapshot | None, new: ServiceSnapshot | None) -> None:
        before = {i.node for i in old.instances} if old is not None else set()
        after = {i.node for i in new.instances} if new is not None else set()
        for node in before - after:
            names = self._node_services.get(node)
            if names is not None:
                names.discard(name)
                if not names:
                    del self._node_services[node]
        for node in after - before:
            self._node_services.setdefault(node, set()).add(name)

    # -- checks that are not passing, datacenter-wide -------------------------------------------------------------

    async def _state_watch(self, state: str) -> None:
        await self._blocking_loop(
            f"/v1/health/state/{state}",
            lambda index: self._client.health_state(state, index, self._wait),
            lambda result, _step: self._apply_state(state, result),
        )

    def _apply_state(self, state: str, result: Result[tuple[CheckStatus, ...]]) -> bool:
        checks = frozenset(result.value)
        old = self._nonpassing.get(state)
        self._nonpassing[state] = checks
        if old is None:
            return True
        moved = old ^ checks
        if not moved:
            return False  # e.g. a check's output changed: same states
        now = self._clock.monotonic()
        for check in moved:
            if check.service_id:
                self._suspect(check.service_name, now)
            else:  # a node-level check: every instance on that node
                for name in sorted(self._node_services.get(check.node, ())):
                    self._suspect(name, now)
        return True

    # -- readers: full reads and index probes of parked services --------------------------------------------------

    async def _reader(self, number: int) -> None:
        jobs = self._jobs
        if jobs is None:  # pragma: no cover - run() always sets it first
            raise RuntimeError("reader started outside run()")
        backoff = Backoff(self._rng, base=self._min_backoff, cap=self._max_backoff)
        token = object()
        try:
            while True:
                job, wait = self._next_job()
                if job is None:
                    jobs.clear()
                    await self._sleep_or_wake(jobs, wait)
                    continue
                endpoint = f"/v1/health/service/{job.name}"
                try:
                    async with self._request():
                        if job.kind == "read":
                            self._reads += 1
                            result = await self._client.health_service(job.name, 0, self._wait)
                        else:
                            self._probes += 1
                            probed = await self._client.health_service_index(job.name)
                except DiscoveryError as exc:
                    if job.kind == "read":
                        self._coverage.need_read(job.name)  # read it again after the backoff
                    await self._failed(token, endpoint, exc, backoff)
                    continue
                self._succeeded(token, endpoint, backoff)
                if job.name not in self._coverage or job.name in self._watches:
                    continue  # it left, or a live watch took it over while this request was out
                now = self._clock.monotonic()
                if job.kind == "read":
                    self._store(job.name, result)
                    claim = self._coverage.claim(job.name, now)  # a free slot costs nothing: block on the new index
                    if claim.live:
                        self._start_watch(job.name, claim.evicted)
                elif probed != self._indexes.get(job.name):  # moved on (or back: a restart): read it
                    self._observe(probed)
                    self._suspect(job.name, now)
        finally:
            self._failing.discard(token)

    def _next_job(self) -> tuple[Job | None, float]:
        now = self._clock.monotonic()
        due = [index for index, at in self._unexplained.items() if at <= now]
        if due:
            for index in due:
                del self._unexplained[index]
            self._hunted.update(due)
            self._coverage.boost(now)
        job, wait = self._coverage.next_job(now)
        if not self._coverage.boosting:
            self._hunted.clear()
        if job is None and self._unexplained:
            wait = min(wait, max(0.0, min(self._unexplained.values()) - now))
        return job, wait

    async def _sleep_or_wake(self, event: asyncio.Event, seconds: float) -> None:
        """Until ``event`` is set or ``seconds`` pass on the injected clock (``inf``: until the event)."""
        if math.isinf(seconds):
            await event.wait()
            return
        sleeper = asyncio.ensure_future(self._clock.sleep(seconds))
        waiter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pending in (sleeper, waiter):
                pending.cancel()
            await asyncio.wait({sleeper, waiter})

    # -- KV -------------------------------------------------------------------------------------------------------

    async def _kv_watch(self) -> None:
        await self._blocking_loop(
            f"/v1/kv/{self._prefix}",
            lambda index: self._client.kv_list(self._prefix, index, self._wait, relative=True),
            self._apply_kv,
            on_denied=self._kv_denied,
        )

    def _apply_kv(self, result: Result[Mapping[str, bytes]], step: IndexStep) -> bool:
        self._kv_index = max(result.index, 1)
        kv: Mapping[str, bytes] = result.value  # keys relative to the prefix
        if result.filtered_by_acls:
            # Consul left out keys this token may not read. A hidden key cannot be told from a deleted one, so each
            # keeps the value last read: losing KV read never silently drops a policy (an auth section, say).
            if self._kv is not None:
                kv = {**{k: v for k, v in self._kv.items() if k not in kv}, **kv}
            self._set_kv_access("filtered", "Consul left out keys this token may not read")
        else:
            self._set_kv_access("ok", "")
        if self._kv is not None and self._kv == kv:  # a C-level comparison (MappingProxyType delegates)
            return False
        self._kv = kv if isinstance(kv, MappingProxyType) else MappingProxyType(dict(kv))
        self._kv_dirty = True
        self._wake()
        return True

    def _kv_denied(self, exc: ConsulPermissionDenied) -> None:
        """403 on the KV prefix: keep routing from the catalog with the documents last read (none at start-up)."""
        self._set_kv_access("denied", str(exc))
        if self._kv is None:
            self._kv = _EMPTY_KV
            self._kv_dirty = True
            self._wake()

    def _set_kv_access(self, access: KvAccess, error: str) -> None:
        previous = self._kv_access
        self._kv_access = access
        self._kv_error = error
        if access == previous:
            return
        endpoint = f"/v1/kv/{self._prefix}"
        if access in ("denied", "filtered"):
            self._log.warning(
                "consul_kv_read_denied",
                endpoint=endpoint,
                access=access,
                error=error,
                hint=KV_HINT.format(prefix=self._prefix),
                consequence="routing from the catalog; policies from KV are the last ones read (none at start-up)",
            )
        elif previous in ("denied", "filtered"):
            self._log.info("consul_kv_read_restored", endpoint=endpoint)

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
                self._remote_dirty |= {n for n, _ in snapshot.remote}
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
            complete = self._catalog_read and self._kv is not None and len(self._services) == len(self._coverage)
            if not complete:
                return None
            remote = self._remote.snapshots()
            changed = frozenset(self._services) | frozenset(n for n, _ in remote)
            kv_changed = True
        else:
            remote = previous.remote if not self._remote_dirty else self._remote.snapshots()
            changed = frozenset(n for n in self._dirty if previous.services.get(n) != self._services.get(n))
            if self._remote_dirty:
                moved = {
                    key[0]
                    for key in previous.remote.keys() | remote.keys()
                    if previous.remote.get(key) != remote.get(key)
                }
                changed |= moved
            kv_changed = self._kv_dirty and previous.kv != (self._kv or _EMPTY_KV)
        self._dirty.clear()
        self._remote_dirty.clear()
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
            remote=remote,
        )
