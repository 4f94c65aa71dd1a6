"""Canary and A/B splits through a real gateway (issue 9): subsets by Service Meta, match rules, weights, hashing.

Each test registers a fresh service with two ``version=v1`` instances (subset ``stable``) and one ``version=v2``
instance (subset ``canary``) in the dev agent, writes its policy to KV, and counts which upstream answered
(``X-Upstream``) over many requests.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import aiohttp
import pytest

from consulgw.server.gateway import Gateway
from tests.gateway.conftest import Consul, routed
from tests.policy_e2e.conftest import admin_routes, metric_value, put_policy, wait_for, wait_policy
from tests.support.processes import free_port

from .support import SUBSETS, canary_service, cookie_value, fetch, fetch_many


def split(weights: dict[str, int], **extra: Any) -> dict[str, Any]:
    return {"subsets": SUBSETS, "split": {"default": "stable", "weights": weights, **extra}}


async def test_ninety_ten_without_hashing_sends_ten_percent_to_the_canary(
    make_gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession
) -> None:
    gateway: Gateway = await make_gateway()
    policy = split({"stable": 90, "canary": 10}, hash="none", response_header=True)
    svc = await canary_service(gateway, consul, upstreams, policy=policy)
    replies = await fetch_many(http, f"{gateway.url}/items", [None] * 4000)
    assert {r.status for r in replies} == {200}
    canary = sum(r.upstream in svc.canary_names for r in replies)
    assert canary / 4000 == pytest.approx(0.10, abs=0.025)
    # The subset is named on every answer, and agrees with the instance that answered.
    for reply in replies:
        assert reply.headers["X-Gateway-Subset"] == ("canary" if reply.upstream in svc.canary_names else "stable")
    # Inside the stable subset, the round-robin balancer still spreads over both instances.
    stable = Counter(r.upstream for r in replies if r.upstream in svc.stable_names)
    assert set(stable) == svc.stable_names
    assert min(stable.values()) / max(stable.values()) > 0.8
    # /-/routes and the metrics say what happened.
    routes = await admin_routes(http, gateway.admin_url)
    facts = routes["services"][svc.name]
    assert facts["split"].startswith("stable 90 · canary 10")
    assert facts["subset_pools"] == {
        "stable": {"in_pool": 2, "draining": 0, "service": None},
        "canary": {"in_pool": 1, "draining": 0, "service": None},
    }
    counted = await metric_value(
        http, gateway.admin_url, "consulgw_split_requests_total", service=svc.name, subset="canary", by="weight"
    )
    assert counted == canary


@pytest.mark.parametrize(
    ("rule", "headers", "url_tail"),
    [
        pytest.param({"header": {"X-Canary": "always"}}, {"X-Canary": "always"}, "/a", id="header"),
        pytest.param({"cookie": {"beta": "1"}}, {"Cookie": "theme=dark; beta=1"}, "/a", id="cookie"),
        pytest.param({"query": {"v": ["2", "3"]}}, {}, "/a?x=1&v=3", id="query"),
    ],
)
async def test_a_matching_request_always_reaches_the_canary(
    make_gateway: Any,
    consul: Consul,
    upstreams: Any,
    http: aiohttp.ClientSession,
    rule: dict[str, Any],
    headers: dict[str, str],
    url_tail: str,
) -> None:
    gateway: Gateway = await make_gateway()
    policy = split({"stable": 100, "canary": 0}, match=[{**rule, "to": "canary"}])
    svc = await canary_service(gateway, consul, upstreams, policy=policy)
    matching = await fetch_many(http, f"{gateway.url}{url_tail}", [headers] * 200)
    assert {r.upstream for r in matching} == svc.canary_names
    others = await fetch_many(http, f"{gateway.url}/a?v=1", [{"X-Canary": "never", "Cookie": "beta=0"}] * 200)
    assert {r.upstream for r in others} <= svc.stable_names


async def test_a_consumer_rule_sends_that_consumer_to_the_canary(
    make_gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession
) -> None:
    gateway: Gateway = await make_gateway()
    from consulgw.policy.consumers import api_key_digest

    for name, key in (("qa-team", "qa-key-0123456789"), ("alice", "alice-key-0123456789")):
        await consul.kv_put(f"consulgw/consumers/{name}", json.dumps({"api_key_sha256": [api_key_digest(key)]}))
    policy = {**split({"stable": 100}, match=[{"consumer": ["qa-team"], "to": "canary"}]), "auth": {"type": "api_key"}}
    svc = await canary_service(gateway, consul, upstreams, policy=policy)
    await wait_for(lambda: "qa-team" in gateway.view().book.consumers)  # type: ignore[union-attr]
    qa = await fetch_many(http, f"{gateway.url}/a", [{"X-API-Key": "qa-key-0123456789"}] * 50)
    alice = await fetch_many(http, f"{gateway.url}/a", [{"X-API-Key": "alice-key-0123456789"}] * 50)
    assert {r.upstream for r in qa} == svc.canary_names
    assert {r.upstream for r in alice} <= svc.stable_names


async def test_hash_cookie_keeps_each_client_on_its_subset_across_requests_and_gateways(
    make_gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession
) -> None:
    first: Gateway = await make_gateway()
    second: Gateway = await make_gateway()  # another gateway process would hash the same way: no shared state
    policy = split({"stable": 50, "canary": 50}, hash="cookie")
    svc = await canary_service(first, consul, upstreams, policy=policy)
    await wait_for(lambda: routed(second, svc.name, 3))
    await wait_policy(second, svc.name, policy)
    # Each of 200 clients: a first request without a cookie gets one, then 19 more alternate between gateways.
    firsts = await fetch_many(http, f"{first.url}/a", [None] * 200)
    cookies = [cookie_value(r.set_cookies, "gw_split") for r in firsts]
    assert all(cookies)
    assert len(set(cookies)) == 200
    subsets: dict[str, set[str]] = {
        c: {"canary" if r.upstream in svc.canary_names else "stable"} for c, r in zip(cookies, firsts, strict=True)
    }  # type: ignore[misc]
    for round_ in range(19):
        gateway = second if round_ % 2 == 0 else first
        replies = await fetch_many(http, f"{gateway.url}/a", [{"Cookie": f"gw_split={c}"} for c in cookies])
        for cookie, reply in zip(cookies, replies, strict=True):
            assert reply.status == 200
            assert cookie_value(reply.set_cookies, "gw_split") is None  # the client has one: not set again
            subsets[cookie].add("canary" if reply.upstream in svc.canary_names else "stable")  # type: ignore[index]
    assert all(len(seen) == 1 for seen in subsets.values())
    on_canary = sum(seen == {"canary"} for seen in subsets.values())
    assert 60 <= on_canary <= 140  # about half, as weighted


async def test_weight_zero_sends_nothing_but_matches(
    make_gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession
) -> None:
    gateway: Gateway = await make_gateway()
    policy = split({"stable": 1, "canary": 0}, hash="none", match=[{"header": {"X-Canary": "always"}, "to": "canary"}])
    svc = await canary_service(gateway, consul, upstreams, policy=policy)
    plain = await fetch_many(http, f"{gateway.url}/a", [None] * 500)
    assert {r.upstream for r in plain} <= svc.stable_names
    matched = await fetch_many(http, f"{gateway.url}/a", [{"X-Canary": "always"}] * 20)
    assert {r.upstream for r in matched} == svc.canary_names


@pytest.mark.parametrize("empty", ["no-instances", "all-critical"])
async def test_an_empty_canary_falls_back_to_the_default_or_fails(
    make_gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession, empty: str
) -> None:
    gateway: Gateway = await make_gateway()
    policy = split({"stable": 0, "canary": 1}, hash="none", response_header=True)
    if empty == "no-instances":  # the canary was not deployed yet: its instances carry another version
        svc = await canary_service(gateway, consul, upstreams, policy=policy, canary_version="v3")
    else:
        svc = await canary_service(gateway, consul, upstreams, policy=policy)
        await consul.check(svc.ids["canary-1"], "critical")
        await wait_for(lambda: routed(gateway, svc.name, 2))
    replies = await fetch_many(http, f"{gateway.url}/a", [None] * 50)
    assert {r.upstream for r in replies} <= svc.stable_names
    assert {r.headers["X-Gateway-Subset"] for r in replies} == {"stable"}
    fallbacks = await metric_value(
        http, gateway.admin_url, "consulgw_split_fallback_total", service=svc.name, subset="canary"
    )
    assert fallbacks == 50

    failing = {**policy, "split": {**policy["split"], "on_empty": "fail"}}
    await put_policy(consul, svc.name, failing)
    await wait_policy(gateway, svc.name, failing)
    reply = await fetch(http, f"{gateway.url}/a")
    assert reply.status == 503
    assert json.loads(reply.body)["error"] == "no_healthy_upstream"
    assert reply.headers["X-Gateway-Subset"] == "canary"


async def test_a_weight_change_moves_only_clients_from_stable_to_canary(
    make_gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession
) -> None:
    gateway: Gateway = await make_gateway()
    before = split({"stable": 90, "canary": 10}, hash="header:X-User-ID")
    svc = await canary_service(gateway, consul, upstreams, policy=before)
    users = [{"X-User-ID": f"user-{i}"} for i in range(400)]

    async def subsets() -> list[str]:
        replies = await fetch_many(http, f"{gateway.url}/a", users)
        return ["canary" if r.upstream in svc.canary_names else "stable" for r in replies]

    old = await subsets()
    assert old == await subsets()  # stable while the weights are
    after = split({"stable": 50, "canary": 50}, hash="header:X-User-ID")
    await put_policy(consul, svc.name, after)
    await wait_policy(gateway, svc.name, after)
    new = await subsets()
    moves = Counter(zip(old, new, strict=True))
    assert moves[("canary", "stable")] == 0
    assert 400 * 0.3 <= moves[("stable", "canary")] <= 400 * 0.5  # about 40% of all clients move, all from stable


async def test_a_subset_may_be_another_service_watched_without_a_route(
    make_gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession
) -> None:
    gateway: Gateway = await make_gateway()
    svc = await canary_service(gateway, consul, upstreams, canary=0)
    nxt = await upstreams("next-1")
    await consul.register(f"{svc.name}-next", nxt.port, service_id=f"{svc.name}-next-1")  # no route tag
    policy = {
        "subsets": {"stable": {}, "next": {"service": f"{svc.name}-next"}},
        "split": {"default": "stable", "weights": {"next": 1}, "hash": "none"},
    }
    await put_policy(consul, svc.name, policy)
    await wait_policy(gateway, svc.name, policy)
    await wait_for(lambda: routed(gateway, f"{svc.name}-next", 1))  # watched because the policy names it
    replies = await fetch_many(http, f"{gateway.url}/a", [None] * 20)
    assert {r.upstream for r in replies} == {"next-1"}
    routes = await admin_routes(http, gateway.admin_url)
    assert not [r for r in routes["routes"] if r["service"] == f"{svc.name}-next"]  # still no route of its own

    # The policy no longer names it: the gateway stops watching it.
    await put_policy(consul, svc.name, {"lb": "round_robin"})
    await wait_for(lambda: f"{svc.name}-next" not in gateway.view().services)  # type: ignore[union-attr]


async def test_an_invalid_split_is_refused_with_its_path_and_the_previous_split_stays(
    make_gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession
) -> None:
    gateway: Gateway = await make_gateway()
    good = split({"stable": 0, "canary": 1}, hash="none")
    svc = await canary_service(gateway, consul, upstreams, policy=good)
    rel = f"services/{svc.name}"
    for bad, expected in (
        (split({"stable": 1, "nope": 1}), "split.weights.nope: 'nope' is not a subset of this service"),
        (split({"stable": -1}), "split.weights.stable: -1 must be at least 0"),
        ({**good, "slow_start": {"window": "soon"}}, "slow_start.window: 'soon' is not a duration"),
    ):
        raw = json.dumps(bad)
        await consul.kv_put(f"consulgw/{rel}", raw)
        await wait_for(lambda raw=raw: gateway.view().book.sources.get(rel) == raw.encode())  # type: ignore[union-attr]
        routes = await admin_routes(http, gateway.admin_url)
        assert expected in routes["policy_errors"][rel]
        assert routes["policy_errors"][rel].startswith(f"consulgw/{rel}: ")
        replies = await fetch_many(http, f"{gateway.url}/a", [None] * 10)
        assert {r.upstream for r in replies} == svc.canary_names  # the previous split is in force


async def test_retries_stay_inside_the_chosen_subset(
    make_gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession
) -> None:
    gateway: Gateway = await make_gateway()
    policy = {**split({"stable": 1, "canary": 0}, hash="none"), "retries": {"attempts": 3, "on": ["connect_failure"]}}
    svc = await canary_service(gateway, consul, upstreams, policy=policy, stable=1)
    # A second stable instance that is registered and passing but refuses connections.
    await consul.register(
        svc.name, free_port(), service_id=f"{svc.name}-stable-dead", tags=["gw.route=/"], meta={"version": "v1"}
    )
    await wait_for(lambda: routed(gateway, svc.name, 3))
    replies = await fetch_many(http, f"{gateway.url}/a", [None] * 40)
    assert {(r.status, r.upstream) for r in replies} == {(200, "stable-1")}  # retried on stable, never the canary
    retried = await metric_value(http, gateway.admin_url, "consulgw_retries_total", service=svc.name)
    assert retried is not None
    assert retried >= 10
