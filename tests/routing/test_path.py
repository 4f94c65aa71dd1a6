"""One canonical request path (consulgw.routing.path), and the route table matching and forwarding it.

The bypasses of issue 13 finding 1 are here as table rows: each path either becomes the path of the route it
really reaches, or is refused with 400 ``invalid_path``.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consulgw.errors import InvalidPath
from consulgw.routing import RouteTable, parse_service_routes
from consulgw.routing.path import (
    CanonicalPath,
    EncodedSlashes,
    canonical_path,
    is_canonical,
    is_dot_segment,
    split_target,
    upstream_view,
)
from consulgw.routing.table import MatchKind


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        pytest.param("/", "/", id="root"),
        pytest.param("/users/7", "/users/7", id="plain"),
        pytest.param("/users/7/", "/users/7/", id="trailing-slash-kept"),
        pytest.param("/app/x/../admin/users", "/app/admin/users", id="dot-dot"),
        pytest.param("/app/./admin/users", "/app/admin/users", id="dot"),
        pytest.param("/app//admin/users", "/app/admin/users", id="double-slash"),
        pytest.param("//app///admin", "/app/admin", id="leading-and-many-slashes"),
        pytest.param("/app/%2e%2e/app/admin/users", "/app/admin/users", id="encoded-dot-dot"),
        pytest.param("/app/%2E./admin", "/admin", id="half-encoded-dot-dot"),
        pytest.param("/app/%61dmin/users", "/app/admin/users", id="encoded-unreserved"),
        pytest.param("/%7Euser/a-b_c.d", "/~user/a-b_c.d", id="tilde-decoded"),
        pytest.param("/a/b/..", "/a/", id="trailing-dot-dot-keeps-slash"),
        pytest.param("/a/b/.", "/a/b/", id="trailing-dot-keeps-slash"),
        pytest.param("/.", "/", id="root-dot"),
        pytest.param("/a/..", "/", id="back-to-root"),
        pytest.param("/a//..//b", "/b", id="slashes-merged-before-dots"),
        pytest.param("/caf%c3%a9", "/caf%C3%A9", id="escape-upper-case"),
        pytest.param("/a%2fb", "/a%2Fb", id="encoded-slash-kept"),
        pytest.param("/a%5cb", "/a%5Cb", id="encoded-backslash-kept"),
        pytest.param("/a\\b", "/a%5Cb", id="raw-backslash-encoded"),
        pytest.param("/a%20b/%25", "/a%20b/%25", id="reserved-escapes-kept"),
        pytest.param("/a b", "/a%20b", id="space-encoded"),
        pytest.param('/<x>"{|}^`', "/%3Cx%3E%22%7B%7C%7D%5E%60", id="unsafe-characters-encoded"),
        pytest.param("/café", "/caf%C3%A9", id="non-ascii-encoded-as-utf8"),
        pytest.param("/a;v=1/b:c@d!$&'()*+,=", "/a;v=1/b:c@d!$&'()*+,=", id="sub-delims-raw"),
        pytest.param("/.well-known/x", "/.well-known/x", id="dot-prefixed-name"),
        pytest.param("/...", "/...", id="three-dots-is-a-name"),
        pytest.param("/a%252e%252e/b", "/a%252e%252e/b", id="double-encoding-is-data"),
    ],
)
def test_canonical_path(raw: str, canonical: str) -> None:
    assert canonical_path(raw).path == canonical


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        pytest.param("/..", "climbs above the root", id="climb"),
        pytest.param("/a/../..", "climbs above the root", id="climb-after-one"),
        pytest.param("/%2e%2e/etc/passwd", "climbs above the root", id="encoded-climb"),
        pytest.param("/a%zz", "not a %XX escape", id="bad-escape"),
        pytest.param("/a%2", "not a %XX escape", id="short-escape"),
        pytest.param("/a%", "not a %XX escape", id="lone-percent"),
        pytest.param("/app/x/..%2fadmin", "once its escapes are decoded", id="dot-dot-before-encoded-slash"),
        pytest.param("/app/x%2f..%2fadmin", "once its escapes are decoded", id="dot-dot-between-encoded-slashes"),
        pytest.param("/app/x/..%5cadmin", "once its escapes are decoded", id="dot-dot-before-encoded-backslash"),
        pytest.param("/app/x\\..\\admin", "once its escapes are decoded", id="raw-backslash-dot-dot"),
        pytest.param("/app/%2Fadmin", "once its escapes are decoded", id="empty-segment-once-decoded"),
        pytest.param("/app/..;/admin", "once its escapes are decoded", id="tomcat-dot-dot-semicolon"),
        pytest.param("/app/.;x/admin", "once its escapes are decoded", id="dot-with-parameter"),
        pytest.param("/app/..%3b/admin", "once its escapes are decoded", id="encoded-semicolon"),
        pytest.param("users", "does not start with '/'", id="not-origin-form"),
    ],
)
def test_refused(raw: str, reason: str) -> None:
    with pytest.raises(InvalidPath, match=reason) as caught:
        canonical_path(raw)
    assert (caught.value.status, caught.value.code) == (400, "invalid_path")


def test_encoded_slashes_reject() -> None:
    for raw in ("/a%2Fb", "/a%2fb", "/a%5Cb", "/a\\b"):
        with pytest.raises(InvalidPath, match="encoded slash"):
            canonical_path(raw, encoded_slashes="reject")
        assert canonical_path(raw, encoded_slashes="keep").path.startswith("/a%")
    assert canonical_path("/a%20b", encoded_slashes="reject").path == "/a%20b"  # other escapes are fine


def test_decoded_form_is_given_only_with_an_encoded_slash() -> None:
    assert canonical_path("/a/b%2Fc") == CanonicalPath("/a/b%2Fc", "/a/b/c")
    assert canonical_path("/a/b\\c") == CanonicalPath("/a/b%5Cc", "/a/b/c")
    assert canonical_path("/a/b%20c") == CanonicalPath("/a/b%20c", None)


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        pytest.param("/a", "/a", "", id="no-query"),
        pytest.param("/a?", "/a", "?", id="empty-query"),
        pytest.param("/a?x=%2e%2e/../&y", "/a", "?x=%2e%2e/../&y", id="query-as-sent"),
        pytest.param("/a?x#frag", "/a", "?x", id="fragment-dropped"),
        pytest.param("/a#frag?x", "/a", "", id="fragment-before-question-mark"),
    ],
)
def test_split_target(target: str, path: str, query: str) -> None:
    assert split_target(target) == (path, query)


# -- the route table: the bypass list ------------------------------------------------------------------

APP = RouteTable.build(
    [
        parse_service_routes("app", ["gw.route=/app"]),
        parse_service_routes("app-admin", ["gw.route=/app/admin"]),
        parse_service_routes("pub", ["gw.route=/pub/public strip=/pub"]),
        parse_service_routes("internal", ["gw.route=/internal"]),
    ]
)


@pytest.mark.parametrize(
    ("target", "service", "upstream_path"),
    [
        pytest.param("/app/x/../admin/users", "app-admin", "/app/admin/users", id="dot-dot"),
        pytest.param("/app/%2e%2e/app/admin/users", "app-admin", "/app/admin/users", id="encoded-dot-dot"),
        pytest.param("/app//admin/users", "app-admin", "/app/admin/users", id="double-slash"),
        pytest.param("/app/./admin/users", "app-admin", "/app/admin/users", id="dot"),
        pytest.param("/app/%61dmin/users", "app-admin", "/app/admin/users", id="encoded-letter"),
        pytest.param("/app/admin/../x?q=/../admin", "app", "/app/x?q=/../admin", id="query-untouched"),
        pytest.param("/pub/public/a/../b", "pub", "/public/b", id="strip-after-normalising"),
        pytest.param("/pub/public/../../internal/x", "internal", "/internal/x", id="asking-for-another-route"),
        pytest.param("/app/x%2Fy", "app", "/app/x%2Fy", id="encoded-slash-same-route"),
    ],
)
def test_bypass_paths_reach_the_route_they_normalise_to(target: str, service: str, upstream_path: str) -> None:
    match = APP.lookup(None, target, "GET")
    assert match.route is not None
    assert (match.route.service, match.upstream_path) == (service, upstream_path)


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("/app/x/..%2fadmin/users", id="dot-dot-encoded-slash"),
        pytest.param("/app/%2Fadmin/users", id="empty-segment-encoded-slash"),
        pytest.param("/pub/public/..%2F..%2Finternal/x", id="strip-escape-encoded"),
        pytest.param("/app/..;/app/admin/users", id="dot-dot-semicolon"),
        pytest.param("/../app/admin", id="climb"),
    ],
)
def test_ambiguous_bypass_paths_are_refused(target: str) -> None:
    with pytest.raises(InvalidPath):
        APP.lookup(None, target, "GET")


def test_strip_prefix_cannot_be_escaped() -> None:
    """``/pub/public/../internal/x`` reached ``/internal/x`` upstream through the ``/pub/public`` route (strip
    ``/pub``): it is ``/pub/internal/x``, which no route serves."""
    assert APP.lookup(None, "/pub/public/../internal/x", "GET").kind is MatchKind.NO_ROUTE


def test_encoded_slash_that_selects_another_route_once_decoded_is_refused() -> None:
    """``/app%2Fadmin/users`` is one segment for the gateway (the catch-all route ``/``) but ``/app/admin/users``
    for an upstream that decodes ``%2F``: the admin route's path, reached without its policy."""
    table = RouteTable.build(
        [parse_service_routes("site", ["gw.route=/"]), parse_service_routes("app-admin", ["gw.route=/app/admin"])]
    )
    with pytest.raises(InvalidPath, match="selects another route"):
        table.lookup(None, "/app%2Fadmin/users", "GET")
    match = table.lookup(None, "/docs/a%2Fb", "GET")  # decoded, still the catch-all: forwarded as it is
    assert (match.route.service if match.route else None, match.upstream_path) == ("site", "/docs/a%2Fb")


