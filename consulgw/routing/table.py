"""The route table: built whole from every service's parsed routes, immutable, looked up on every request.

Lookup order (the first route that matches host, path and method wins):

1. routes for the exact host, then wildcard hosts most specific first (``*.a.example.com`` before
   ``*.example.com``), then host-less routes;
2. within each host, the longest path prefix first, on segment boundaries (``/api`` matches ``/api`` and
   ``/api/x``, never ``/apix``);
3. a route whose methods exclude the request's method is skipped, and the search goes on to less specific
   prefixes and hosts. Only when some route matched host and path but none allowed the method is the answer
   ``METHOD_NOT_ALLOWED``, with ``allowed`` listing every method those routes accept.

Conflicts (two routes with the same host and prefix and a method in common) are settled when the table is built:
the route of the lexicographically smallest service name wins; the others are listed in ``conflicts``.
"""

from __future__ import annotations

import bisect
import enum
import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from consulgw.errors import InvalidPath
from consulgw.routing.path import EncodedSlashes, canonical_path, is_canonical, split_target
from consulgw.routing.rules import RouteError, RouteSpec, ServiceRoutes
from consulgw.steps import Steps, run_steps


class MatchKind(enum.Enum):
    NO_ROUTE = "no_route"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    FOUND = "found"


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteMatch:
    """The answer of :meth:`RouteTable.lookup`.

    ``upstream_path`` (only for ``FOUND``, else ``""``) is the canonical request path (``consulgw.routing.path``)
    the route matched, with the route's ``strip`` applied, and the query string, if one was given, carried over
    byte for byte. So the upstream receives exactly the path that was routed.
    """

    kind: MatchKind
    route: RouteSpec | None = None
    allowed: tuple[str, ...] = ()
    upstream_path: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteConflict:
    """Several services claim the same host and prefix with a method in common; ``winner`` keeps the route."""

    host: str | None
    prefix: str
    winner: str  # service name
    losers: tuple[str, ...]  # service names, sorted

    @property
    def label(self) -> str:
        return f"{self.host or '*'}{self.prefix}"

    @property
    def message(self) -> str:
        return f"route {self.label} is claimed by {', '.join((self.winner, *self.losers))}; {self.winner} wins"


NO_ROUTE = RouteMatch(kind=MatchKind.NO_ROUTE)


@dataclass(frozen=True, slots=True)
class _Slot:
    """All winning routes of one host + prefix (their methods are disjoint, or there is one any-method route)."""

    any_method: RouteSpec | None
    by_method: Mapping[str, RouteSpec]
    methods: frozenset[str]


@dataclass(frozen=True, slots=True)
class _Bucket:
    """The routes of one host (or wildcard, or no host), by prefix."""

    slots: dict[str, _Slot]
    max_len: int


@dataclass(frozen=True, slots=True)
class _Index:
    exact: dict[str, _Bucket]  # private plain dicts, never mutated once built (cheap to copy for the next table)
    wildcard: dict[str, _Bucket]  # key: the suffix after "*."
    any_host: _Bucket | None


_EMPTY_INDEX = _Index(exact={}, wildcard={}, any_host=None)


GroupKey = tuple[str | None, str]  # (host, prefix)
PriorityKey = tuple[int, int, str, int, str, str, str]
_PER_STEP = 256  # services, groups or routes handled between two yields of iter_updated


@dataclass(frozen=True, slots=True)
class _Ranked:
    """Incremental bookkeeping behind a table, so :meth:`RouteTable.updated` touches only what a change touches."""

    # Plain dicts, never exposed and never mutated once built: ``dict.copy`` of 10,000 entries takes microseconds.
    services: dict[str, ServiceRoutes]  # what ``RouteTable.services`` shows
    groups: dict[GroupKey, tuple[RouteSpec, ...]]  # every candidate route of a host + prefix, by (service, tag)
    winners: dict[GroupKey, tuple[RouteSpec, ...]]  # the routes that won in each group
    conflicts: dict[GroupKey, tuple[RouteConflict, ...]]
    keys: tuple[PriorityKey, ...]  # _priority of each route of ``routes``, same order
    with_errors: tuple[str, ...]  # services that have rejected tags, sorted


