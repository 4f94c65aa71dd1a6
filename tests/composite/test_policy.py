"""``consulgw/composites/<name>``: the issue's document, the defaults it inherits, every refusal names key, JSON path
and value, a refused edit keeps the previous composite, and composites join the route table."""

from __future__ import annotations

import json
from typing import Any

import pytest

from consulgw.composite.routes import composite_routes
from consulgw.errors import PolicyError
from consulgw.policy.book import build_policy_book
from consulgw.policy.model import Placeholder
from consulgw.policy.parse import parse_composite
from consulgw.routing.rules import parse_service_routes
from consulgw.routing.table import MatchKind, RouteTable
from tests.composite.conftest import BRIEF, JWT_AUTH

KEY = "consulgw/composites/user-dashboard"


def test_the_issue_document() -> None:
    composite = parse_composite(json.dumps(BRIEF), key=KEY, name="user-dashboard")
    assert composite.label == "composite:user-dashboard"
    assert (composite.route.host, composite.route.prefix, composite.route.methods) == (
        None,
        "/api/user-dashboard",
        frozenset({"GET", "HEAD"}),
    )
    assert composite.timeout == 0.8
    assert [c.name for c in composite.calls] == ["user", "orders", "notifications"]
    user, orders, notifications = composite.calls
    assert user.path.parts == ("/users/", Placeholder(kind="sub"))
    assert (user.required, user.default, orders.timeout, orders.default) == (True, None, 0.5, "[]")
    assert notifications.path.parts[-1] == Placeholder(kind="query", name="user")
    assert composite.forward_headers == ("Accept-Language",)
    assert composite.policy.auth is not None


