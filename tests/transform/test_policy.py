"""The ``transform`` section: what parses into what, every refusal names key, JSON path and value, a refused edit
keeps the previous policy."""

from __future__ import annotations

import json
from typing import Any

import pytest

from consulgw.errors import PolicyError
from consulgw.policy.book import build_policy_book
from consulgw.policy.jsonpath import parse_path, show_path
from consulgw.policy.model import FieldOps, JsonValue, Placeholder
from consulgw.policy.parse import parse_policy

KEY = "consulgw/services/api"
ISSUE = {
    "request": {
        "headers": {"add": {"X-Via": "consulgw"}, "remove": ["X-Debug"], "rename": {"X-Old": "X-New"}},
        "query": {"add": {}, "remove": [], "rename": {}},
        "path_prefix": {"from": "/v1", "to": "/v2"},
        "json": {"remove": [], "rename": {}, "set": {}},
    },
    "response": {"json": {"remove": ["internal", "items[*].secret"], "rename": {}, "set": {}, "allow": None}},
    "max_body_bytes": 1048576,
    "on_error": "pass",
}


def test_the_issue_document() -> None:
    transform = parse_policy({"transform": ISSUE}, key=KEY).transform
    assert transform is not None
    assert transform.request.headers == FieldOps(
        remove=("X-Debug",), rename=(("X-Old", "X-New"),), add=(("X-Via", "consulgw"),)
    )
    assert transform.request.path_prefix == ("/v1", "/v2")
    assert transform.response.json.remove == (("internal",), ("items", None, "secret"))
    assert transform.response.json.allow is None


def test_values_are_constants_or_exactly_one_placeholder() -> None:
    doc = {"response": {"json": {"set": {"a": "{consumer}", "b": "x {consumer}", "c": {"n": [1]}, "d": "{query.q}"}}}}
    transform = parse_policy({"auth": {"type": "api_key"}, "transform": doc}, key=KEY).transform
    assert transform is not None
    assert {show_path(p): v for p, v in transform.response.json.set} == {
        "a": JsonValue(placeholder=Placeholder(kind="consumer")),
        "b": JsonValue(json='"x {consumer}"'),
        "c": JsonValue(json='{"n":[1]}'),
        "d": JsonValue(placeholder=Placeholder(kind="query", name="q")),
    }


