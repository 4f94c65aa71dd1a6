"""The active routing view: built from CatalogSnapshots by one writer, read once per request.

``ViewBuilder.apply`` turns a snapshot into a new immutable ``GatewayView`` and swaps it in. Only services named in
``snapshot.changed`` (or whose effective KV policy changed) are re-parsed, get new pipelines and new pool member
lists; the others are carried over as they are. Runtime counters (in-flight, round-robin state, breakers) live in
UpstreamPools and BreakerBoard, outside the view, and survive every swap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import structlog

from consulgw.cache.purge import generations as purge_generations
from consulgw.clock import Clock
from consulgw.composite.build import CompositeEntry, build_composites
from consulgw.composite.routes import composite_routes
from consulgw.errors import PolicyError
from consulgw.metrics import GatewayMetrics
from consulgw.model.balancing import LbAlgorithm, effective_lb
from consulgw.model.snapshot import CatalogSnapshot, ServiceSnapshot
from consulgw.pipeline.chain import Next, Stage
from consulgw.pipeline.stages import build_stages
from consulgw.pipeline.stages.deps import StageDeps
from consulgw.policy.book import build_policy_book, changed_services
from consulgw.policy.model import PolicyBook, ServicePolicy
from consulgw.routing.rules import ServiceRoutes, parse_service_routes
from consulgw.routing.table import RouteTable
from consulgw.traffic.subsets import subset_instances
from consulgw.upstream.breaker import BreakerBoard
from consulgw.upstream.pool import UpstreamPools


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceEntry:
    """Everything compiled for one routed service."""

    snapshot: ServiceSnapshot
    routes: ServiceRoutes
    policy: ServicePolicy
    chain: Next  # the service's pipeline: policy stages, target selection, forwarder (built once per policy)
    lb: LbAlgorithm

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
        self._log = structlog.get_logger("consulgw.view")
        self.current: GatewayView | None = None
        self.ready = asyncio.Event()

    def book(self) -> PolicyBook:
        """The current policy book (consumers are read through this on every request, so edits apply live)."""
        return self.current.book if self.current is not None else PolicyBook()

    def apply(self, snapshot: CatalogSnapshot) -> None:
        """Build the view for ``snapshot`` and swap it in (the watcher's publish callback)."""
        started = self._clock.monotonic()
        previous = self.current
        old_book = previous.book if previous is not None else None
        book = old_book
        if book is None or snapshot.kv_changed:
            book = build_policy_book(snapshot.kv, previous=old_book, prefix=self._kv_prefix)
            self._report_policy_errors(old_book, book)
            self._watch_referenced(book)
        services = dict(previous.services) if previous is not None else {}
        first = previous is None
        changed_catalog = set(snapshot.services) if first else set(snapshot.changed)
        changed_policy = set(changed_services(old_book, book, snapshot.services)) if book is not old_book else set()
        # Services that left the snapshot.
        removed = False
        for name in [n for n in services if n not in snapshot.services]:
            del services[name]
            self._pools.remove(name)
            self._breakers.forget(name, frozenset())
            self._metrics.forget_service(name)
            removed = True
        routes_changed = first or removed
        for name in sorted((changed_catalog | changed_policy) & set(snapshot.services)):
            svc = snapshot.services[name]
            old = services.get(name)
            if old is not None and old.snapshot == svc and name not in changed_policy:
                continue
            if old is not None and old.snapshot.tags == svc.tags:
                routes = old.routes
            else:
                routes = parse_service_routes(
                    name, svc.tags, tag_prefix=self._tag_prefix, compat=self._compat, datacenter=svc.datacenter
                )
                routes_changed = True
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
            self._pools.update(
                name,
                svc.instances,
                lb,
                subsets=subset_instances(policy, svc.instances),
                slow_start=policy.slow_start.window if policy.slow_start is not None else None,
            )
            self._breakers.configure(name, policy.circuit_breaker)
            self._breakers.forget(name, frozenset(i.id for i in svc.instances))
            services[name] = ServiceEntry(snapshot=svc, routes=routes, policy=policy, chain=chain, lb=lb)
            self._metrics.route_errors.labels(name).set(len(routes.errors))
            in_pool = sum(1 for i in svc.instances if i.weight > 0)
            self._metrics.pool_size.labels(name, "in_pool").set(in_pool)
            self._metrics.pool_size.labels(name, "excluded").set(len(svc.instances) - in_pool)
        composites = self._composites(book, previous, services)
        if book is not old_book and (old_book is None or _routes_of(old_book) != _routes_of(book)):
            routes_changed = True
        table = (
            RouteTable.build([*(entry.routes for entry in services.values()), *composite_routes(book.composites)])
            if routes_changed or previous is None
            else previous.table
        )
        if first or snapshot.kv_changed:
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
        self._metrics.table_swaps.inc()
        self._metrics.routes.set(len(table.routes))
        self._metrics.route_conflicts.set(len(table.conflicts))
        self._log.info(
            "route_table_swapped",
            version=view.version,
            services=len(services),
            routes=len(table.routes),
            rebuilt=len(changed_catalog | changed_policy),
            build_ms=round((self._clock.monotonic() - started) * 1000, 3),
        )
        if snapshot.complete:
            self.ready.set()

    def _composites(
        self, book: PolicyBook, previous: GatewayView | None, services: Mapping[str, ServiceEntry]
    ) -> dict[str, CompositeEntry]:
        """Composite entries (consulgw.composite.build), rebuilt only for changed documents or target policies."""
        old = previous.composites if previous is not None else {}
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


def _routes_of(book: PolicyBook) -> dict[str, object]:
    return {name: c.route for name, c in book.composites.items()}


def referenced_services(book: PolicyBook) -> frozenset[str]:
    """Services any policy of ``book`` sends traffic to (``subsets`` of another service, ``mirror`` targets)."""
    names = set(book.defaults.referenced_services())
    for policy in book.services.values():
        names |= policy.referenced_services()
    return frozenset(names)