_EMPTY_RANKED = _Ranked(services={}, groups={}, winners={}, conflicts={}, keys=(), with_errors=())


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteTable:
    """An immutable, pre-indexed route table. Build it with :meth:`build`, or derive the next one with
    :meth:`updated`; swap whole tables, never edit one.

    ``routes`` lists the winning routes in lookup priority order; ``conflicts`` and ``errors`` are what an admin
    page shows next to them; ``services`` maps every service given to ``build`` to its parsed routes (so its
    ``lb`` and rejected tags are at hand).
    """

    routes: tuple[RouteSpec, ...] = ()
    conflicts: tuple[RouteConflict, ...] = ()
    errors: tuple[RouteError, ...] = ()
    services: Mapping[str, ServiceRoutes] = field(default_factory=lambda: MappingProxyType({}))
    _index: _Index = field(default=_EMPTY_INDEX, repr=False, compare=False)
    _ranked: _Ranked = field(default=_EMPTY_RANKED, repr=False, compare=False)

    @classmethod
    def build(cls, services: Iterable[ServiceRoutes]) -> RouteTable:
        """Index every service's routes. A service name given twice: the later one is used. ``services`` of the
        result is sorted by name (an updated table lists newcomers last: order carries no meaning)."""
        by_name = {s.service: s for s in services}
        return _EMPTY_TABLE.updated({name: by_name[name] for name in sorted(by_name)})

    def updated(self, changes: Mapping[str, ServiceRoutes | None]) -> RouteTable:
        """This table with some services replaced, added or (``None``) removed: the same table :meth:`build` makes
        from the resulting services, in time proportional to what changed (one service of 10,000: a few
        milliseconds, where a full build takes a hundred or more)."""
        return run_steps(self.iter_updated(changes))

    def iter_updated(self, changes: Mapping[str, ServiceRoutes | None]) -> Steps[RouteTable]:
        """:meth:`updated` as a generator that yields every few hundred services, groups or routes (a caller on an
        event loop runs it in slices: a cold start's 10,000 services never hold the loop for long) and returns
        the table."""
        if not changes:
            return self
        for name, svc in changes.items():
            if svc is not None and svc.service != name:
                raise ValueError(f"changes[{name!r}] holds the routes of {svc.service!r}")
        old = self._ranked
        services = old.services.copy()
        fresh: dict[GroupKey, list[RouteSpec]] = {}  # the changed services' routes, by group
        touched: set[GroupKey] = set()
        with_errors = {name for name in old.with_errors if name not in changes}
        for count, (name, svc) in enumerate(changes.items(), 1):
            before = services.get(name)
            if before is not None:
                touched.update((r.host, r.prefix) for r in before.routes)
            if svc is None:
                services.pop(name, None)
            else:
                services[name] = svc  # a replaced service keeps its place, a new one comes last
                if svc.errors:
                    with_errors.add(name)
                for route in svc.routes:
                    key = (route.host, route.prefix)
                    touched.add(key)
                    fresh.setdefault(key, []).append(route)
            if count % _PER_STEP == 0:
                yield

        groups = old.groups.copy()
        winners = old.winners.copy()
        conflicts = old.conflicts.copy()
        removed: list[RouteSpec] = []
        added: list[RouteSpec] = []
        for count, key in enumerate(touched, 1):
            removed.extend(winners.pop(key, ()))
            conflicts.pop(key, None)
            candidates = [r for r in groups.pop(key, ()) if r.service not in changes]
            candidates.extend(fresh.get(key, ()))
            if candidates:
                candidates.sort(key=_candidate_order)
                groups[key] = tuple(candidates)
                kept, lost = _settle(key, candidates)
                winners[key] = kept
                added.extend(kept)
                if lost:
                    conflicts[key] = lost
            if count % (_PER_STEP // 4) == 0:  # each group costs ~20 microseconds
                yield

        routes, keys = yield from _rerank(self.routes, old.keys, removed, added)
        error_names = tuple(sorted(with_errors))
        if (
            len(conflicts) == len(old.conflicts)
            and not (touched & old.conflicts.keys())
            and not (touched & conflicts.keys())
        ):
            all_conflicts = self.conflicts
        else:
            all_conflicts = tuple(
                sorted(
                    (c for group in conflicts.values() for c in group), key=lambda c: (c.host or "", c.prefix, c.winner)
                )
            )
        index = yield from _reindex(self._index, winners, touched)
        return RouteTable(
            routes=routes,
            conflicts=all_conflicts,
            errors=tuple(e for name in error_names for e in services[name].errors),
            services=MappingProxyType(services),
            _index=index,
            _ranked=_Ranked(
                services=services,
                groups=groups,
                winners=winners,
                conflicts=conflicts,
                keys=keys,
                with_errors=error_names,
            ),
        )

    def lookup(
        self, host: str | None, target: str, method: str, *, encoded_slashes: EncodedSlashes = "keep"
    ) -> RouteMatch:
        """Match a request. ``target`` is the raw request-target: the percent-encoded path, optionally with
        ``?query``; ``host`` is the Host header (``:port`` ignored, case-insensitive) or None; ``method`` is
        case-sensitive.

        The path is brought to its canonical form first (``consulgw.routing.path``), which raises ``InvalidPath``
        (400) for a path that is malformed, climbs above the root, holds an encoded slash under
        ``encoded_slashes="reject"``, or would select another route once its encoded slashes are decoded.
        A target that is not a path (``*``, absolute-form) finds no route.
        """
        raw_path, query = split_target(target)
        if not raw_path.startswith("/"):
            return NO_ROUTE
        if is_canonical(raw_path):
            return self._match(host, raw_path, method, query)
        canonical = canonical_path(raw_path, encoded_slashes=encoded_slashes)
        match = self._match(host, canonical.path, method, query)
        # A kept %2F / %5C: an upstream that decodes it must not land on another route's path.
        if (
            canonical.decoded is not None
            and match.route is not None
            and self._match(host, canonical.decoded, method, "").route is not match.route
        ):
            raise InvalidPath(f"the path {raw_path[:80]!r} selects another route once its encoded slashes are decoded")
        return match

    def _match(self, host: str | None, match_path: str, method: str, query: str) -> RouteMatch:
        index = self._index
        allowed: set[str] | None = None

        buckets: list[_Bucket] = []
        if host:
            name = _normalize_host(host)
            bucket = index.exact.get(name)
            if bucket is not None:
                buckets.append(bucket)
            if index.wildcard:
                dot = name.find(".")
                while dot >= 0:
                    bucket = index.wildcard.get(name[dot + 1 :])
                    if bucket is not None:
                        buckets.append(bucket)
                    dot = name.find(".", dot + 1)
        if index.any_host is not None:
            buckets.append(index.any_host)

        for bucket in buckets:
            slots = bucket.slots
            candidate = match_path
            while True:
                if len(candidate) <= bucket.max_len:
                    slot = slots.get(candidate)
                    if slot is not None:
                        route = slot.by_method.get(method) or slot.any_method
                        if route is not None:
                            return RouteMatch(
                                kind=MatchKind.FOUND,
                                route=route,
                                upstream_path=_upstream_path(route, match_path) + query,
                            )
                        if allowed is None:
                            allowed = set(slot.methods)
                        else:
                            allowed.update(slot.methods)
                if len(candidate) == 1:
                    break
                cut = candidate.rfind("/")
                candidate = candidate[:cut] if cut > 0 else "/"
        if allowed is None:
            return NO_ROUTE
        return RouteMatch(kind=MatchKind.METHOD_NOT_ALLOWED, allowed=tuple(sorted(allowed)))

    def routes_of(self, service: str) -> tuple[RouteSpec, ...]:
        """The winning routes of one service (in priority order)."""
        return tuple(r for r in self.routes if r.service == service)


_EMPTY_TABLE = RouteTable()


def _priority(route: RouteSpec) -> PriorityKey:
    host = route.host
    if host is None:
        tier, specificity, key = 2, 0, ""
    elif host.startswith("*."):
        tier, specificity, key = 1, -host.count("."), host
    else:
        tier, specificity, key = 0, 0, host
    return (tier, specificity, key, -len(route.prefix), route.prefix, route.service, route.tag)


def _candidate_order(route: RouteSpec) -> tuple[str, str]:
    """Within a host + prefix, routes are considered by service name, then tag: the smallest name wins a conflict."""
    return route.service, route.tag


def _settle(key: GroupKey, candidates: list[RouteSpec]) -> tuple[tuple[RouteSpec, ...], tuple[RouteConflict, ...]]:
    """The winners of one host + prefix and the conflicts they won."""
    if len(candidates) == 1:  # the common case: one route claims this host + prefix
        return (candidates[0],), ()
    kept: list[RouteSpec] = []
    lost: dict[str, set[str]] = {}  # winner service -> loser services
    for route in candidates:
        beaten_by = [k for k in kept if k.overlaps(route)]
        if beaten_by:
            for k in beaten_by:
                lost.setdefault(k.service, set()).add(route.service)
        else:
            kept.append(route)
    host, prefix = key
    conflicts = tuple(
        RouteConflict(host=host, prefix=prefix, winner=winner, losers=tuple(sorted(lost[winner])))
        for winner in sorted(lost)
    )
    return tuple(kept), conflicts


def _rerank(
    routes: tuple[RouteSpec, ...], keys: tuple[PriorityKey, ...], removed: list[RouteSpec], added: list[RouteSpec]
) -> Steps[tuple[tuple[RouteSpec, ...], tuple[PriorityKey, ...]]]:
    """The winning routes in priority order after ``removed`` left and ``added`` came (keys are unique: they end
    with service and tag)."""
    if len(removed) + len(added) <= len(routes) // 8:  # a small change: move the few routes with bisect
        route_list = list(routes)
        key_list = list(keys)
        for route in removed:
            at = bisect.bisect_left(key_list, _priority(route))
            del key_list[at]
            del route_list[at]
        for route in added:
            key = _priority(route)
            at = bisect.bisect_left(key_list, key)
            key_list.insert(at, key)
            route_list.insert(at, route)
        return tuple(route_list), tuple(key_list)
    # A large change (a cold start): sort the newcomers in small runs and merge them with the routes that stay,
    # yielding between runs, so no single sort of 10,000 routes holds the caller.
    gone = set(removed)
    runs: list[list[tuple[PriorityKey, RouteSpec]]] = []
    for start in range(0, len(routes), 4 * _PER_STEP):
        chunk = zip(keys[start : start + 4 * _PER_STEP], routes[start : start + 4 * _PER_STEP], strict=True)
        runs.append([(k, r) for k, r in chunk if r not in gone])  # each run is sorted already
        yield
    for start in range(0, len(added), _PER_STEP):
        runs.append(sorted((_priority(r), r) for r in added[start : start + _PER_STEP]))
        yield
    out_routes: list[RouteSpec] = []
    out_keys: list[PriorityKey] = []
    for count, (key, route) in enumerate(heapq.merge(*runs), 1):
        out_keys.append(key)
        out_routes.append(route)
        if count % (2 * _PER_STEP) == 0:
            yield
    return tuple(out_routes), tuple(out_keys)


def _reindex(index: _Index, winners: Mapping[GroupKey, tuple[RouteSpec, ...]], touched: set[GroupKey]) -> Steps[_Index]:
    """``index`` with the slots of the ``touched`` host + prefix groups rebuilt from ``winners``; every other bucket
    and slot is shared with ``index``."""
    if not touched:
        return index
    by_host: dict[str | None, list[str]] = {}
    for count, (host, prefix) in enumerate(touched, 1):
        by_host.setdefault(host, []).append(prefix)
        if count % _PER_STEP == 0:
            yield
    exact = dict(index.exact)  # plain dicts (see _Index): C-level copies
    wildcard = dict(index.wildcard)
    any_host = index.any_host
    for host, prefixes in by_host.items():
        if host is None:
            any_host = yield from _rebucket(any_host, host, prefixes, winners)
        elif host.startswith("*."):
            _put(wildcard, host[2:], (yield from _rebucket(wildcard.get(host[2:]), host, prefixes, winners)))
        else:
            _put(exact, host, (yield from _rebucket(exact.get(host), host, prefixes, winners)))
    return _Index(exact=exact, wildcard=wildcard, any_host=any_host)


def _rebucket(
    bucket: _Bucket | None, host: str | None, prefixes: list[str], winners: Mapping[GroupKey, tuple[RouteSpec, ...]]
) -> Steps[_Bucket | None]:
    slots = dict(bucket.slots) if bucket is not None else {}  # a plain dict: a C-level copy
    for count, prefix in enumerate(prefixes, 1):
        group = winners.get((host, prefix))
        if group:
            slots[prefix] = _slot(group)
        else:
            slots.pop(prefix, None)
        if count % (_PER_STEP // 4) == 0:
            yield
    if not slots:
        return None
    return _Bucket(slots=slots, max_len=max(map(len, slots)))


def _put(buckets: dict[str, _Bucket], key: str, bucket: _Bucket | None) -> None:
    if bucket is None:
        buckets.pop(key, None)
    else:
        buckets[key] = bucket


def _slot(group: tuple[RouteSpec, ...]) -> _Slot:
    any_method = next((r for r in group if r.methods is None), None)
    by_method = {m: r for r in group if r.methods is not None for m in r.methods}
    return _Slot(any_method=any_method, by_method=by_method, methods=frozenset(by_method))


def _normalize_host(host: str) -> str:
    """``API.Example.com:8443`` -> ``api.example.com``; ``[::1]:80`` -> ``[::1]``; ``example.com.`` -> ``example.com``."""
    name = host.lower()
    if name.startswith("["):
        end = name.find("]")
        return name[: end + 1] if end > 0 else name
    colon = name.rfind(":")
    if colon >= 0:
        name = name[:colon]
    if name.endswith("."):
        name = name[:-1]
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return name
    return name


def _upstream_path(route: RouteSpec, path: str) -> str:
    """The canonical path the route matched, with its ``strip`` removed (``/`` when nothing is left)."""
    strip = route.strip
    if strip is None:
        return path
    rest = path[len(strip) :]
    return rest if rest.startswith("/") else "/" + rest
