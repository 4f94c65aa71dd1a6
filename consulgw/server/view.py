"""The active routing view: built from CatalogSnapshots by one writer, read once per request.

``ViewBuilder.offer`` takes a snapshot without blocking (the watcher's publish callback, or a worker's copy of the
supervisor's snapshots); ``ViewBuilder.run`` builds the newest offered snapshot into a new immutable ``GatewayView``
and swaps it in. Only services named in ``snapshot.changed`` (or whose effective KV policy changed) are re-parsed,
get new pipelines and new pool member lists; the others are carried over as they are. Runtime counters (in-flight,
round-robin state, breakers) live in UpstreamPools and BreakerBoard, outside the view, and survive every swap.

Building never holds the event loop for long, at any catalog size: the policy book is parsed, the services are
compiled and the route table is derived from the previous one (``RouteTable.updated``, in batches) in slices of
``slice_budget`` seconds, with a yield to the loop between slices. (Not in a thread: parsing is pure Python, and a
thread holding the GIL made every loop wake-up wait for the switch interval, 20-100 ms of lag measured at 10,000
services.) Requests keep being served from the previous view until the new one is swapped in, in one assignment.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Final, TypeVar

import structlog

from consulgw.cache.purge import generations as purge_generations
from consulgw.clock import Clock
from consulgw.composite.build import CompositeEntry, build_composites
from consulgw.composite.routes import composite_routes
from consulgw.errors import PolicyError
from consulgw.metrics import GatewayMetrics
from consulgw.model.balancing import LbAlgorithm, effective_lb
from consulgw.model.snapshot import CatalogSnapshot, Instance, ServiceSnapshot
from consulgw.pipeline.chain import Next, Stage
from consulgw.pipeline.stages import build_stages
from consulgw.pipeline.stages.deps import StageDeps
from consulgw.policy.book import iter_changed_services, iter_policy_book
from consulgw.policy.model import PolicyBook, ServicePolicy
from consulgw.routing.rules import ServiceRoutes, parse_service_routes
from consulgw.routing.table import RouteTable
from consulgw.steps import Steps
from consulgw.traffic.failover import FailoverBoard, remote_instances
from consulgw.traffic.subsets import subset_instances
from consulgw.upstream.breaker import BreakerBoard
from consulgw.upstream.pool import UpstreamPools

SLICE_BUDGET: Final = 0.002  # seconds of building between two yields to the event loop
T = TypeVar("T")
LARGE_BUILD: Final = 1000  # a build of at least this many services runs with the cyclic GC paused (see apply)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceEntry:
    """Everything compiled for one routed service."""

    snapshot: ServiceSnapshot
    routes: ServiceRoutes
    policy: ServicePolicy
    chain: Next  # the service's pipeline: policy stages, target selection, forwarder (built once per policy)
    lb: LbAlgorithm
    # Failover: the service's instances in the policy's other datacenters (datacenter -> instances, as pooled).
    remote: Mapping[str, tuple[Instance, ...]] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def service_policy(self) -> ServicePolicy:
        return self.policy


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayView:
    table: RouteTable
    services: Mapping[str, ServiceEntry] = field(default_factory=lambda: MappingProxyType({}))
    book: PolicyBook = field(default_factory=PolicyBook)
    snapshot: CatalogSnapshot = field(default_factory=CatalogSnapshot)
    version: int = 0
    composites: Mapping[str, CompositeEntry] = field(default_factory=lambda: MappingProxyType({}))  # by label

    def entry(self, name: str) -> ServiceEntry | CompositeEntry | None:
        """What a route's ``service`` names: a routed service, or a composite (``composite:<name>``)."""
        found = self.services.get(name)
        return found if found is not None else self.composites.get(name)


