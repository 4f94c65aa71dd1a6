"""RouteTable: host/path/method lookup order, strip, conflicts, and what the admin page reads."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consulgw.routing import MatchKind, RouteConflict, RouteMatch, RouteTable, ServiceRoutes, parse_service_routes


def table(services: dict[str, list[str]]) -> RouteTable:
    return RouteTable.build(parse_service_routes(name, tags) for name, tags in services.items())


ROUTES = {
    "api": ["gw.route=/api"],
    "users": ["gw.route=/api/users strip=/api"],
    "users-get": ["gw.route=/api/users/me methods=GET"],
    "root": ["gw.route=/"],
    "exact": ["gw.route=shop.example.com/", "gw.route=shop.example.com/cart methods=POST"],
    "wild": ["gw.route=*.example.com/"],
    "wild-deep": ["gw.route=*.eu.example.com/"],
    "wild-cart": ["gw.route=*.example.com/cart methods=GET"],
    "v6": ["gw.route=[::1]/six"],
}


@pytest.mark.parametrize(
    ("host", "path", "method", "service", "upstream_path"),
    [
        pytest.param(None, "/api/users", "GET", "users", "/users", id="exact-prefix"),
        pytest.param(None, "/api/users/7", "GET", "users", "/users/7", id="below-prefix"),
        pytest.param(None, "/api/users/", "GET", "users", "/users/", id="trailing-slash"),
        pytest.param(None, "/api/users?x=1", "GET", "users", "/users?x=1", id="query-kept"),
        pytest.param(None, "/api/users/7?q=/api/users", "PUT", "users", "/users/7?q=/api/users", id="query-untouched"),
        pytest.param(None, "/api/usersx", "GET", "api", "/api/usersx", id="segment-boundary"),
        pytest.param(None, "/api", "GET", "api", "/api", id="shorter"),
        pytest.param(None, "/apix", "GET", "root", "/apix", id="not-a-segment-of-api"),
        pytest.param(None, "/", "GET", "root", "/", id="root"),
        pytest.param(None, "/api/users/me", "GET", "users-get", "/api/users/me", id="longest-wins"),
        pytest.param(None, "/api/users/me", "POST", "users", "/users/me", id="method-falls-back-to-shorter"),
        pytest.param("shop.example.com", "/anything", "GET", "exact", "/anything", id="exact-host"),
        pytest.param("SHOP.Example.com:8443", "/x", "GET", "exact", "/x", id="host-case-and-port"),
        pytest.param("shop.example.com.", "/x", "GET", "exact", "/x", id="host-fqdn-dot"),
        pytest.param("shop.example.com", "/cart", "POST", "exact", "/cart", id="exact-host-cart"),
        pytest.param("shop.example.com", "/cart", "GET", "exact", "/cart", id="exact-before-wildcard"),
        pytest.param("a.example.com", "/x", "GET", "wild", "/x", id="wildcard-one-label"),
        pytest.param("a.b.example.com", "/x", "GET", "wild", "/x", id="wildcard-many-labels"),
        pytest.param("a.eu.example.com", "/x", "GET", "wild-deep", "/x", id="most-specific-wildcard"),
        pytest.param("a.example.com", "/cart", "GET", "wild-cart", "/cart", id="wildcard-longest-prefix"),
        pytest.param("a.example.com", "/cart", "DELETE", "wild", "/cart", id="wildcard-method-fallback"),
        pytest.param("example.com", "/x", "GET", "root", "/x", id="wildcard-not-apex"),
        pytest.param("other.org", "/api/users", "GET", "users", "/users", id="unknown-host-uses-hostless"),
        pytest.param("[::1]:8080", "/six", "GET", "v6", "/six", id="ipv6-host-port"),
    ],
)
def test_lookup_found(host: str | None, path: str, method: str, service: str, upstream_path: str) -> None:
    match = table(ROUTES).lookup(host, path, method)
    assert match.kind is MatchKind.FOUND
    assert match.route is not None
    assert match.route.service == service
    assert match.upstream_path == upstream_path
    assert match.allowed == ()


@pytest.mark.parametrize(
    ("routes", "host", "path", "method", "kind", "allowed"),
    [
        pytest.param({}, "a.com", "/", "GET", MatchKind.NO_ROUTE, (), id="empty-table"),
        pytest.param({"a": ["gw.route=/a"]}, None, "/b", "GET", MatchKind.NO_ROUTE, (), id="no-prefix"),
        pytest.param({"a": ["gw.route=/a"]}, None, "/ab", "GET", MatchKind.NO_ROUTE, (), id="not-segment"),
        pytest.param({"a": ["gw.route=/"]}, None, "*", "OPTIONS", MatchKind.NO_ROUTE, (), id="asterisk-form"),
        pytest.param({"a": ["gw.route=/"]}, None, "", "GET", MatchKind.NO_ROUTE, (), id="empty-path"),
        pytest.param({"a": ["gw.route=h.com/"]}, None, "/", "GET", MatchKind.NO_ROUTE, (), id="no-host-header"),
        pytest.param({"a": ["gw.route=h.com/"]}, "x.h.com", "/", "GET", MatchKind.NO_ROUTE, (), id="exact-not-sub"),
        pytest.param(
            {"a": ["gw.route=/a methods=GET"]},
            None,
            "/a",
            "POST",
            MatchKind.METHOD_NOT_ALLOWED,
            ("GET", "HEAD"),
            id="405",
        ),
        pytest.param(
            {"a": ["gw.route=/a methods=GET"]},
            None,
            "/a",
            "get",
            MatchKind.METHOD_NOT_ALLOWED,
            ("GET", "HEAD"),
            id="method-is-case-sensitive",
        ),
        pytest.param(
            {
                "a": ["gw.route=/a/b methods=PUT"],
                "b": ["gw.route=/a methods=GET"],
                "c": ["gw.route=x.com/ methods=DELETE"],
            },
            "x.com",
            "/a/b/c",
            "POST",
            MatchKind.METHOD_NOT_ALLOWED,
            ("DELETE", "GET", "HEAD", "PUT"),
            id="405-allow-is-union-of-matching-routes",
        ),
        pytest.param(
            {"a": ["gw.route=/a methods=GET"], "b": ["gw.route=/b methods=PUT"]},
            None,
            "/a/x",
            "POST",
            MatchKind.METHOD_NOT_ALLOWED,
            ("GET", "HEAD"),
            id="405-only-routes-matching-the-path",
        ),
    ],
)
def test_lookup_misses(
    routes: dict[str, list[str]], host: str | None, path: str, method: str, kind: MatchKind, allowed: tuple[str, ...]
) -> None:
    match = table(routes).lookup(host, path, method)
    assert (match.kind, match.allowed, match.route, match.upstream_path) == (kind, allowed, None, "")


@pytest.mark.parametrize(
    ("tag", "path", "upstream_path"),
    [
        pytest.param("gw.route=/api/users strip=/api", "/api/users/7", "/users/7", id="strip-parent"),
        pytest.param("gw.route=/api strip=/api", "/api", "/", id="strip-everything"),
        pytest.param("gw.route=/api strip=/api", "/api/", "/", id="strip-everything-slash"),
        pytest.param("gw.route=/api strip=/api", "/api?x=1", "/?x=1", id="strip-everything-query"),
        pytest.param("gw.route=/a/b/c strip=/a/b/c", "/a/b/c/d", "/d", id="strip-deep"),
        pytest.param("gw.route=/api", "/api/x%2Fy", "/api/x%2Fy", id="no-strip-no-decoding"),
        pytest.param("gw.route=/caf%C3%A9 strip=/café", "/caf%c3%a9/x%41", "/xA", id="escape-case-insensitive"),
        pytest.param("gw.route=/caf%C3%A9", "/caf%c3%a9", "/caf%C3%A9", id="canonical-path-passed-on"),
        pytest.param("gw.route=/app", "/app/x/../%61dmin//y?a=%2e%2e//", "/app/admin/y?a=%2e%2e//", id="query-exact"),
        pytest.param("gw.route=/pub strip=/pub", "/pub/public/./x/..", "/public/", id="strip-after-dots"),
        pytest.param("gw.route=/%61pp", "/app/x", "/app/x", id="prefix-is-canonical-too"),
    ],
)
def test_upstream_path(tag: str, path: str, upstream_path: str) -> None:
    match = table({"svc": [tag]}).lookup(None, path, "GET")
    assert match.kind is MatchKind.FOUND
    assert match.upstream_path == upstream_path


def test_encoded_slash_is_not_a_segment_boundary() -> None:
    routes = table({"users": ["gw.route=/api/users"], "api": ["gw.route=/api"]})
    assert routes.lookup(None, "/api%2Fusers", "GET").kind is MatchKind.NO_ROUTE  # one segment: "api%2Fusers"
    match = routes.lookup(None, "/api/x%2Fusers", "GET")
    assert match.route is not None
    assert match.route.service == "api"


def test_conflict_smallest_service_name_wins() -> None:
    routes = table({"zeta": ["gw.route=a.com/x"], "alpha": ["gw.route=a.com/x/"], "mid": ["gw.route=a.com/x"]})
    match = routes.lookup("a.com", "/x", "GET")
    assert match.route is not None
    assert match.route.service == "alpha"
    assert routes.conflicts == (RouteConflict(host="a.com", prefix="/x", winner="alpha", losers=("mid", "zeta")),)
    assert routes.conflicts[0].label == "a.com/x"
    assert "alpha wins" in routes.conflicts[0].message
    assert [r.service for r in routes.routes] == ["alpha"]


@pytest.mark.parametrize(
    ("services", "winners", "conflicts"),
    [
        pytest.param(
            {"a": ["gw.route=/x methods=GET"], "b": ["gw.route=/x methods=POST"]},
            {"a", "b"},
            (),
            id="disjoint-methods-share-a-prefix",
        ),
        pytest.param(
            {"a": ["gw.route=/x methods=GET"], "b": ["gw.route=/x methods=GET,POST"]},
            {"a"},
            (RouteConflict(host=None, prefix="/x", winner="a", losers=("b",)),),
            id="partial-overlap-loses-whole-route",
        ),
        pytest.param(
            {"a": ["gw.route=/x methods=POST"], "b": ["gw.route=/x"]},
            {"a"},
            (RouteConflict(host=None, prefix="/x", winner="a", losers=("b",)),),
            id="any-method-overlaps-everything",
        ),
        pytest.param(
            {"a": ["gw.route=/x methods=GET"], "b": ["gw.route=/x methods=PUT"], "c": ["gw.route=/x methods=GET,PUT"]},
            {"a", "b"},
            (
                RouteConflict(host=None, prefix="/x", winner="a", losers=("c",)),
                RouteConflict(host=None, prefix="/x", winner="b", losers=("c",)),
            ),
            id="loser-against-two-winners",
        ),
        pytest.param(
            {"a": ["gw.route=one.com/x"], "b": ["gw.route=two.com/x"], "c": ["gw.route=/x"]},
            {"a", "b", "c"},
            (),
            id="different-hosts-never-conflict",
        ),
    ],
)
def test_conflicts(services: dict[str, list[str]], winners: set[str], conflicts: tuple[RouteConflict, ...]) -> None:
    routes = table(services)
    assert {r.service for r in routes.routes} == winners
    assert routes.conflicts == conflicts


def test_admin_view() -> None:
    routes = table(
        {
            "b": ["gw.route=/b", "gw.route=/bad strip=/nope", "gw.lb=least_conn"],
            "a": ["gw.route=x.com/a/deep", "gw.route=*.com/a", "gw.route=x.com/"],
        }
    )
    assert [r.label for r in routes.routes] == ["x.com/a/deep", "x.com/", "*.com/a", "*/b"]
    assert [(e.service, e.tag) for e in routes.errors] == [("b", "gw.route=/bad strip=/nope")]
    assert list(routes.services) == ["a", "b"]
    assert routes.services["b"].algorithm == "least_conn"
    assert routes.services["a"].algorithm == "round_robin"
    assert [r.label for r in routes.routes_of("a")] == ["x.com/a/deep", "x.com/", "*.com/a"]


def test_service_given_twice_uses_the_later() -> None:
    first = parse_service_routes("s", ["gw.route=/old"])
    second = parse_service_routes("s", ["gw.route=/new"])
    routes = RouteTable.build([first, second])
    assert [r.prefix for r in routes.routes] == ["/new"]


def test_rebuild_from_cached_service_routes() -> None:
    cache = {f"s{i}": parse_service_routes(f"s{i}", [f"gw.route=/s{i}"]) for i in range(50)}
    before = RouteTable.build(cache.values())
    cache["s7"] = parse_service_routes("s7", ["gw.route=/seven"])
    after = RouteTable.build(cache.values())
    assert before.lookup(None, "/s7", "GET").kind is MatchKind.FOUND
    assert after.lookup(None, "/s7", "GET").kind is MatchKind.NO_ROUTE
    assert after.lookup(None, "/seven/x", "GET").kind is MatchKind.FOUND
    assert before.lookup(None, "/seven", "GET").kind is MatchKind.NO_ROUTE  # the old table is untouched


def test_empty_table() -> None:
    empty = RouteTable()
    assert empty.lookup("a", "/", "GET").kind is MatchKind.NO_ROUTE
    assert RouteTable.build([]) == empty


def test_large_table_builds_and_finds_every_route() -> None:
    services = [
        ServiceRoutes(service=f"s{i}", routes=parse_service_routes(f"s{i}", [f"gw.route=h{i % 10}.com/p/{i}"]).routes)
        for i in range(1000)
    ]
    routes = RouteTable.build(services)
    assert len(routes.routes) == 1000
    for i in range(0, 1000, 37):
        match = routes.lookup(f"h{i % 10}.com", f"/p/{i}/x", "GET")
        assert match.route is not None
        assert match.route.service == f"s{i}"


_services = st.dictionaries(
    st.sampled_from(["a", "b", "c", "d"]),
    st.lists(
        st.sampled_from(
            [
                "gw.route=/x",
                "gw.route=/x methods=GET",
                "gw.route=/x methods=POST",
                "gw.route=/x/y",
                "gw.route=h.com/x",
                "gw.route=*.com/x methods=PUT",
                "gw.route=/",
            ]
        ),
        max_size=4,
    ),
)


@given(services=_services, order=st.randoms(use_true_random=False))
def test_build_is_deterministic_and_lookups_agree_with_a_linear_scan(
    services: dict[str, list[str]], order: random.Random
) -> None:
    parsed = [parse_service_routes(name, tags) for name, tags in services.items()]
    shuffled = list(parsed)
    order.shuffle(shuffled)
    built = RouteTable.build(parsed)
    assert RouteTable.build(shuffled) == built
    for host in (None, "h.com", "a.h.com", "z.org"):
        for path in ("/", "/x", "/x/y/z", "/xy"):
            for method in ("GET", "POST", "PUT", "DELETE"):
                assert built.lookup(host, path, method) == _linear_lookup(built, host, path, method)


def _linear_lookup(built: RouteTable, host: str | None, path: str, method: str) -> RouteMatch:
    """The documented semantics, spelt out the slow way, over ``built.routes`` (already in priority order)."""

    def host_rank(route_host: str | None) -> int | None:
        if route_host is None:
            return 2
        if host is None:
            return None
        if route_host == host:
            return 0
        if route_host.startswith("*.") and host.endswith(route_host[1:]):
            return 1
        return None

    def path_ok(prefix: str) -> bool:
        return prefix == "/" or path == prefix or path.startswith(prefix + "/")

    allowed: set[str] = set()
    for route in built.routes:  # priority order: exact host, wildcard by specificity, host-less; longest prefix
        if host_rank(route.host) is None or not path_ok(route.prefix):
            continue
        if route.methods is None or method in route.methods:
            return RouteMatch(kind=MatchKind.FOUND, route=route, upstream_path=path)
        allowed |= route.methods
    if allowed:
        return RouteMatch(kind=MatchKind.METHOD_NOT_ALLOWED, allowed=tuple(sorted(allowed)))
    return RouteMatch(kind=MatchKind.NO_ROUTE)


_TAGS = st.lists(
    st.sampled_from(
        [
            "gw.route=/x",
            "gw.route=/x methods=GET",
            "gw.route=/x methods=POST",
            "gw.route=/x/y",
            "gw.route=h.com/x",
            "gw.route=h.com/",
            "gw.route=*.com/x methods=PUT",
            "gw.route=*.h.com/",
            "gw.route=/",
            "gw.route=/bad strip=/nope",
        ]
    ),
    max_size=4,
)
_steps = st.lists(
    st.dictionaries(st.sampled_from(["a", "b", "c", "d", "e"]), st.one_of(st.none(), _TAGS), min_size=1, max_size=3),
    min_size=1,
    max_size=6,
)


@given(start=st.dictionaries(st.sampled_from(["a", "b", "c", "d", "e"]), _TAGS), steps=_steps)
def test_updated_is_the_table_build_makes(
    start: dict[str, list[str]], steps: list[dict[str, list[str] | None]]
) -> None:
    """Each incremental update (services replaced, added, removed) gives exactly the table a full build gives."""
    current = table(start)
    services = dict(start)
    for step in steps:
        changes = {name: None if tags is None else parse_service_routes(name, tags) for name, tags in step.items()}
        current = current.updated(changes)
        for name, tags in step.items():
            if tags is None:
                services.pop(name, None)
            else:
                services[name] = tags
        built = table(services)
        assert current == built
        assert set(current.services) == set(built.services)  # order: build() sorts, updated() appends
        for host in (None, "h.com", "a.h.com", "z.com"):
            for path in ("/", "/x", "/x/y/z", "/bad"):
                for method in ("GET", "POST", "PUT"):
                    assert current.lookup(host, path, method) == built.lookup(host, path, method)


def test_updated_rejects_routes_filed_under_another_name() -> None:
    with pytest.raises(ValueError, match="holds the routes of 'b'"):
        RouteTable().updated({"a": parse_service_routes("b", ["gw.route=/b"])})


def test_updated_without_changes_is_the_same_table() -> None:
    routes = table(ROUTES)
    assert routes.updated({}) is routes
