"""The traffic sections (issue 9): lb's object form, subsets, split, sticky, slow_start, mirror.

Every accepted form becomes the model value shown; every refusal names the KV key, the JSON path and the value, and
a refused document keeps the previous good policy in the book.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from consulgw.errors import PolicyError
from consulgw.model.balancing import HashKey
from consulgw.policy.book import build_policy_book
from consulgw.policy.model import (
    HeaderRules,
    MirrorPolicy,
    MirrorTarget,
    ServicePolicy,
    SlowStartPolicy,
    SplitMatch,
    SplitPolicy,
    StickyPolicy,
    Subset,
)
from consulgw.policy.parse import parse_policy

KEY = "consulgw/services/users"
SUBSETS = {"stable": {"meta": {"version": "v1"}}, "canary": {"meta": {"version": ["v2", "v2-rc"]}, "tags": ["!q"]}}
STABLE = Subset(name="stable", meta=(("version", ("v1",)),))
CANARY = Subset(name="canary", meta=(("version", ("v2", "v2-rc")),), without_tags=("q",))


def policy(doc: Any) -> ServicePolicy:
    return parse_policy(json.dumps(doc).encode(), key=KEY)


def refusal(doc: Any) -> str:
    with pytest.raises(PolicyError) as info:
        parse_policy(json.dumps(doc).encode(), key=KEY)
    return str(info.value)


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        pytest.param({"lb": {"type": "hash"}}, ServicePolicy(lb="ip_hash"), id="lb-hash-by-ip"),
        pytest.param({"lb": {"type": "hash", "key": "ip"}}, ServicePolicy(lb="ip_hash"), id="lb-hash-key-ip"),
        pytest.param(
            {"lb": {"type": "hash", "key": "header:X-User-ID"}},
            ServicePolicy(lb="ip_hash", lb_key=HashKey("header", "x-user-id")),
            id="lb-hash-header",
        ),
        pytest.param(
            {"lb": {"type": "ip_hash", "key": "cookie:session"}},
            ServicePolicy(lb="ip_hash", lb_key=HashKey("cookie", "session")),
            id="lb-hash-cookie",
        ),
        pytest.param(
            {"lb": {"type": "hash", "key": "consumer"}},
            ServicePolicy(lb="ip_hash", lb_key=HashKey("consumer")),
            id="lb-hash-consumer",
        ),
        pytest.param({"lb": {"type": "least_conn"}}, ServicePolicy(lb="least_conn"), id="lb-object-name"),
        pytest.param({"subsets": SUBSETS}, ServicePolicy(subsets=(STABLE, CANARY)), id="subsets"),
        pytest.param(
            {"subsets": {"next": {"service": "users-next"}, "all": {}}},
            ServicePolicy(subsets=(Subset(name="next", service="users-next"), Subset(name="all"))),
            id="subset-service-and-everything",
        ),
        pytest.param(
            {"subsets": {"eu": {"tags": ["eu", "!drain", "eu"]}}},
            ServicePolicy(subsets=(Subset(name="eu", tags=("eu",), without_tags=("drain",)),)),
            id="subset-tags",
        ),
        pytest.param(
            {"subsets": SUBSETS, "split": {"default": "stable"}},
            ServicePolicy(subsets=(STABLE, CANARY), split=SplitPolicy(default="stable")),
            id="split-defaults",
        ),
        pytest.param(
            {
                "subsets": SUBSETS,
                "split": {
                    "default": "stable",
                    "weights": {"stable": 90, "canary": 10},
                    "match": [
                        {"header": {"X-Canary": "always"}, "to": "canary"},
                        {"cookie": {"beta": "1"}, "to": "canary"},
                        {"query": {"v": ["2", "3"]}, "to": "canary"},
                        {"consumer": ["qa-team"], "header": {"X-QA": "yes"}, "to": "canary"},
                    ],
                    "hash": "header:X-User-ID",
                    "on_empty": "fail",
                    "response_header": True,
                },
            },
            ServicePolicy(
                subsets=(STABLE, CANARY),
                split=SplitPolicy(
                    default="stable",
                    weights=(("stable", 90), ("canary", 10)),
                    match=(
                        SplitMatch(to="canary", headers=(("x-canary", ("always",)),)),
                        SplitMatch(to="canary", cookies=(("beta", ("1",)),)),
                        SplitMatch(to="canary", query=(("v", ("2", "3")),)),
                        SplitMatch(to="canary", headers=(("x-qa", ("yes",)),), consumers=frozenset({"qa-team"})),
                    ),
                    hash=HashKey("header", "x-user-id"),
                    on_empty="fail",
                    response_header=True,
                ),
            ),
            id="split-everything",
        ),
        pytest.param(
            {"subsets": SUBSETS, "split": {"default": "stable", "hash": "none", "weights": {"canary": 0}}},
            ServicePolicy(
                subsets=(STABLE, CANARY), split=SplitPolicy(default="stable", hash=None, weights=(("canary", 0),))
            ),
            id="split-hash-none-weight-0",
        ),
        pytest.param({"sticky": {}}, ServicePolicy(sticky=StickyPolicy()), id="sticky-defaults"),
        pytest.param(
            {
                "sticky": {
                    "cookie": "pin",
                    "max_age": "1h",
                    "path": "/app",
                    "secure": False,
                    "http_only": False,
                    "same_site": None,
                    "on_unavailable": "fail",
                    "keep_draining": False,
                }
            },
            ServicePolicy(
                sticky=StickyPolicy(
                    cookie="pin",
                    max_age=3600.0,
                    path="/app",
                    secure=False,
                    http_only=False,
                    same_site=None,
                    on_unavailable="fail",
                    keep_draining=False,
                )
            ),
            id="sticky-everything",
        ),
        pytest.param(
            {"slow_start": {"window": "30s"}}, ServicePolicy(slow_start=SlowStartPolicy(window=30.0)), id="slow-start"
        ),
        pytest.param(
            {
                "subsets": SUBSETS,
                "mirror": {
                    "to": [{"service": "users-next", "percent": 10}, {"subset": "canary"}],
                    "methods": ["get", "POST"],
                    "max_body_bytes": 1024,
                    "timeout": "500ms",
                    "max_in_flight": 8,
                    "headers": {"remove": ["Authorization"], "set": {"X-Mirror": "1"}},
                },
            },
            ServicePolicy(
                subsets=(STABLE, CANARY),
                mirror=MirrorPolicy(
                    to=(MirrorTarget(service="users-next", percent=10.0), MirrorTarget(subset="canary")),
                    methods=frozenset({"GET", "POST"}),
                    max_body_bytes=1024,
                    timeout=0.5,
                    max_in_flight=8,
                    headers=HeaderRules(set=(("X-Mirror", "1"),), remove=("Authorization",)),
                ),
            ),
            id="mirror",
        ),
        pytest.param(
            {"subsets": None, "split": None, "sticky": None, "slow_start": None, "mirror": None},
            ServicePolicy(),
            id="null-switches-off",
        ),
    ],
)
def test_valid_traffic_sections(doc: Any, expected: ServicePolicy) -> None:
    assert policy(doc) == expected


def test_referenced_services_are_subset_and_mirror_services() -> None:
    parsed = policy(
        {
            "subsets": {"next": {"service": "users-next"}, "stable": {}},
            "mirror": {"to": [{"service": "shadow"}, {"subset": "stable"}]},
        }
    )
    assert parsed.referenced_services() == {"users-next", "shadow"}


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        pytest.param(
            {"subsets": SUBSETS, "split": {"default": "stable", "weights": {"canry": 10}}},
            "split.weights.canry: 'canry' is not a subset of this service (did you mean 'canary'? subsets: canary, "
            "stable)",
            id="unknown-subset-in-weights",
        ),
        pytest.param(
            {"split": {"default": "stable"}},
            "split.default: 'stable' is not a subset of this service (subsets: none: define them under 'subsets')",
            id="split-without-subsets",
        ),
        pytest.param(
            {"subsets": SUBSETS, "split": {"default": "stable", "match": [{"header": {"X": "1"}, "to": "beta"}]}},
            "split.match[0].to: 'beta' is not a subset of this service",
            id="unknown-subset-in-match",
        ),
        pytest.param(
            {"subsets": SUBSETS, "split": {"default": "stable", "weights": {"canary": -1}}},
            "split.weights.canary: -1 must be at least 0",
            id="negative-weight",
        ),
        pytest.param(
            {"subsets": SUBSETS, "split": {"default": "stable", "weights": {"canary": 1.5}}},
            "split.weights.canary: 1.5 is not a whole number",
            id="fractional-weight",
        ),
        pytest.param(
            {"subsets": SUBSETS, "split": {"default": "stable", "match": [{"to": "canary"}]}},
            "split.match[0]: needs at least one condition: header, cookie, query or consumer",
            id="match-without-condition",
        ),
        pytest.param(
            {"subsets": SUBSETS, "split": {"default": "stable", "hash": "cookie:sid"}},
            "split.hash: 'cookie:sid' is not one of: cookie, consumer, ip, header:<name>, none",
            id="split-hash-unknown",
        ),
        pytest.param(
            {"subsets": SUBSETS, "split": {"default": "stable", "hash": "header:bad name"}},
            "split.hash: 'header:bad name' names 'bad name', which is not a valid header name",
            id="split-hash-bad-header",
        ),
        pytest.param(
            {"subsets": SUBSETS, "split": {"default": "stable", "on_empty": "random"}},
            "split.on_empty: 'random' is not one of: default, fail",
            id="split-on-empty",
        ),
        pytest.param({"subsets": {"bad name": {}}}, "subsets.bad name: is not a subset name", id="subset-name"),
        pytest.param(
            {"subsets": {"next": {"service": "users-next", "tags": ["v2"]}}},
            "subsets.next.tags: cannot be combined with 'service'",
            id="subset-service-and-tags",
        ),
        pytest.param(
            {"subsets": {"next": {"service": "users/next"}}},
            "subsets.next.service: 'users/next' is not a Consul service name",
            id="subset-service-name",
        ),
        pytest.param({"subsets": {"x": {"tags": ["!"]}}}, "subsets.x.tags[0]: '!' names no tag", id="subset-bare-bang"),
        pytest.param(
            {"subsets": {"x": {"tags": ["a", "!a"]}}},
            "subsets.x.tags: requires and excludes 'a'",
            id="subset-contradiction",
        ),
        pytest.param(
            {"subsets": {"x": {"meta": {"version": []}}}},
            "subsets.x.meta.version: a list of 0 items must not be empty",
            id="meta-empty",
        ),
        pytest.param({"subsets": {"x": {"color": "red"}}}, "subsets.x.color: unknown key", id="subset-unknown-key"),
        pytest.param({"slow_start": {"window": "30 s"}}, "slow_start.window: '30 s' is not a duration", id="bad-dur"),
        pytest.param({"slow_start": {"window": "0s"}}, "slow_start.window: '0s' must be greater than zero", id="zero"),
        pytest.param(
            {"slow_start": {"window": "2h"}}, "slow_start.window: '2h' is too long (at most 3600s)", id="long"
        ),
        pytest.param({"slow_start": {}}, "slow_start: missing required key 'window'", id="slow-start-window"),
        pytest.param({"sticky": {"max_age": "-1s"}}, "sticky.max_age: '-1s' must be greater than zero", id="max-age"),
        # Values under a "cookie" key are never echoed (as with every credential-like name).
        pytest.param({"sticky": {"cookie": "a b"}}, "sticky.cookie: '***' is not a valid cookie name", id="cookie"),
        pytest.param({"sticky": {"cookie": "gw_split"}}, "sticky.cookie: '***' is the split's own", id="clash"),
        pytest.param({"sticky": {"path": "app"}}, "sticky.path: 'app' must be a path such as '/'", id="path"),
        pytest.param(
            {"sticky": {"same_site": "none", "secure": False}},
            "sticky.same_site: 'none' requires secure: true",
            id="same-site-none-insecure",
        ),
        pytest.param(
            {"sticky": {"on_unavailable": "wait"}},
            "sticky.on_unavailable: 'wait' is not one of: repick, fail",
            id="on-unavailable",
        ),
        pytest.param(
            {"lb": {"type": "least_conn", "key": "ip"}},
            "lb.key: 'ip' is only used by the hash balancer (type 'hash'), not by 'least_conn'",
            id="lb-key-without-hash",
        ),
        pytest.param(
            {"lb": {"type": "hash", "key": "query:q"}},
            "lb.key: 'query:q' is not one of: ip, consumer, header:<name>, cookie:<name>",
            id="lb-key-unknown",
        ),
        pytest.param({"lb": {"type": "fastest"}}, "lb.type: 'fastest' is not one of", id="lb-type"),
        pytest.param({"lb": {"key": "ip"}}, "lb: missing required key 'type'", id="lb-no-type"),
        pytest.param({"lb": 3}, "lb: 3 is not a string or an object or null", id="lb-number"),
        pytest.param(
            {"mirror": {"to": [{"subset": "canary"}]}},
            "mirror.to[0].subset: 'canary' is not a subset of this service",
            id="mirror-unknown-subset",
        ),
        pytest.param(
            {"mirror": {"to": [{"service": "a", "subset": "b"}]}},
            "mirror.to[0]: give exactly one of 'service' (another Consul service) and 'subset'",
            id="mirror-both",
        ),
        pytest.param({"mirror": {"to": []}}, "mirror.to: a list of 0 items must not be empty", id="mirror-no-target"),
        pytest.param(
            {"mirror": {"to": [{"service": "a", "percent": 101}]}},
            "mirror.to[0].percent: 101 must be at most 100",
            id="mirror-percent",
        ),
        pytest.param(
            {"mirror": {"to": [{"service": "a"}, {"service": "a"}]}},
            "mirror.to[1]: mirrors to service:a a second time",
            id="mirror-twice",
        ),
        pytest.param(
            {"mirror": {"to": [{"service": "a"}], "timeout": "1 m"}},
            "mirror.timeout: '1 m' is not a duration",
            id="mirror-timeout",
        ),
        pytest.param(
            {"mirror": {"to": [{"service": "a"}], "max_body_bytes": -5}},
            "mirror.max_body_bytes: -5 must be at least 0",
            id="mirror-body",
        ),
        pytest.param(
            {"mirror": {"to": [{"service": "a"}], "headers": {"remove": ["Content-Length"]}}},
            "mirror.headers.remove[0]: 'Content-Length' cannot be changed by a policy",
            id="mirror-framing-header",
        ),
    ],
)
def test_refusals_name_key_path_and_value(doc: Any, expected: str) -> None:
    message = refusal(doc)
    assert message.startswith(KEY + ": ")
    assert expected in message, message
    assert "\n" not in message


def test_a_refused_traffic_edit_keeps_the_previous_policy() -> None:
    good_doc = {"subsets": SUBSETS, "split": {"default": "stable", "weights": {"stable": 90, "canary": 10}}}
    good = build_policy_book({"services/users": json.dumps(good_doc).encode()}, previous=None)
    assert not good.errors
    bad_doc = {"subsets": SUBSETS, "split": {"default": "stable", "weights": {"stable": 90, "nope": 10}}}
    book = build_policy_book({"services/users": json.dumps(bad_doc).encode()}, previous=good)
    assert book.for_service("users") == good.for_service("users")
    assert "split.weights.nope: 'nope' is not a subset" in book.errors["services/users"]


def test_subsets_from_defaults_merge_with_the_service_document() -> None:
    defaults = {"subsets": {"stable": {"meta": {"version": "v1"}}}}
    service = {"subsets": {"canary": {"meta": {"version": "v2"}}}, "split": {"default": "stable"}}
    book = build_policy_book(
        {"defaults": json.dumps(defaults).encode(), "services/users": json.dumps(service).encode()}, previous=None
    )
    assert not book.errors
    assert [s.name for s in book.for_service("users").subsets] == ["stable", "canary"]