def test_policy_sections_merge_onto_the_defaults_and_other_sections_do_not_apply() -> None:
    defaults = {
        "auth": JWT_AUTH,
        "rate_limit": {"requests": 5, "per": "1s"},
        "lb": "ip_hash",
        "retries": {"attempts": 3},
    }
    doc = {"route": "/d", "calls": {"a": {"service": "a", "path": "/{sub}"}}, "rate_limit": None}
    composite = parse_composite(json.dumps(doc), key=KEY, name="d", defaults=defaults)
    assert composite.policy.auth is not None
    assert composite.policy.rate_limit is None
    assert composite.policy.lb is None
    assert composite.policy.retries.attempts == 1


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param({"route": "api.example.com"}, "route: 'api.example.com' is not a route (missing path", id="route"),
        pytest.param(
            {"route": "/a methods=GET"}, "route: '/a methods=GET' is [host]/path without spaces", id="route-options"
        ),
        pytest.param({"methods": ["POST"]}, "methods[0]: 'POST' is not one of: GET, HEAD", id="methods"),
        pytest.param({"timeout": "forever"}, "timeout: 'forever' is not a duration", id="timeout"),
        pytest.param({"calls": {}}, "calls: must not be empty", id="no-calls"),
        pytest.param(
            {"calls": {"a b": {"service": "x", "path": "/"}}}, "calls.a b: is not a call name", id="call-name"
        ),
        pytest.param(
            {"calls": {"a": {"service": "x/y", "path": "/"}}},
            "calls.a.service: 'x/y' is not a Consul service name",
            id="service",
        ),
        pytest.param(
            {"calls": {"a": {"service": "x", "path": "x"}}}, "calls.a.path: 'x' must start with '/'", id="path"
        ),
        pytest.param(
            {"calls": {"a": {"service": "x", "path": "/a/{nope}"}}},
            "calls.a.path: '{nope}' is not a placeholder",
            id="placeholder",
        ),
        pytest.param(
            {"calls": {"a": {"service": "x", "path": "/a b"}}},
            "calls.a.path: '/a b' has characters a request-target cannot carry",
            id="space",
        ),
        pytest.param(
            {"calls": {"a": {"service": "x", "path": "/a/../b"}}},
            "calls.a.path: '/a/../b' contains a '.' or '..' segment",
            id="dotdot",
        ),
        pytest.param(
            {"calls": {"a": {"service": "x", "path": "/{header.cookie}"}}},
            "calls.a.path: '{header.cookie}' reads a credential",
            id="credential",
        ),
        pytest.param(
            {"calls": {"a": {"service": "x", "path": "/", "required": True, "default": {}}}},
            "calls.a.default: is never used",
            id="required-default",
        ),
        pytest.param(
            {"merge": "shallow", "calls": {"a": {"service": "x", "path": "/", "default": []}}},
            "calls.a.default: a list of 0 items must be an object with merge 'shallow'",
            id="shallow-default",
        ),
        pytest.param({"merge": "deep"}, "merge: 'deep' is not one of: nest, shallow", id="merge"),
        pytest.param(
            {"forward_headers": ["X-User-ID"]},
            "forward_headers[0]: 'X-User-ID' is set by the gateway itself",
            id="forward-identity",
        ),
        pytest.param({"partial_status": 207}, "partial_status: 207 is not one of: 200, 206", id="partial"),
        pytest.param(
            {"auth": None},
            "calls: a path uses {sub} or {consumer}, but the composite has no auth section",
            id="sub-without-auth",
        ),
        pytest.param({"transform": {}}, "transform: unknown key", id="no-transform"),
        pytest.param({"cache": {"ttl": "x"}}, "cache.ttl: 'x' is not a duration", id="cache-section"),
    ],
)
def test_refused_with_key_path_and_value(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_composite(json.dumps({**BRIEF, **changes}), key=KEY, name="user-dashboard")
    assert str(caught.value).startswith(f"{KEY}: {message}")


@pytest.mark.parametrize("name", ["Upper", "-x", "a/b", "", "x" * 70])
def test_bad_composite_names(name: str) -> None:
    with pytest.raises(PolicyError, match="is not valid"):
        parse_composite(json.dumps(BRIEF), key=KEY, name=name)


def test_the_book_keeps_the_previous_composite_and_reports_mistakes() -> None:
    good = build_policy_book({"composites/user-dashboard": json.dumps(BRIEF).encode()}, previous=None)
    assert list(good.composites) == ["user-dashboard"]
    bad = build_policy_book(
        {
            "composites/user-dashboard": json.dumps({**BRIEF, "merge": "deep"}).encode(),
            "composite/typo": b"{}",
            "composites/a/b": b"{}",
            "cache-purge/shop": b"anything",
        },
        previous=good,
    )
    assert bad.composites["user-dashboard"] == good.composites["user-dashboard"]
    assert bad.errors["composites/user-dashboard"].startswith(f"{KEY}: merge: 'deep' is not one of")
    assert "did you mean 'composites/typo'" in bad.errors["composite/typo"]
    assert "is not a composite name" in bad.errors["composites/a/b"]
    assert "cache-purge/shop" not in bad.errors
    gone = build_policy_book({}, previous=bad)
    assert dict(gone.composites) == {}


def test_composite_routes_use_the_table_s_precedence_and_conflict_rules() -> None:
    composites = {
        "dash": parse_composite(json.dumps(BRIEF), key=KEY, name="dash"),
        "clash": parse_composite(
            json.dumps({"route": "/users", "calls": {"a": {"service": "users", "path": "/"}}}), key=KEY, name="clash"
        ),
    }
    services = [parse_service_routes("users", ["gw.route=/users"]), parse_service_routes("api", ["gw.route=/api"])]
    table = RouteTable.build([*services, *composite_routes(composites)])
    match = table.lookup("any.host", "/api/user-dashboard?x=1", "GET")
    assert match.route is not None
    assert match.route.service == "composite:dash"  # the longer prefix wins over the api service's /api
    assert table.lookup("h", "/api/other", "GET").route.service == "api"  # type: ignore[union-attr]
    post = table.lookup("h", "/api/user-dashboard", "POST")  # the composite is GET/HEAD: a POST goes on to /api
    assert (post.kind, post.route.service if post.route else None) == (MatchKind.FOUND, "api")
    conflict = next(c for c in table.conflicts if c.prefix == "/users")
    assert (conflict.winner, conflict.losers) == ("composite:clash", ("users",))
