"""The tag grammar: gw.route / gw.lb, the configurable prefix, Fabio's urlprefix- tags, and precise errors."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consulgw.errors import ConfigError
from consulgw.routing import RouteSpec, ServiceRoutes, has_route_tags, parse_service_routes

FABIO = frozenset({"fabio"})


def one_route(tag: str, **kwargs: object) -> RouteSpec:
    parsed = parse_service_routes("svc", [tag], **kwargs)  # type: ignore[arg-type]
    assert parsed.errors == (), parsed.errors
    assert len(parsed.routes) == 1
    return parsed.routes[0]


@pytest.mark.parametrize(
    ("tag", "host", "prefix", "strip", "methods"),
    [
        pytest.param("gw.route=/users", None, "/users", None, None, id="hostless"),
        pytest.param("gw.route=*/users", None, "/users", None, None, id="star-host-is-any-host"),
        pytest.param("gw.route=api.example.com/users", "api.example.com", "/users", None, None, id="exact-host"),
        pytest.param("gw.route=API.Example.COM/users", "api.example.com", "/users", None, None, id="host-lowercased"),
        pytest.param("gw.route=api.example.com./users", "api.example.com", "/users", None, None, id="fqdn-dot"),
        pytest.param("gw.route=*.example.com/", "*.example.com", "/", None, None, id="wildcard-host"),
        pytest.param("gw.route=bücher.example/", "xn--bcher-kva.example", "/", None, None, id="idna-host"),
        pytest.param("gw.route=[0:0::1]/x", "[::1]", "/x", None, None, id="ipv6-literal"),
        pytest.param("gw.route=10.0.0.1/x", "10.0.0.1", "/x", None, None, id="ipv4-literal"),
        pytest.param("gw.route=/users/", None, "/users", None, None, id="trailing-slash-dropped"),
        pytest.param("gw.route=/", None, "/", None, None, id="root-kept"),
        pytest.param("gw.route=//", None, "/", None, None, id="slashes-only-is-root"),
        pytest.param("gw.route=/caf%c3%a9", None, "/caf%C3%A9", None, None, id="escapes-uppercased"),
        pytest.param("gw.route=/café", None, "/caf%C3%A9", None, None, id="non-ascii-percent-encoded"),
        pytest.param("gw.route=/%61pi/%7Eu", None, "/api/~u", None, None, id="unreserved-escapes-decoded"),
        pytest.param("gw.route=/a//b", None, "/a/b", None, None, id="slashes-merged"),
        pytest.param("gw.route=/api strip=/%61pi", None, "/api", "/api", None, id="strip-canonical-too"),
        pytest.param("gw.route=/api/users strip=/api", None, "/api/users", "/api", None, id="strip"),
        pytest.param("gw.route=/api strip=/api/", None, "/api", "/api", None, id="strip-everything"),
        pytest.param(
            "gw.route=/u methods=GET,POST", None, "/u", None, frozenset({"GET", "HEAD", "POST"}), id="get-adds-head"
        ),
        pytest.param("gw.route=/u methods=post,put", None, "/u", None, frozenset({"POST", "PUT"}), id="upper-cased"),
        pytest.param(
            "gw.route=a.example.com/v1/u strip=/v1 methods=DELETE",
            "a.example.com",
            "/v1/u",
            "/v1",
            frozenset({"DELETE"}),
            id="all-options",
        ),
        pytest.param("gw.route = /spaced ", None, "/spaced", None, None, id="spaces-around-equals"),
    ],
)
def test_valid_route(tag: str, host: str | None, prefix: str, strip: str | None, methods: frozenset[str]) -> None:
    route = one_route(tag)
    assert (route.host, route.prefix, route.strip, route.methods) == (host, prefix, strip, methods)
    assert route.tag == tag
    assert route.service == "svc"


@pytest.mark.parametrize(
    ("tag", "reason"),
    [
        pytest.param("gw.route=", "empty route", id="empty"),
        pytest.param("gw.route", "missing '='; a gw.route tag reads gw.route=<value>", id="no-equals"),
        pytest.param("gw.route=users", "missing path in 'users'", id="no-slash"),
        pytest.param(
            "gw.route=strip=/x", "route must start with [host]/path, not the option 'strip=/x'", id="opt-first"
        ),
        pytest.param("gw.route=/users foo=bar", "unknown option 'foo='", id="unknown-option"),
        pytest.param(
            "gw.route=/users strp=/users", "did you mean 'gw.route=/users strip=/users'?", id="option-typo-hint"
        ),
        pytest.param("gw.route=/users strip", "option 'strip' is not key=value", id="option-no-value"),
        pytest.param("gw.route=/u strip=/u strip=/u", "option strip= given twice", id="option-twice"),
        pytest.param("gw.route=/users strip=/other", "strip=/other is not a leading part", id="strip-elsewhere"),
        pytest.param("gw.route=/users strip=/us", "strip=/us is not a leading part", id="strip-mid-segment"),
        pytest.param("gw.route=/users strip=/", "strip=/ strips nothing", id="strip-root"),
        pytest.param("gw.route=/users strip=users", "strip 'users' must start with '/'", id="strip-relative"),
        pytest.param("gw.route=/u methods=", "methods= is empty", id="methods-empty"),
        pytest.param("gw.route=/u methods=GET,,POST", "empty method in methods=GET,,POST", id="methods-hole"),
        pytest.param("gw.route=/u methods=GET,", "empty method", id="methods-trailing-comma"),
        pytest.param("gw.route=/u methods=G(T", "method 'G(T' in methods=G(T is not an HTTP method", id="bad-method"),
        pytest.param("gw.route=a..b/x", "host 'a..b' has an empty label", id="empty-label"),
        pytest.param("gw.route=-a.com/x", "label '-a' is not a valid DNS label", id="bad-label"),
        pytest.param("gw.route=a*.example.com/x", "'*' is only allowed as the whole leftmost label", id="partial-star"),
        pytest.param("gw.route=a.*.com/x", "'*' is only allowed as the whole leftmost label", id="inner-star"),
        pytest.param("gw.route=api.example.com:8080/x", "has a port ':8080'", id="host-port"),
        pytest.param("gw.route=[::1]:80/x", "has a port", id="ipv6-port"),
        pytest.param("gw.route=[zz]/x", "not a valid IPv6 literal", id="bad-ipv6"),
        pytest.param("gw.route=/a?b=1", "contains '?'", id="query-in-path"),
        pytest.param("gw.route=/a/*", "contains '*'", id="glob-in-path"),
        pytest.param("gw.route=/a/../b", "'..' segment", id="dot-dot"),
        pytest.param("gw.route=/a%zz", "'%' that is not a %XX escape", id="bad-escape"),
        pytest.param("gw.route=/a/%2e%2E/b", "'..' segment", id="encoded-dot-dot"),
        pytest.param("gw.route=/a/..;x/b", "'..' segment", id="dot-dot-with-parameter"),
        pytest.param("gw.route=/a%2Fb", "holds an encoded slash", id="encoded-slash"),
        pytest.param(
            "gw.rout=/x",
            "unknown key 'rout'; expected one of gw.route, gw.lb; did you mean 'gw.route=/x'?",
            id="key-typo",
        ),
        pytest.param("gw.weight=5", "unknown key 'weight'", id="unknown-key"),
        pytest.param("gw.lb=fastest", "unknown balancer 'fastest'", id="bad-lb"),
        pytest.param("gw.lb=least_con", "did you mean 'gw.lb=least_conn'?", id="lb-typo"),
    ],
)
def test_bad_tag_is_reported_with_reason(tag: str, reason: str) -> None:
    parsed = parse_service_routes("svc", [tag])
    assert parsed.routes == ()
    assert len(parsed.errors) == 1
    error = parsed.errors[0]
    assert (error.service, error.tag) == ("svc", tag)
    assert reason in error.reason
    assert tag in error.message


def test_bad_tag_disables_only_its_route() -> None:
    tags = ["gw.route=/ok", "gw.route=/bad strip=/x", "gw.route=a.example.com/ok2", "gw.lb=nope", "gw.lb=ip_hash"]
    parsed = parse_service_routes("svc", tags)
    assert [r.prefix for r in parsed.routes] == ["/ok", "/ok2"]  # sorted by tag
    assert [e.tag for e in parsed.errors] == ["gw.lb=nope", "gw.route=/bad strip=/x"]
    assert parsed.lb == "ip_hash"


@pytest.mark.parametrize(
    ("tags", "lb", "errors"),
    [
        pytest.param([], None, 0, id="default"),
        pytest.param(["gw.lb=least_conn"], "least_conn", 0, id="least-conn"),
        pytest.param(["gw.lb=ip_hash"], "ip_hash", 0, id="ip-hash"),
        pytest.param(["gw.lb=round_robin"], "round_robin", 0, id="round-robin"),
        pytest.param(["gw.lb=ip_hash", "gw.lb=least_conn"], None, 2, id="conflicting-falls-back"),
    ],
)
def test_lb(tags: list[str], lb: str | None, errors: int) -> None:
    parsed = parse_service_routes("svc", tags)
    assert parsed.lb == lb
    assert parsed.algorithm == (lb or "round_robin")
    assert len(parsed.errors) == errors
    assert all("conflicting balancers" in e.reason for e in parsed.errors)


@pytest.mark.parametrize(
    "tag",
    [
        pytest.param("gwroute=/x", id="no-dot"),
        pytest.param("version=2", id="unrelated"),
        pytest.param("urlprefix-/x", id="fabio-without-compat"),
        pytest.param("edge.route=/x", id="other-prefix"),
    ],
)
def test_foreign_tags_are_ignored(tag: str) -> None:
    assert parse_service_routes("svc", [tag]) == ServiceRoutes(service="svc")
    assert not has_route_tags([tag])


def test_tag_prefix_is_configurable() -> None:
    parsed = parse_service_routes("svc", ["edge.route=/x", "gw.route=/y", "edge.lb=ip_hash"], tag_prefix="edge")
    assert [r.prefix for r in parsed.routes] == ["/x"]
    assert parsed.lb == "ip_hash"
    assert has_route_tags(["edge.route=/x"], tag_prefix="edge")
    assert not has_route_tags(["gw.route=/x"], tag_prefix="edge")


@pytest.mark.parametrize("prefix", [pytest.param("", id="empty"), pytest.param("g w", id="space")])
def test_bad_tag_prefix_is_a_config_error(prefix: str) -> None:
    with pytest.raises(ConfigError, match="tag prefix"):
        parse_service_routes("svc", [], tag_prefix=prefix)


@pytest.mark.parametrize(
    ("tags", "compat", "expected"),
    [
        pytest.param(["gw.route=/x"], frozenset(), True, id="route"),
        pytest.param(["gw.lb=ip_hash"], frozenset(), True, id="lb-only"),
        pytest.param(["gw.typo=1"], frozenset(), True, id="typo-still-watched-so-it-is-reported"),
        pytest.param(["urlprefix-/x"], FABIO, True, id="fabio"),
        pytest.param(["urlprefix-/x"], frozenset(), False, id="fabio-off"),
        pytest.param([], frozenset(), False, id="none"),
    ],
)
def test_has_route_tags(tags: list[str], compat: frozenset[str], expected: bool) -> None:
    assert has_route_tags(tags, compat=compat) is expected


def test_same_route_spelt_twice_counts_once() -> None:
    parsed = parse_service_routes("svc", ["gw.route=/a", "gw.route=/a/", "urlprefix-/a"], compat=FABIO)
    assert [r.prefix for r in parsed.routes] == ["/a"]
    assert parsed.errors == ()


def test_overlap_within_a_service_is_an_error() -> None:
    parsed = parse_service_routes("svc", ["gw.route=/a methods=GET", "gw.route=/a methods=GET,POST strip=/a"])
    assert [r.tag for r in parsed.routes] == ["gw.route=/a methods=GET"]
    (error,) = parsed.errors
    assert error.tag == "gw.route=/a methods=GET,POST strip=/a"
    assert "overlaps tag 'gw.route=/a methods=GET'" in error.reason


def test_disjoint_methods_on_one_prefix_are_two_routes() -> None:
    parsed = parse_service_routes("svc", ["gw.route=/a methods=GET", "gw.route=/a methods=POST"])
    assert len(parsed.routes) == 2
    assert parsed.errors == ()


@pytest.mark.parametrize(
    ("route", "label"),
    [
        pytest.param("gw.route=api.example.com/users", "api.example.com/users", id="host"),
        pytest.param("gw.route=/users methods=GET", "*/users", id="any-host"),
        pytest.param("gw.route=*.example.com/", "*.example.com/", id="wildcard-root"),
    ],
)
def test_label(route: str, label: str) -> None:
    assert one_route(route).label == label


def test_backslash_in_a_prefix_is_an_encoded_slash() -> None:
    (error,) = parse_service_routes("svc", ["gw.route=/a\\b"]).errors
    assert "holds an encoded slash" in error.reason


# --- Fabio compatibility -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fabio", "native"),
    [
        pytest.param("urlprefix-/users", "gw.route=/users", id="path"),
        pytest.param("urlprefix-api.example.com/users", "gw.route=api.example.com/users", id="host"),
        pytest.param("urlprefix-*.example.com/", "gw.route=*.example.com/", id="wildcard"),
        pytest.param("urlprefix-/api/u strip=/api", "gw.route=/api/u strip=/api", id="strip"),
        pytest.param("urlprefix-/u proto=http", "gw.route=/u", id="proto-http-is-default"),
        pytest.param("urlprefix-/u register=public", "gw.route=/u", id="register-is-harmless"),
    ],
)
def test_fabio_tags_give_identical_routes(fabio: str, native: str) -> None:
    from_fabio = one_route(fabio, compat=FABIO)
    assert dataclasses.replace(from_fabio, tag=native) == one_route(native)


@pytest.mark.parametrize(
    ("tag", "reason"),
    [
        pytest.param("urlprefix-:3306 proto=tcp", "proto=tcp: TCP routes are not supported", id="tcp-port"),
        pytest.param("urlprefix-/x proto=tcp", "proto=tcp: TCP routes are not supported", id="proto-tcp"),
        pytest.param("urlprefix-/x proto=https", "set Meta gw-scheme=https", id="proto-https"),
        pytest.param("urlprefix-/x proto=grpc", "proto=grpc: gRPC routes are not supported", id="proto-grpc"),
        pytest.param("urlprefix-/x proto=ftp", "consulgw routes proto=http only", id="proto-unknown"),
        pytest.param("urlprefix-/x redirect=301,https://a/", "redirect routes are not supported", id="redirect"),
        pytest.param("urlprefix-/x allow=ip:10.0.0.0/8", "IP allow lists", id="allow"),
        pytest.param("urlprefix-/x deny=ip:10.0.0.0/8", "IP deny lists", id="deny"),
        pytest.param("urlprefix-/x auth=basic", "use the service's KV policy", id="auth"),
        pytest.param("urlprefix-/x weight=0.5", "route weights", id="weight"),
        pytest.param("urlprefix-/x prepend=/v1", "prepending", id="prepend"),
        pytest.param("urlprefix-/x host=other", "upstream Host header", id="host-rewrite"),
        pytest.param("urlprefix-/x tlsskipverify=true", "TLS options", id="tlsskipverify"),
        pytest.param("urlprefix-/x methods=GET", "unknown Fabio option 'methods='", id="native-option"),
        pytest.param("urlprefix-", "empty route", id="empty"),
    ],
)
def test_unsupported_fabio_options_are_errors(tag: str, reason: str) -> None:
    parsed = parse_service_routes("svc", [tag, "urlprefix-/fine"], compat=FABIO)
    assert [r.prefix for r in parsed.routes] == ["/fine"]
    (error,) = parsed.errors
    assert error.tag == tag
    assert reason in error.reason


_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
_host = st.one_of(
    st.just(""),
    st.lists(_label, min_size=1, max_size=4).map(".".join),
    st.lists(_label, min_size=1, max_size=3).map(lambda labels: "*." + ".".join(labels)),
)
_segments = st.lists(st.from_regex(r"[A-Za-z0-9._~-]{1,8}", fullmatch=True).filter(lambda s: s not in (".", "..")))


@given(host=_host, segments=_segments, strip_depth=st.integers(min_value=0, max_value=4), slash=st.booleans())
def test_fabio_and_native_tags_agree(host: str, segments: list[str], strip_depth: int, slash: bool) -> None:
    path = "/" + "/".join(segments) + ("/" if slash and segments else "")
    depth = min(strip_depth, len(segments))
    option = f" strip=/{'/'.join(segments[:depth])}" if depth else ""
    native = parse_service_routes("svc", [f"gw.route={host}{path}{option}"])
    fabio = parse_service_routes("svc", [f"urlprefix-{host}{path}{option}"], compat=FABIO)
    assert native.errors == fabio.errors == ()
    assert [dataclasses.replace(r, tag="") for r in native.routes] == [
        dataclasses.replace(r, tag="") for r in fabio.routes
    ]


@given(tags=st.lists(st.one_of(st.text(max_size=30).map(lambda t: "gw." + t), st.text(max_size=30)), max_size=8))
def test_parser_never_raises_and_accounts_for_every_gateway_tag(tags: list[str]) -> None:
    parsed = parse_service_routes("svc", tags)
    for route in parsed.routes:
        assert route.prefix.startswith("/")
        assert route.prefix == "/" or not route.prefix.endswith("/")
        assert route.strip is None or route.prefix == route.strip or route.prefix.startswith(route.strip + "/")
    accounted = {r.tag for r in parsed.routes} | {e.tag for e in parsed.errors}
    kept = {dataclasses.replace(r, tag="") for r in parsed.routes}
    for tag in tags:
        if not tag.startswith("gw.") or tag in accounted:
            continue
        alone = parse_service_routes("svc", [tag])
        assert alone.errors == ()
        if alone.routes:  # the same route spelt twice: counted once
            assert {dataclasses.replace(r, tag="") for r in alone.routes} <= kept
        else:  # a valid gw.lb
            assert alone.lb is not None


@given(tags=st.permutations(["gw.route=/a", "gw.route=/a/", "gw.route=/b strip=/b", "gw.lb=ip_hash", "gw.x=1"]))
def test_result_does_not_depend_on_tag_order(tags: list[str]) -> None:
    assert parse_service_routes("svc", tags) == parse_service_routes("svc", sorted(tags))


# --- Fabio tags as Fabio reads them (issue 13 finding 7) -------------------------------------------------------
# Fabio's own table: TestParseTag and TestRouteCmd in registry/consul/routecmd_test.go (prefix "p-" there). Where
# consulgw differs on purpose, the row says why.


@pytest.mark.parametrize(
    ("tag", "host", "prefix"),
    [
        pytest.param("urlprefix-/", None, "/", id="root"),
        pytest.param(" urlprefix-/", None, "/", id="leading-space"),
        pytest.param("urlprefix-/ ", None, "/", id="trailing-space"),
        pytest.param("urlprefix- / ", None, "/", id="space-after-prefix"),
        pytest.param("urlprefix-/foo", None, "/foo", id="path"),
        pytest.param("urlprefix- /foo", None, "/foo", id="space-then-path"),
        pytest.param("  urlprefix-test/foo", "test", "/foo", id="two-leading-spaces"),
        pytest.param("\turlprefix-/foo\n", None, "/foo", id="tab-and-newline"),
        pytest.param("urlprefix-bar/foo", "bar", "/foo", id="host"),
        pytest.param("urlprefix-bar/foo/foo", "bar", "/foo/foo", id="host-deep"),
        pytest.param("urlprefix-www.bar.com/foo/foo", "www.bar.com", "/foo/foo", id="fqdn"),
        pytest.param("urlprefix-WWW.BAR.COM/foo/foo", "www.bar.com", "/foo/foo", id="host-lowercased"),
        pytest.param("urlprefix-$DC/$DC", "dc1", "/dc1", id="dollar-dc"),
        pytest.param("urlprefix-${DC}/${DC}", "dc1", "/dc1", id="braced-dc"),
        pytest.param("urlprefix-api.$DC.example.com/v1", "api.dc1.example.com", "/v1", id="dc-inside-host"),
        pytest.param("urlprefix-/a$/b", None, "/a$/b", id="lone-dollar-is-literal"),
    ],
)
def test_fabio_tags_route_as_fabio_routes_them(tag: str, host: str | None, prefix: str) -> None:
    route = one_route(tag, compat=FABIO, datacenter="dc1")
    assert (route.host, route.prefix, route.tag) == (host, prefix, tag)


def test_gateway_tags_are_trimmed_too() -> None:
    assert one_route("  gw.route=/users ").prefix == "/users"


@pytest.mark.parametrize(
    "tags",
    [
        pytest.param([" urlprefix-/foo"], id="leading-space"),
        pytest.param(["urlprefix-/foo "], id="trailing-space"),
        pytest.param(["\tgw.route=/x"], id="native"),
    ],
)
def test_trimmed_tags_make_a_service_routed(tags: list[str]) -> None:
    """The watch decides from has_route_tags: a service whose only tag had a leading space was never watched."""
    assert has_route_tags(tags, compat=FABIO)


@pytest.mark.parametrize(
    ("tag", "reason"),
    [
        pytest.param("urlprefix-$x/$y", "variable expansion: '$x' is not supported", id="fabio-empties-unknown"),
        pytest.param("urlprefix-${x}/${y}", "variable expansion: '${x}' is not supported", id="braced-unknown"),
        pytest.param("urlprefix-/${DC", "variable expansion: '${DC' is not supported", id="unclosed-brace"),
        pytest.param("urlprefix-/${}", "variable expansion: '${}' is not supported", id="empty-braces"),
        pytest.param("urlprefix-/$1", "variable expansion: '$1' is not supported", id="positional"),
        pytest.param("urlprefix-/$dc", "variable expansion: '$dc' is not supported", id="case-sensitive"),
        pytest.param("urlprefix-bar/foo a b c", "option 'a' is not key=value", id="fabio-ignores-bare-words"),
        pytest.param("urlprefix-1.1.1.1:999", "missing path in '1.1.1.1:999'", id="host-port-without-path"),
        pytest.param("urlprefix-www.bar.com:80/foo redirect=302,https://www.bar.com", "redirect routes", id="redirect"),
        pytest.param("urlprefix-:1234 proto=grpc", "proto=grpc: gRPC routes are not supported", id="grpc-port"),
        pytest.param("urlprefix-:1234 proto=grpcs", "proto=grpcs: gRPC routes are not supported", id="grpcs-port"),
        pytest.param("urlprefix-/svc proto=grpc", "gRPC needs HTTP/2", id="grpc-path"),
        pytest.param("urlprefix-a.com:443 proto=tcp+sni", "proto=tcp+sni: TCP routes", id="tcp-sni"),
        pytest.param("urlprefix-:1234 proto=tcp-dynamic", "proto=tcp-dynamic: TCP routes", id="tcp-dynamic"),
        pytest.param("urlprefix-:1234", "':1234' routes a listener port", id="bare-port"),
        pytest.param("urlprefix-/x pxyproto=true", "PROXY protocol", id="pxyproto"),
        pytest.param("urlprefix-/$DC/x strip=/$DC", "Fabio expands $DC in the route, not in its options", id="dc-opt"),
    ],
)
def test_fabio_refusals_name_the_real_problem(tag: str, reason: str) -> None:
    (error,) = parse_service_routes("svc", [tag], compat=FABIO, datacenter="dc1").errors
    assert reason in error.reason
    if "grpc" in tag:
        assert "TCP" not in error.reason  # it was called a TCP route


def test_dc_without_a_known_datacenter_is_an_error_not_an_empty_string() -> None:
    (error,) = parse_service_routes("svc", ["urlprefix-/$DC/x"], compat=FABIO).errors
    assert "$DC needs the datacenter" in error.reason


@pytest.mark.parametrize(
    ("tag", "fix"),
    [
        pytest.param("gw.rout=/x", "gw.route=/x", id="key"),
        pytest.param("gw.lb=least_con", "gw.lb=least_conn", id="balancer"),
        pytest.param("gw.route=/u strp=/u", "gw.route=/u strip=/u", id="option"),
        pytest.param("gw.route=/u methds=GET", "gw.route=/u methods=GET", id="option-methods"),
        pytest.param("gw.route=/u strip=/", "gw.route=/u", id="strip-root"),
        pytest.param("gw.route=/u strip=/u strip=/u", "gw.route=/u strip=/u", id="same-option-twice"),
        pytest.param("gw.route=api.example.com:8080/x", "gw.route=api.example.com/x", id="host-port"),
        pytest.param("gw.route=[::1]:80/x", "gw.route=[::1]/x", id="ipv6-port"),
        pytest.param("gw.route=api.example.com", "gw.route=api.example.com/", id="host-without-path"),
        pytest.param("gw.route=api.example.com:8080", "gw.route=api.example.com/", id="host-port-no-path"),
        pytest.param("gw.route=users", "gw.route=/users", id="path-without-slash"),
        pytest.param("urlprefix-/x proto=https", "urlprefix-/x", id="fabio-https"),
        pytest.param("urlprefix-/x proto=https strip=/x", "urlprefix-/x strip=/x", id="fabio-https-keeps-strip"),
        pytest.param("urlprefix-/x stirp=/x", "urlprefix-/x strip=/x", id="fabio-option"),
        pytest.param("urlprefix-$DC.a.com:80/x", "urlprefix-$DC.a.com/x", id="fabio-fix-keeps-the-variable"),
        pytest.param("urlprefix-1.1.1.1:999", "urlprefix-1.1.1.1/", id="fabio-host-port"),
    ],
)
def test_suggested_fix(tag: str, fix: str) -> None:
    (error,) = parse_service_routes("svc", [tag], compat=FABIO, datacenter="dc1").errors
    assert error.fix == fix
    assert error.reason.endswith(f"; did you mean {fix!r}?")


@pytest.mark.parametrize(
    "tag",
    [
        pytest.param("gw.route=a..b", id="no-valid-correction"),  # 'a..b/' has an empty label too
        pytest.param("gw.rout=nothing", id="renamed-key-still-invalid"),
        pytest.param("gw.route=/x strip=/y strp=/z", id="two-problems"),
        pytest.param("urlprefix-/x auth=ops", id="dropping-auth-would-open-the-route"),
        pytest.param("urlprefix-/x allow=ip:10.0.0.0/8", id="dropping-allow-would-open-the-route"),
    ],
)
def test_no_fix_unless_it_is_valid_and_safe(tag: str) -> None:
    (error,) = parse_service_routes("svc", [tag], compat=FABIO, datacenter="dc1").errors
    assert error.fix is None
    assert "did you mean" not in error.reason


_WORDS = ("/x", "/", "x", "a.com", "a.com:80", "[::1]:80", ":99", "$DC", "${DC}", "$X", "strip=/", "strip=/x")
_words = st.sampled_from(
    [*_WORDS, "stip=/x", "methods=GET", "methds=GET", "proto=https", "proto=grpc", "register=a", "auth=x", "=", "a"]
)
_heads = st.sampled_from(["gw.route=", "gw.rout=", "gw.lb=", "gw.l=", "urlprefix-", " urlprefix-", "gw.route "])


@given(head=_heads, words=st.lists(_words, min_size=0, max_size=4), joiner=st.sampled_from(["", " "]))
def test_every_suggested_fix_parses(head: str, words: list[str], joiner: str) -> None:
    tag = head + (words[0] + joiner + " ".join(words[1:]) if words else "")
    parsed = parse_service_routes("svc", [tag], compat=FABIO, datacenter="dc1")
    for error in parsed.errors:
        if error.fix is None:
            continue
        fixed = parse_service_routes("svc", [error.fix], compat=FABIO, datacenter="dc1")
        assert fixed.errors == (), (tag, error.fix)
        assert fixed.routes or fixed.lb is not None
