"""The ``failover`` section (issue 9, multi-datacenter failover).

Every accepted form becomes the model value shown; every refusal names the KV key, the JSON path and the value, and
a refused document keeps the previous good policy in the book.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from consulgw.errors import PolicyError
from consulgw.policy.book import build_policy_book
from consulgw.policy.model import FailoverPolicy, ServicePolicy
from consulgw.policy.parse import parse_policy

KEY = "consulgw/services/web"


def refusal(doc: Any) -> str:
    with pytest.raises(PolicyError) as info:
        parse_policy(doc, key=KEY)
    return str(info.value)


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        pytest.param(
            {
                "failover": {
                    "datacenters": ["dc2", "dc3"],
                    "when": {"min_healthy": 2},
                    "failback_after": "1m30s",
                    "address": "lan",
                    "watch": "warm",
                    "response_header": True,
                }
            },
            FailoverPolicy(
                datacenters=("dc2", "dc3"), min_healthy=2, failback_after=90.0, address="lan", response_header=True
            ),
            id="everything",
        ),
        pytest.param(
            {"failover": {"datacenters": ["dc2"]}},
            FailoverPolicy(datacenters=("dc2",), min_healthy=1, failback_after=30.0, address="wan"),
            id="defaults",
        ),
        pytest.param(
            {"failover": {"datacenters": ["eu-west.1"], "failback_after": 0, "when": {}}},
            FailoverPolicy(datacenters=("eu-west.1",), failback_after=0.0),
            id="immediate-failback",
        ),
        pytest.param({"failover": None}, None, id="null-switches-off"),
    ],
)
def test_valid_failover_sections(doc: Any, expected: FailoverPolicy | None) -> None:
    assert parse_policy(doc, key=KEY) == ServicePolicy(failover=expected)


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        pytest.param({"failover": {"datacenters": []}}, "failover.datacenters: a list of 0 items must not be empty",
                     id="empty-datacenters"),
        pytest.param({"failover": {}}, "failover: missing required key 'datacenters'", id="no-datacenters"),
        pytest.param({"failover": {"datacenters": "dc2"}}, "failover.datacenters: 'dc2' is not a list", id="not-list"),
        pytest.param({"failover": {"datacenters": ["dc2"], "when": {"min_healthy": -1}}},
                     "failover.when.min_healthy: -1 must be at least 1", id="negative-min-healthy"),
        pytest.param({"failover": {"datacenters": ["dc2"], "when": {"min_healthy": 0}}},
                     "failover.when.min_healthy: 0 must be at least 1", id="zero-min-healthy"),
        pytest.param({"failover": {"datacenters": ["dc2"], "when": {"min_healthy": 1.5}}},
                     "failover.when.min_healthy: 1.5 is not a whole number", id="fraction-min-healthy"),
        pytest.param({"failover": {"datacenters": ["dc2"], "when": {"max_latency": 1}}},
                     "failover.when.max_latency: unknown key (allowed: min_healthy)", id="unknown-when-key"),
        pytest.param({"failover": {"datacenters": ["dc2"], "failback_after": "30 s"}},
                     "failover.failback_after: '30 s' is not a duration", id="bad-duration"),
        pytest.param({"failover": {"datacenters": ["dc2"], "failback_after": "-5s"}},
                     "failover.failback_after: '-5s' must not be negative", id="negative-duration"),
        pytest.param({"failover": {"datacenters": ["dc2"], "failback_after": "48h"}},
                     "failover.failback_after: '48h' is too long (at most 86400s)", id="long-duration"),
        pytest.param({"failover": {"datacenters": ["dc2"], "nearest": 2}},
                     "failover.nearest: unknown key (allowed: address, datacenters, failback_after, response_header, "
                     "watch, when)", id="unknown-key"),
        pytest.param({"failover": {"datacenters": ["dc2"], "address": "public"}},
                     "failover.address: 'public' is not one of: wan, lan", id="bad-address"),
        pytest.param({"failover": {"datacenters": ["dc2"], "watch": "cold"}},
                     "failover.watch: 'cold' is not supported: only 'warm' is built", id="cold-not-built"),
        pytest.param({"failover": {"datacenters": ["dc2"], "watch": "lazy"}},
                     "failover.watch: 'lazy' is not one of: warm, cold", id="bad-watch"),
        pytest.param({"failover": {"datacenters": ["dc2", "dc2"]}}, "failover.datacenters[1]: 'dc2' is listed twice",
                     id="duplicate"),
        pytest.param({"failover": {"datacenters": ["dc 2"]}},
                     "failover.datacenters[0]: 'dc 2' is not a datacenter name", id="bad-name"),
        pytest.param({"failover": {"datacenters": [""]}}, "failover.datacenters[0]: '' must not be empty",
                     id="empty-name"),
        pytest.param({"failover": {"datacenters": ["dc2"], "response_header": "yes"}},
                     "failover.response_header: 'yes' is not true or false", id="header-not-bool"),
        pytest.param({"failover": 3}, "failover: 3 is not an object or null", id="not-object"),
    ],
)  # fmt: skip
def test_refusals_name_key_path_and_value(doc: Any, expected: str) -> None:
    message = refusal(doc)
    assert message.startswith(KEY + ": ")
    assert expected in message, message
    assert "\n" not in message


def test_a_refused_failover_edit_keeps_the_previous_policy() -> None:
    good_doc = {"failover": {"datacenters": ["dc2"], "failback_after": "10s"}}
    good = build_policy_book({"services/web": json.dumps(good_doc).encode()}, previous=None)
    assert not good.errors
    for bad_doc in (
        {"failover": {"datacenters": []}},
        {"failover": {"datacenters": ["dc2"], "when": {"min_healthy": -3}}},
        {"failover": {"datacenters": ["dc2"], "failback_after": "soon"}},
        {"failover": {"datacenters": ["dc2"], "colour": "red"}},
    ):
        book = build_policy_book({"services/web": json.dumps(bad_doc).encode()}, previous=good)
        assert book.for_service("web") == good.for_service("web")
        assert book.errors["services/web"].startswith("consulgw/services/web: failover"), book.errors


def test_failover_from_defaults_merges_with_the_service_document() -> None:
    defaults = {"failover": {"datacenters": ["dc2"], "failback_after": "1m"}}
    service = {"failover": {"datacenters": ["dc3", "dc2"], "response_header": True}}
    book = build_policy_book(
        {"defaults": json.dumps(defaults).encode(), "services/web": json.dumps(service).encode()}, previous=None
    )
    assert not book.errors
    assert book.for_service("web").failover == FailoverPolicy(
        datacenters=("dc3", "dc2"), failback_after=60.0, response_header=True
    )
    assert book.for_service("other").failover == FailoverPolicy(datacenters=("dc2",), failback_after=60.0)
