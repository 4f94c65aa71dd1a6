"""The /-/routes document (consulgw.server.routes_document): bounded whatever the catalog, filterable, one shape
for the admin API and ``consulgw routes --json``."""

from __future__ import annotations

import json
import time

import pytest

from consulgw.model.snapshot import Instance, ServiceSnapshot
from consulgw.policy.model import ServicePolicy
from consulgw.routing import RouteTable, parse_service_routes
from consulgw.server.routes_document import (
    MAX_LIMIT,
    DocumentQuery,
    QueryError,
    ServiceFacts,
    parse_query,
    routes_document,
)


def catalog(count: int, *, tags: tuple[str, ...] = ()) -> tuple[RouteTable, dict[str, ServiceFacts]]:
    """``count`` services of two instances each, one route tag each (plus ``tags`` on every one)."""
    facts: dict[str, ServiceFacts] = {}
    parsed = []
    for i in range(count):
        name = f"svc-{i:05d}"
        service_tags = (f"gw.route=/{name} strip=/{name}", *tags)
        routes = parse_service_routes(name, service_tags)
        parsed.append(routes)
        instances = tuple(
            Instance(
                id=f"node-{j}/{name}-{j}",
                service=name,
                service_id=f"{name}-{j}",
                node=f"node-{j}",
                address=f"10.0.{i % 250}.{j + 1}",
                port=8080,
                tags=service_tags,
            )
            for j in range(2)
        )
        snapshot = ServiceSnapshot(name=name, index=1, instances=instances)
        facts[name] = ServiceFacts(snapshot=snapshot, routes=routes, lb="round_robin", policy=ServicePolicy())
    return RouteTable.build(parsed), facts


def test_five_thousand_services_do_not_make_a_large_answer() -> None:
    """Issue 13: 5,000 services made a 4 MB answer per dashboard poll (twice a second)."""
    table, facts = catalog(5000)
    started = time.perf_counter()
    doc = routes_document(table=table, services=facts, policy_errors={})
    elapsed = time.perf_counter() - started
    size = len(json.dumps(doc))
    assert size < 150_000, size
    assert len(doc["services"]) == 100
    assert len(doc["routes"]) == 100
    assert doc["totals"] == {"services": 5000, "routes": 5000, "route_errors": 0, "conflicts": 0, "policy_errors": 0}
    assert doc["next"] == "svc-00099"
    assert elapsed < 2.0  # generous: a loaded 2-core box; the figure that matters is the size


def test_pages_walk_every_service_once() -> None:
    table, facts = catalog(250)
    seen: list[str] = []
    after: str | None = None
    while True:
        doc = routes_document(table=table, services=facts, policy_errors={}, query=DocumentQuery(after=after))
        seen += list(doc["services"])
        assert [r["service"] for r in doc["routes"]] == sorted(doc["services"])  # only the page's routes
        after = doc["next"]
        if after is None:
            break
    assert seen == sorted(facts)


def test_service_filter_selects_routes_errors_conflicts_and_policy_errors() -> None:
    table, facts = catalog(20, tags=("gw.route=/shared", "gw.lb=bogus"))
    errors = {"services/svc-00003": "bad", "services/svc-00004": "bad too", "defaults": "bad defaults"}
    query = DocumentQuery(services=frozenset({"svc-00003", "nope"}))
    doc = routes_document(table=table, services=facts, policy_errors=errors, query=query)
    assert list(doc["services"]) == ["svc-00003"]
    assert {r["service"] for r in doc["routes"]} == {"svc-00003"}
    assert {e["service"] for e in doc["route_errors"]} == {"svc-00003"}
    assert doc["policy_errors"] == {"defaults": "bad defaults", "services/svc-00003": "bad"}
    # /shared is claimed by all twenty; svc-00000 wins, svc-00003 is among the losers
    assert [c["winner"] for c in doc["conflicts"]] == ["svc-00000"]
    assert doc["totals"]["services"] == 1


def test_problem_lists_are_bounded_and_counted() -> None:
    table, facts = catalog(300, tags=("gw.lb=bogus",))
    errors = {f"services/svc-{i:05d}": "refused" for i in range(300)}
    doc = routes_document(table=table, services=facts, policy_errors=errors)
    assert len(doc["route_errors"]) == 100
    assert len(doc["policy_errors"]) == 100
    assert (doc["totals"]["route_errors"], doc["totals"]["policy_errors"]) == (300, 300)


def test_long_tags_and_reasons_are_cut() -> None:
    long_tag = "gw.route=/" + "x" * 5000 + " strip=/nope"
    table, facts = catalog(1, tags=(long_tag,))
    doc = routes_document(table=table, services=facts, policy_errors={"defaults": "y" * 10_000})
    (error,) = doc["route_errors"]
    assert len(error["tag"]) < 600
    assert error["tag"].endswith(f"…({len(long_tag)} chars)")
    assert len(error["reason"]) < 1100
    assert len(doc["policy_errors"]["defaults"]) < 1100
    assert doc["services"]["svc-00000"]["route_errors"][0]["tag"] == error["tag"]


def test_without_a_limit_every_service_is_listed() -> None:
    table, facts = catalog(150)
    doc = routes_document(table=table, services=facts, policy_errors={}, query=DocumentQuery(limit=None))
    assert len(doc["services"]) == 150
    assert doc["next"] is None


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param({}, DocumentQuery(), id="default"),
        pytest.param({"service": ["a", "b,c"]}, DocumentQuery(services=frozenset({"a", "b", "c"})), id="services"),
        pytest.param({"after": ["svc-9"], "limit": ["1000"]}, DocumentQuery(after="svc-9", limit=1000), id="page"),
    ],
)
def test_parse_query(query: dict[str, list[str]], expected: DocumentQuery) -> None:
    assert parse_query(query) == expected


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        pytest.param({"limit": ["0"]}, "limit must be", id="zero"),
        pytest.param({"limit": [str(MAX_LIMIT + 1)]}, "limit must be", id="too-many"),
        pytest.param({"limit": ["ten"]}, "limit must be", id="not-a-number"),
        pytest.param({"services": ["a"]}, "unknown parameter 'services'", id="typo"),
        pytest.param({"service": [",".join(f"s{i}" for i in range(101))]}, "at most 100", id="filter-too-long"),
    ],
)
def test_bad_queries(query: dict[str, list[str]], problem: str) -> None:
    with pytest.raises(QueryError, match=problem):
        parse_query(query)