def test_encoded_slash_to_no_route_is_not_refused() -> None:
    """Refusing is for paths that could reach a route the gateway did not pick; a miss both ways is a plain 404."""
    table = RouteTable.build([parse_service_routes("a", ["gw.route=/a/b"])])
    assert table.lookup(None, "/a%2Fc", "GET").kind is MatchKind.NO_ROUTE


# -- properties ------------------------------------------------------------------------------------------------

_pieces = st.sampled_from(
    ["/", "//", ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c", "\\", "%61", "%25", ";", "a", "b", "~", "%", "%zz"]
)
_paths = st.lists(st.one_of(_pieces, st.text(max_size=4)), max_size=12).map(lambda parts: "/" + "".join(parts))
_modes = st.sampled_from(["keep", "reject"])


def _normalised(path: str) -> CanonicalPath | None:
    try:
        return canonical_path(path)
    except InvalidPath:
        return None


@given(raw=_paths, mode=_modes)
def test_idempotent(raw: str, mode: EncodedSlashes) -> None:
    try:
        once = canonical_path(raw, encoded_slashes=mode)
    except InvalidPath:
        return
    assert canonical_path(once.path, encoded_slashes=mode) == once


@given(raw=_paths, mode=_modes)
def test_output_has_no_dot_segment_and_no_empty_segment(raw: str, mode: EncodedSlashes) -> None:
    try:
        out = canonical_path(raw, encoded_slashes=mode).path
    except InvalidPath:
        return
    assert out.startswith("/")
    assert "//" not in out
    assert not any(is_dot_segment(seg) for seg in out.split("/"))
    assert out.isascii()
    assert out.isprintable()
    if mode == "reject":
        assert "%2F" not in out
        assert "%5C" not in out


@given(raw=_paths)
def test_an_upstream_decoding_the_output_finds_the_same_segments(raw: str) -> None:
    """Decode every escape once, read backslash as slash: no dot-segment, no empty segment appears, so an
    upstream that normalises after decoding (nginx, gunicorn's PATH_INFO, Tomcat) resolves nothing further."""
    canonical = _normalised(raw)
    if canonical is None:
        return
    view = upstream_view(canonical.path)
    segments = view.split("/")[1:]
    assert not any(is_dot_segment(seg) for seg in segments)
    assert "" not in segments[:-1]
    if canonical.decoded is not None:
        assert upstream_view(canonical.decoded) == view


@given(raw=_paths)
def test_equivalent_spellings_have_one_canonical_form(raw: str) -> None:
    """Encoding an unreserved character or doubling a slash never changes the canonical path."""
    canonical = _normalised(raw)
    if canonical is None or canonical.path == "/":
        return
    respelt = canonical.path.replace("a", "%61").replace("/", "//", 1)
    assert canonical_path(respelt) == canonical


@given(raw=_paths)
def test_the_fast_test_never_lies(raw: str) -> None:
    if is_canonical(raw):
        assert canonical_path(raw, encoded_slashes="reject") == CanonicalPath(raw)