@pytest.mark.parametrize(
    ("transform", "message"),
    [
        pytest.param(
            {"request": {"path_prefix": {"from": "v1", "to": "/v2"}}},
            "transform.request.path_prefix.from: 'v1' must be a path",
            id="prefix",
        ),
        pytest.param(
            {"request": {"path_prefix": {"from": "/a/../b", "to": "/v2"}}},
            "transform.request.path_prefix.from: '/a/../b' contains a '.' or '..' segment",
            id="dotdot",
        ),
        pytest.param(
            {"request": {"headers": {"set": {"Content-Length": "1"}}}},
            "transform.request.headers.set.Content-Length: 'Content-Length' cannot be changed",
            id="framing",
        ),
        pytest.param(
            {"request": {"headers": {"set": {"X-User-ID": "x"}}}},
            "transform.request.headers.set.X-User-ID: 'X-User-ID' is set by the gateway",
            id="identity",
        ),
        pytest.param(
            {"request": {"headers": {"remove": ["Accept-Encoding"]}}},
            "transform.request.headers.remove[0]: 'Accept-Encoding' is set by the gateway",
            id="accept-encoding",
        ),
        pytest.param(
            {"request": {"headers": {"add": {"X-A": "a\nb"}}}},
            "transform.request.headers.add.X-A: 'a\\nb' contains control characters",
            id="newline",
        ),
        pytest.param(
            {"request": {"query": {"remove": ["a=b"]}}},
            "transform.request.query.remove[0]: 'a=b' is not a query parameter name",
            id="query-name",
        ),
        pytest.param(
            {"request": {"json": {"remove": ["a..b"]}}},
            "transform.request.json.remove[0]: 'a..b' is not a JSON path (has an empty key at position 2)",
            id="empty-key",
        ),
        pytest.param(
            {"request": {"json": {"remove": ["a[0]"]}}},
            "transform.request.json.remove[0]: 'a[0]' is not a JSON path",
            id="index",
        ),
        pytest.param(
            {"response": {"json": {"rename": {"items[*]": "x"}}}},
            "transform.response.json.rename.items[*]: 'items[*]' must end with a key",
            id="rename-wildcard",
        ),
        pytest.param(
            {"request": {"json": {"allow": ["a"]}}},
            "transform.request.json.allow: unknown key (allowed: remove, rename, set)",
            id="request-allow",
        ),
        pytest.param(
            {"request": {"json": {"set": {"a": "{subb}"}}}},
            "transform.request.json.set.a: '{subb}' is not a placeholder (the closed set is",
            id="typo-placeholder",
        ),
        pytest.param(
            {"request": {"json": {"set": {"a": "{sub}"}}}},
            "transform: uses {sub} or {consumer}, but the policy has no auth section",
            id="no-auth",
        ),
        pytest.param(
            {"response": {"json": {"set": {"a": "{header.authorization}"}}}},
            "transform.response.json.set.a: '{header.authorization}' reads a credential",
            id="credential",
        ),
        pytest.param({"on_error": "ignore"}, "transform.on_error: 'ignore' is not one of: pass, fail", id="on-error"),
        pytest.param({"max_body_bytes": "1MB"}, "transform.max_body_bytes: '1MB' is not a whole number", id="max-body"),
        pytest.param(
            {"response": {"statuses": [99]}}, "transform.response.statuses[0]: 99 must be at least 100", id="status"
        ),
    ],
)
def test_refused_with_key_path_and_value(transform: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy({"transform": transform}, key=KEY)
    assert str(caught.value).startswith(f"{KEY}: {message}")


@pytest.mark.parametrize(
    ("set_value", "cache", "message"),
    [
        pytest.param("{request_id}", {}, "'{request_id}' cannot be cached", id="request-id"),
        pytest.param("{header.x-tenant}", {}, "'{header.x-tenant}' needs 'x-tenant' in cache.key.headers", id="header"),
        pytest.param(
            "{query.lang}", {"key": {"query": "none"}}, "'{query.lang}' needs the query parameter 'lang'", id="query"
        ),
    ],
)
def test_a_cached_transform_sets_only_values_the_key_holds(set_value: str, cache: dict[str, Any], message: str) -> None:
    doc = {"transform": {"response": {"json": {"set": {"a.b": set_value}}}}, "cache": cache}
    with pytest.raises(PolicyError) as caught:
        parse_policy(doc, key=KEY)
    assert str(caught.value).startswith(f"{KEY}: transform.response.json.set.a.b: {message}")
    ok = {"transform": {"response": {"json": {"set": {"a": "{query.lang}"}}}}, "cache": {"key": {"query": ["lang"]}}}
    parse_policy(ok, key=KEY)


def test_a_refused_edit_keeps_the_previous_transform() -> None:
    good = build_policy_book({"services/api": json.dumps({"transform": ISSUE}).encode()}, previous=None)
    broken = {"transform": {**ISSUE, "on_error": "explode"}}
    bad = build_policy_book({"services/api": json.dumps(broken).encode()}, previous=good)
    assert bad.for_service("api").transform == good.for_service("api").transform
    assert "transform.on_error: 'explode'" in bad.errors["services/api"]


@pytest.mark.parametrize(
    ("text", "path"),
    [
        pytest.param("a", ("a",), id="key"),
        pytest.param("a.b.c", ("a", "b", "c"), id="dotted"),
        pytest.param("items[*].secret", ("items", None, "secret"), id="wildcard"),
        pytest.param("[*].id", (None, "id"), id="root-array"),
        pytest.param("m[*][*]", ("m", None, None), id="nested-arrays"),
        pytest.param("a\\.b.c", ("a.b", "c"), id="escaped-dot"),
        pytest.param("x\\[1\\]", ("x[1]",), id="escaped-brackets"),
    ],
)
def test_json_paths(text: str, path: tuple[str | None, ...]) -> None:
    assert parse_path(text) == path
    assert parse_path(show_path(path)) == path


@pytest.mark.parametrize("text", ["", ".a", "a.", "a..b", "a[1]", "a]", "a[*]b", "a\\x", "a\\", "a\x00"])
def test_bad_json_paths(text: str) -> None:
    with pytest.raises(ValueError):
        parse_path(text)