class ViewBuilder:
    """Single writer of the active view."""

    def __init__(
        self,
        *,
        tag_prefix: str,
        compat: frozenset[str],
        kv_prefix: str = "consulgw/",
        pools: UpstreamPools,
        breakers: BreakerBoard,
        metrics: GatewayMetrics,
        stage_deps: Callable[[str], StageDeps],
        pipeline: Callable[[str, ServicePolicy, tuple[Stage, ...]], Next],
        clock: Clock,
        on_purge: Callable[[Mapping[str, str]], None] = lambda _: None,
        watch_also: Callable[[frozenset[str]], None] | None = None,
        slice_budget: float = SLICE_BUDGET,
        watch_remote: Callable[[frozenset[tuple[str, str]]], None] | None = None,
        failover: FailoverBoard | None = None,
    ) -> None:
        self._tag_prefix = tag_prefix
        self._kv_prefix = kv_prefix
        self._compat = compat
        self._pools = pools
        self._breakers = breakers
        self._metrics = metrics
        self._stage_deps = stage_deps
        self._pipeline = pipeline
        self._clock = clock
        self._on_purge = on_purge  # the cache's purge generations, from cache-purge/<service> keys
        self._watch_also = watch_also
        self._also: frozenset[str] = frozenset()
        self._watch_remote = watch_remote
        self._remote_pairs: frozenset[tuple[str, str]] = frozenset()
        self._failover = failover
        self._slice_budget = slice_budget
        self._log = structlog.get_logger("consulgw.view")
        self.current: GatewayView | None = None
        self.ready = asyncio.Event()
        self._pending: CatalogSnapshot | None = None
        self._offered = asyncio.Event()
        self._entries: dict[str, ServiceEntry] = {}  # the plain dict behind self.current.services
        self._slice_end = 0.0  # when the current slice of building ends (clock.monotonic())

    def book(self) -> PolicyBook:
        """The current policy book (consumers are read through this on every request, so edits apply live)."""
        return self.current.book if self.current is not None else PolicyBook()

    def offer(self, snapshot: CatalogSnapshot) -> None:
        """Take a snapshot to build (never blocks, never raises). Snapshots offered while a build runs are merged
        into one: the newest, with every ``changed`` name and ``kv_changed`` since the last build."""
        pending = self._pending
        if pending is not None:
            snapshot = replace(
                snapshot,
                changed=pending.changed | snapshot.changed,
                kv_changed=pending.kv_changed or snapshot.kv_changed,
            )
        self._pending = snapshot
        self._offered.set()

    async def run(self) -> None:
        """Build offered snapshots until cancelled. A build that fails (a bug) keeps the previous view, logs
        ``view_build_failed`` and is retried with the next snapshot, which carries its changes."""
        while True:
            await self._offered.wait()
            self._offered.clear()
            snapshot = self._take_pending()
            if snapshot is None:
                continue
            try:
                await self.apply(snapshot)
            except Exception as exc:  # noqa: BLE001 - the gateway keeps serving the previous view
                self._log.error("view_build_failed", error=f"{type(exc).__name__}: {exc}", exc_info=True)
                newer = self._take_pending()
                self._pending = snapshot  # its changes go into the next build
                if newer is not None:
                    self.offer(newer)  # merged onto it, and built at once
                else:
                    self._offered.clear()  # wait for the next offer: a bug would fail again right away

    def _take_pending(self) -> CatalogSnapshot | None:
        pending, self._pending = self._pending, None
        return pending

    async def apply(self, snapshot: CatalogSnapshot) -> None:
        """Build the view for ``snapshot`` and swap it in, yielding to the event loop between slices of work.

        A large build (a cold start, a ``consulgw/defaults`` change, at least LARGE_BUILD services) allocates
        hundreds of thousands of long-lived objects; CPython's cyclic GC would then run full collections over the
        whole heap in the middle of it, each one a stall of the loop (0.1-0.3 s at 10,000 services x 10
        instances). Such a build runs with the GC paused and ends with ``gc.freeze()`` (constant time): the view is
        long-lived, and later collections skip it. Objects of replaced views are still freed by reference
        counting; only reference cycles created during that build would outlive it (view building makes none).
        """
        large = len(snapshot.services) >= LARGE_BUILD and (
            self.current is None or snapshot.kv_changed or len(snapshot.changed) >= LARGE_BUILD
        )
        paused = large and gc.isenabled()
        if paused:
            gc.disable()
        try:
            await self._apply(snapshot)
        finally:
            if paused:
                gc.freeze()
                gc.enable()

    async def _apply(self, snapshot: CatalogSnapshot) -> None:
        started = self._clock.monotonic()
        self._slice_end = started + self._slice_budget
        previous = self.current
        old_book = previous.book if previous is not None else None
        changed_policy: frozenset[str] = frozenset()
        if old_book is None or snapshot.kv_changed:
            book = await self._sliced(iter_policy_book(snapshot.kv, previous=old_book, prefix=self._kv_prefix))
            if old_book is not None and book is not old_book:  # (a first build compiles every service anyway)
                changed_policy = await self._sliced(iter_changed_services(old_book, book, snapshot.services))
            self._report_policy_errors(old_book, book)
            self._watch_referenced(book)
        else:
            book = old_book
        services = self._entries.copy()  # the dict behind previous.services: a C-level copy
        route_changes: dict[str, ServiceRoutes | None] = {}
        removed: list[str] = []
        # Every name that may need work, once: what the catalog changed (all of it at first) and what the policy
        # changed. A service that left is named in changed; no pass over every service.
        names: Iterable[str] = snapshot.services if previous is None else snapshot.changed
        seen: set[str] = set()
        for batch in (names, changed_policy):
            for name in batch:
                if name in seen:
                    continue
                seen.add(name)
                svc = snapshot.services.get(name)
                old = services.get(name)
                failover = book.for_service(name).failover
                remote = remote_instances(name, failover, snapshot.remote)
                if svc is None and any(remote.values()):
                    # Every local instance is gone, but the failover datacenters have the service: it keeps its
                    # routes (the last good ones, else its remote instances' tags) and is served from there.
                    svc = ServiceSnapshot(name=name, index=old.snapshot.index if old is not None else 0)
                if svc is None:
                    if old is not None:  # it left
                        del services[name]
                        removed.append(name)
                        route_changes[name] = None
                elif old is None or old.snapshot != svc or name in changed_policy or old.remote != remote:
                    entry = self._compile(name, svc, old, book, remote)
                    services[name] = entry
                    if old is None or old.routes is not entry.routes:
                        route_changes[name] = entry.routes
                await self._tick()
        if book is not old_book:  # composite routes are routes of their own label (composite:<name>)
            old_routes = {r.service: r for r in composite_routes(old_book.composites)} if old_book is not None else {}
            new_routes = {r.service: r for r in composite_routes(book.composites)}
            for label in old_routes.keys() | new_routes.keys():
                if old_routes.get(label) != new_routes.get(label):
                    route_changes[label] = new_routes.get(label)
        composites = self._composites(book, previous, services)
        table = previous.table if previous is not None else RouteTable()
        table = await self._sliced(table.iter_updated(route_changes))
        if previous is None or snapshot.kv_changed:
            self._on_purge(purge_generations(snapshot.kv))
        view = GatewayView(
            table=table,
            services=MappingProxyType(services),
            book=book,
            snapshot=snapshot,
            version=(previous.version + 1) if previous is not None else 1,
            composites=MappingProxyType(composites),
        )
        self.current = view
        self._entries = services  # never changed again: the next build copies it
        if book is not old_book or removed or previous is None or len(services) != len(previous.services):
            self._watch_remote_datacenters(book, services)
        # After the swap: no request starts on a view that still routes to a service whose pool is gone.
        for name in removed:
            if self._failover is not None:
                self._failover.forget(name)
            self._pools.remove(name)
            self._breakers.forget(name, frozenset())
            self._metrics.forget_service(name)
        self._metrics.table_swaps.inc()
        self._metrics.routes.set(len(table.routes))
        self._metrics.route_conflicts.set(len(table.conflicts))
        self._log.info(
            "route_table_swapped",
            version=view.version,
            services=len(services),
            routes=len(table.routes),
            rebuilt=len(seen) - len(removed),
            build_ms=round((self._clock.monotonic() - started) * 1000, 3),
        )
        if snapshot.complete:
            self.ready.set()

    async def _tick(self) -> None:
        """Yield to the loop when the current slice (shared by every phase of a build) is used up."""
        now = self._clock.monotonic()
        if now >= self._slice_end:
            await pause()
            self._slice_end = self._clock.monotonic() + self._slice_budget

    async def _sliced(self, steps: Steps[T]) -> T:
        """Run a step generator on the loop, yielding to it whenever a slice of ``slice_budget`` is used up."""
        while True:
            try:
                next(steps)
            except StopIteration as done:
                await self._tick()
                return done.value  # type: ignore[no-any-return]
            await self._tick()

    def _compile(
        self,
        name: str,
        svc: ServiceSnapshot,
        old: ServiceEntry | None,
        book: PolicyBook,
        remote: Mapping[str, tuple[Instance, ...]],
    ) -> ServiceEntry:
        """One service's entry; its pool, breakers and metrics follow at once (a pool may take new members a
        moment before the view that routes to them is swapped in: harmless)."""
        if not svc.instances and any(remote.values()):  # failed over with no local instance registered at all
            if old is not None and old.routes.routes:
                routes = old.routes  # the last good routes, from the local tags
            else:
                routes = _remote_routes(name, remote, tag_prefix=self._tag_prefix, compat=self._compat)
        elif old is not None and old.snapshot.tags == svc.tags and not _kept_by_failover(old):
            routes = old.routes
        else:
            routes = parse_service_routes(
                name, svc.tags, tag_prefix=self._tag_prefix, compat=self._compat, datacenter=svc.datacenter
            )
            for error in routes.errors:
                self._log.warning("route_tag_rejected", service=name, tag=error.tag, reason=error.reason)
        policy = book.for_service(name)
        if old is not None and old.policy == policy:
            chain = old.chain
        else:
            try:
                chain = self._pipeline(name, policy, build_stages(policy, self._stage_deps(name)))
            except PolicyError as exc:  # the parser should have caught it; one service never breaks the view
                self._log.warning("policy_rejected", service=name, reason=str(exc))
                policy = old.policy if old is not None else book.defaults
                chain = (
                    old.chain
                    if old is not None
                    else self._pipeline(name, policy, build_stages(policy, self._stage_deps(name)))
                )
        lb = effective_lb(policy.lb, routes.lb)
        if policy.failover is None:
            remote = MappingProxyType({})
        if (
            old is None
            or old.snapshot.instances != svc.instances
            or old.lb != lb
            or old.policy != policy
            or old.remote != remote
        ):
            known_dc = svc.datacenter or (old.snapshot.datacenter if old is not None else None) or ""
            self._pools.update(
                name,
                svc.instances,
                lb,
                subsets=subset_instances(policy, svc.instances),
                slow_start=policy.slow_start.window if policy.slow_start is not None else None,
                remote=remote,
                datacenter=known_dc,
            )
            remote_ids = {i.id for instances in remote.values() for i in instances}
            self._breakers.forget(name, frozenset(i.id for i in svc.instances) | remote_ids)
        if self._failover is not None:
            if policy.failover is None:
                self._failover.forget(name)
            else:  # judged on every change too, so the failback wait starts when the local datacenter recovers
                self._failover.serving(name, policy.failover, self._pools.pool(name))
        if old is None or old.policy.circuit_breaker != policy.circuit_breaker:
            self._breakers.configure(name, policy.circuit_breaker)
        self._metrics.route_errors.labels(name).set(len(routes.errors))
        in_pool = sum(1 for i in svc.instances if i.weight > 0)
        self._metrics.pool_size.labels(name, "in_pool").set(in_pool)
        self._metrics.pool_size.labels(name, "excluded").set(len(svc.instances) - in_pool)
        return ServiceEntry(snapshot=svc, routes=routes, policy=policy, chain=chain, lb=lb, remote=remote)

    def _composites(
        self, book: PolicyBook, previous: GatewayView | None, services: Mapping[str, ServiceEntry]
    ) -> dict[str, CompositeEntry]:
        """Composite entries (consulgw.composite.build), rebuilt only for changed documents or target policies."""
        old = previous.composites if previous is not None else {}
        if not book.composites and not old:
            return {}
        composites = build_composites(
            book.composites,
            old,
            policy_of=lambda name: services[name].policy if name in services else None,
            pipeline=self._pipeline,
            stage_deps=self._stage_deps,
            metrics=self._metrics,
            clock=self._clock,
        )
        for label in old.keys() - composites.keys():
            self._metrics.forget_service(label)
        return composites

    def _watch_referenced(self, book: PolicyBook) -> None:
        """Tell discovery which services the policies send traffic to (subsets, mirrors), routed or not."""
        also = referenced_services(book)
        if also != self._also:
            self._also = also
            if self._watch_also is not None:
                self._watch_also(also)

    def _watch_remote_datacenters(self, book: PolicyBook, services: Mapping[str, ServiceEntry]) -> None:
        """Tell discovery which (service, datacenter) pairs the failover policies name: the services in the view,
        and those with a document of their own (which may have no local instance at all)."""
        pairs = frozenset(
            (name, dc)
            for name in services.keys() | book.services.keys()
            if (failover := book.for_service(name).failover) is not None
            for dc in failover.datacenters
        )
        if pairs != self._remote_pairs:
            self._remote_pairs = pairs
            if self._watch_remote is not None:
                self._watch_remote(pairs)

    def _report_policy_errors(self, old: PolicyBook | None, new: PolicyBook) -> None:
        old_errors = old.errors if old is not None else {}
        for key, reason in new.errors.items():
            self._metrics.policy_rejected.labels(key).set(1)
            if old_errors.get(key) != reason:  # logged once per distinct rejection, not on every rebuild
                self._log.warning("policy_rejected", key=key, reason=reason)
        for key in old_errors:
            if key not in new.errors:
                self._metrics.policy_rejected.labels(key).set(0)
                self._log.info("policy_accepted", key=key)


