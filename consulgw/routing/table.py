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

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from consulgw.errors import InvalidPath
from consulgw.routing.path import EncodedSlashes, canonical_path, is_canonical, split_target
from consulgw.routing.rules import RouteError, RouteSpec, ServiceRoutes


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

    slots: Mapping[str, _Slot]
    max_len: int


@dataclass(frozen=True, slots=True)
class _Index:
    exact: Mapping[str, _Bucket]
    wildcard: Mapping[str, _Bucket]  # key: the suffix after "*."
    any_host: _Bucket | None


_EMPTY_INDEX = _Index(exact=MappingProxyType({}), wildcard=MappingProxyType({}), any_host=None)


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteTable:
    """An immutable, pre-indexed route table. Build it with :meth:`build`; swap whole tables, never edit one.

    ``routes`` lists the winning routes in lookup priority order; ``conflicts`` and ``errors`` are what an admin
    page shows next to them; ``services`` maps every service given to ``build`` to its parsed routes (so its
    ``lb`` and rejected tags are at hand).
    """

    routes: tuple[RouteSpec, ...] = ()
    conflicts: tuple[RouteConflict, ...] = ()
    errors: tuple[RouteError, ...] = ()
    services: Mapping[str, ServiceRoutes] = field(default_factory=lambda: MappingProxyType({}))
    _index: _Index = field(default=_EMPTY_INDEX, repr=False, compare=False)

    @classmethod
    def build(cls, services: Iterable[ServiceRoutes]) -> RouteTable:
        """Index every service's routes. A service name given twice: the later one is used."""
        by_name = {s.service: s for s in services}
        ordered = [by_name[name] for name in sorted(by_name)]

        groups: dict[tuple[str | None, str], list[RouteSpec]] = {}
        for svc in ordered:
            for route in sorted(svc.routes, key=lambda r: r.tag):
                groups.setdefault((route.host, route.prefix), []).append(route)

        winners: list[RouteSpec] = []
        conflicts: list[RouteConflict] = []
        for (host, prefix), candidates in groups.items():
            kept: list[RouteSpec] = []
            lost: dict[str, set[str]] = {}  # winner service -> loser services
            for route in candidates:
                beaten_by = [k for k in kept if k.overlaps(route)]
                if beaten_by:
                    for k in beaten_by:
                        lost.setdefault(k.service, set()).add(route.service)
                else:
                    kept.append(route)
            winners.extend(kept)
            for winner in sorted(lost):
                losers = tuple(sorted(lost[winner]))
                conflicts.append(RouteConflict(host=host, prefix=prefix, winner=winner, losers=losers))

        winners.sort(key=_priority)
        conflicts.sort(key=lambda c: (c.host or "", c.prefix, c.winner))
        errors = tuple(e for svc in ordered for e in svc.errors)
        return cls(
            routes=tuple(winners),
            conflicts=tuple(conflicts),
            errors=errors,
            services=MappingProxyType({svc.service: svc for svc in ordered}),
            _index=_build_index(winners),
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


def _priority(route: RouteSpec) -> tuple[int, int, str, int, str, str, str]:
    host = route.host
    if host is None:
        tier, specificity, key = 2, 0, ""
    elif host.startswith("*."):
        tier, specificity, key = 1, -host.count("."), host
    else:
        tier, specificity, key = 0, 0, host
    return (tier, specificity, key, -len(route.prefix), route.prefix, route.service, route.tag)


def _build_index(routes: list[RouteSpec]) -> _Index:
    per_host: dict[str | None, dict[str, list[RouteSpec]]] = {}
    for route in routes:
        per_host.setdefault(route.host, {}).setdefault(route.prefix, []).append(route)
    exact: dict[str, _Bucket] = {}
    wildcard: dict[str, _Bucket] = {}
    any_host: _Bucket | None = None
    for host, prefixes in per_host.items():
        slots: dict[str, _Slot] = {}
        for prefix, group in prefixes.items():
            any_method = next((r for r in group if r.methods is None), None)
            by_method = {m: r for r in group if r.methods is not None for m in r.methods}
            slots[prefix] = _Slot(any_method=any_method, by_method=by_method, methods=frozenset(by_method))
        bucket = _Bucket(slots=slots, max_len=max(len(p) for p in slots))
        if host is None:
            any_host = bucket
        elif host.startswith("*."):
            wildcard[host[2:]] = bucket
        else:
            exact[host] = bucket
    return _Index(exact=exact, wildcard=wildcard, any_host=any_host)


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
