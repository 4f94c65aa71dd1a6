"""The ``cache`` section: defaults, every refusal names the key, the JSON path and the value, and a refused edit
keeps the previous policy."""

from __future__ import annotations

import json
from typing import Any

import pytest

from consulgw.errors import PolicyError
from consulgw.policy.book import build_policy_book
from consulgw.policy.model import CacheKeyPolicy, CachePolicy
from consulgw.policy.parse import parse_policy

KEY = "consulgw/services/shop"


def test_the_issue_document_and_the_defaults() -> None:
    document = {
        "backend": "memory",
        "mode": "rfc9111",
        "ttl": "60s",
        "methods": ["GET", "HEAD"],
        "statuses": [200, 203, 204, 300, 301, 404, 410],
        "key": {"query": "all", "headers": ["Accept-Language"], "per_consumer": True},
        "max_body_bytes": 1048576,
        "stale_while_revalidate": "10s",
        "stale_if_error": "5m",
        "on_backend_error": "bypass",
    }
    policy = parse_policy({"cache": document}, key=KEY).cache
    assert policy == CachePolicy(
        key=CacheKeyPolicy(headers=("accept-language",)), stale_while_revalidate=10.0, stale_if_error=300.0
    )
    assert parse_policy({"cache": {}}, key=KEY).cache == CachePolicy()
    assert parse_policy({"cache": None}, key=KEY).cache is None
    assert parse_policy({"cache": {"key": {"query": ["b", "a", "b"]}}}, key=KEY).cache.key.query == ("a", "b")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("cache", "message"),
    [
        pytest.param({"backend": "disk"}, "cache.backend: 'disk' is not one of: memory, redis", id="backend"),
        pytest.param({"ttl": "1 minute"}, "cache.ttl: '1 minute' is not a duration", id="ttl"),
        pytest.param(
            {"mode": "override", "ttl": 0},
            "cache.ttl: 0 must be greater than zero with mode 'override'",
            id="override-ttl",
        ),
        pytest.param({"statuses": [206]}, "cache.statuses[0]: 206 is not one of: 200, 203", id="partial-content"),
        pytest.param({"methods": ["POST"]}, "cache.methods[0]: 'POST' is not one of: GET, HEAD", id="method"),
        pytest.param(
            {"key": {"headers": ["Accept Language"]}},
            "cache.key.headers[0]: 'Accept Language' is not a valid header name",
            id="header",
        ),
        pytest.param(
            {"key": {"query": "some"}}, "cache.key.query: 'some' is not 'all', 'none' or a list", id="query-word"
        ),
        pytest.param(
            {"key": {"query": ["a&b"]}}, "cache.key.query[0]: 'a&b' is not a query parameter name", id="query-name"
        ),
        pytest.param({"max_body_bytes": -1}, "cache.max_body_bytes: -1 must be at least 0", id="max-body"),
        pytest.param({"stale_if_error": "2d"}, "cache.stale_if_error: '2d' is not a duration", id="stale-if-error"),
        pytest.param(
            {"stale_while_revalidate": "48h"},
            "cache.stale_while_revalidate: '48h' is too long (at most 86400s)",
            id="swr-long",
        ),
        pytest.param(
            {"on_backend_error": "allow"},
            "cache.on_backend_error: 'allow' is not one of: bypass, deny",
            id="backend-error",
        ),
        pytest.param({"tll": "1s"}, "cache.tll: unknown key (did you mean 'ttl'?", id="typo"),
    ],
)
def test_refused_with_key_path_and_value(cache: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy({"cache": cache}, key=KEY)
    assert str(caught.value).startswith(f"{KEY}: {message}")


def test_a_refused_edit_keeps_the_previous_cache_policy() -> None:
    good = build_policy_book({"services/shop": json.dumps({"cache": {"ttl": "30s"}}).encode()}, previous=None)
    bad = build_policy_book({"services/shop": json.dumps({"cache": {"ttl": "soon"}}).encode()}, previous=good)
    assert bad.for_service("shop").cache == CachePolicy(ttl=30.0)
    assert bad.errors["services/shop"].startswith("consulgw/services/shop: cache.ttl: 'soon' is not a duration")