async def pause() -> None:
    """Let the event loop run everything that became ready while we worked, before our next slice.

    One ``sleep(0)`` puts this task at the back of the ready queue, but I/O and timers found by the loop's next
    poll are queued behind it: the next slice would run first, and a request would wait two slices. After the
    second ``sleep(0)`` they are ahead of us.
    """
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def _kept_by_failover(entry: ServiceEntry) -> bool:
    """An entry kept for failover alone (no local instance): its routes did not come from its (empty) tags."""
    return not entry.snapshot.instances and any(entry.remote.values())


def _remote_routes(
    name: str, remote: Mapping[str, tuple[Instance, ...]], *, tag_prefix: str, compat: frozenset[str]
) -> ServiceRoutes:
    """Routes from the failover datacenters' instances' tags (a service the gateway never saw locally)."""
    for dc, instances in remote.items():
        if instances:
            snapshot = ServiceSnapshot(name=name, index=0, instances=instances)
            return parse_service_routes(name, snapshot.tags, tag_prefix=tag_prefix, compat=compat, datacenter=dc)
    return parse_service_routes(name, (), tag_prefix=tag_prefix, compat=compat, datacenter=None)


def referenced_services(book: PolicyBook) -> frozenset[str]:
    """Services any policy of ``book`` sends traffic to (``subsets`` of another service, ``mirror`` targets)."""
    names = set(book.defaults.referenced_services())
    for policy in book.services.values():
        names |= policy.referenced_services()
    return frozenset(names)
