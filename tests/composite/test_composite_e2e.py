"""Composite routes end to end: a real gateway, three real services, a JWT; what each service received is checked."""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
from multidict import CIMultiDict

from tests.composite.conftest import BRIEF, Dashboard, bearer, echo_json
from tests.policy_e2e.conftest import admin_routes, metric_value, wait_for
from tests.support.origin import Reply


async def call(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, CIMultiDict[str], Any]:
    async with http.get(url, headers=headers or {}) as resp:
        data = await resp.read()
        return resp.status, CIMultiDict(resp.headers), json.loads(data) if data else None


async def test_the_three_service_dashboard_answers_the_nested_document(
    dashboard: Dashboard, http: aiohttp.ClientSession
) -> None:
    await dashboard.put("user-dashboard", BRIEF)
    headers = {**bearer("u-42"), "Accept-Language": "fr"}
    status, answer_headers, body = await call(http, f"{dashboard.gateway.url}/api/user-dashboard?user=u 42", headers)
    assert status == 200, body
    assert body == {
        "user": {"path": "/users/u-42", "user": "u-42", "lang": "fr"},
        "orders": {"path": "/orders?user=u-42&limit=5", "user": "u-42", "lang": "fr"},
        "notifications": {"path": "/notifications?user=u%2042", "user": "u-42", "lang": "fr"},
    }
    assert list(body) == ["user", "orders", "notifications"]  # declaration order
    assert answer_headers["Content-Type"] == "application/json"
    assert "X-Gateway-Partial" not in answer_headers
    assert "X-Request-ID" in answer_headers
    for origin in (dashboard.users, dashboard.orders, dashboard.notifications):
        seen = origin.requests[-1]
        assert seen.method == "GET"
        assert "authorization" not in seen.headers  # the credential stays at the gateway
        assert seen.headers["x-request-id"] == answer_headers["X-Request-ID"]
        assert seen.headers["x-forwarded-for"] == "127.0.0.1"


async def test_path_values_are_encoded_and_cannot_leave_their_segment(
    dashboard: Dashboard, http: aiohttp.ClientSession
) -> None:
    await dashboard.put("user-dashboard", BRIEF)
    status, _, body = await call(http, f"{dashboard.gateway.url}/api/user-dashboard?user=x", bearer("../admin?x=1"))
    assert status == 200
    assert body["user"]["path"] == "/users/..%2Fadmin%3Fx%3D1"
    status, _, body = await call(http, f"{dashboard.gateway.url}/api/user-dashboard?user=..", bearer(".."))
    assert body["user"]["path"] == "/users/%2E%2E"
    assert body["notifications"]["path"] == "/notifications?user=%2E%2E"


async def test_an_optional_service_down_gives_its_default_and_x_gateway_partial(
    dashboard: Dashboard, http: aiohttp.ClientSession
) -> None:
    await dashboard.put("user-dashboard", {**BRIEF, "partial_status": 206})
    await dashboard.notifications.stop()
    status, headers, body = await call(http, f"{dashboard.gateway.url}/api/user-dashboard?user=a", bearer())
    assert status == 206
    assert headers["X-Gateway-Partial"] == "notifications"
    assert body["notifications"] == []
    assert body["user"]["path"] == "/users/u-42"
    failed = await metric_value(
        http,
        dashboard.gateway.admin_url,
        "consulgw_composite_calls_total",
        service="composite:user-dashboard",
        call="notifications",
        outcome="failed",
    )
    assert failed == 1


async def test_an_optional_call_without_a_default_is_left_out(
    dashboard: Dashboard, http: aiohttp.ClientSession
) -> None:
    document = {**BRIEF, "calls": {**BRIEF["calls"], "orders": {"service": "orders", "path": "/orders"}}}
    await dashboard.put("user-dashboard", document)
    dashboard.orders.default = Reply(status=503, body=b'{"down": true}')
    status, headers, body = await call(http, f"{dashboard.gateway.url}/api/user-dashboard?user=a", bearer())
    assert (status, headers["X-Gateway-Partial"]) == (200, "orders")
    assert list(body) == ["user", "notifications"]


async def test_a_required_service_down_answers_502_naming_the_call(
    dashboard: Dashboard, http: aiohttp.ClientSession
) -> None:
    await dashboard.put("user-dashboard", BRIEF)
    await dashboard.users.stop()
    status, _, body = await call(http, f"{dashboard.gateway.url}/api/user-dashboard?user=a", bearer())
    assert status == 502
    assert body["error"] == "composite_call_failed"
    assert "'user'" in body["message"]
    assert "users" in body["message"]


async def test_a_required_call_answering_an_error_fails_the_composite(
    dashboard: Dashboard, http: aiohttp.ClientSession
) -> None:
    await dashboard.put("user-dashboard", BRIEF)
    dashboard.users.default = Reply(status=404, body=b'{"error": "no such user"}')
    status, _, body = await call(http, f"{dashboard.gateway.url}/api/user-dashboard?user=a", bearer())
    assert status == 502
    assert body["message"] == "required call 'user' (users) failed: users answered 404"


async def test_a_slow_call_is_cut_at_its_timeout_and_the_answer_arrives_within_the_deadline(
    dashboard: Dashboard, http: aiohttp.ClientSession
) -> None:
    document = {**BRIEF, "timeout": "2s"}
    document["calls"] = {**BRIEF["calls"], "orders": {**BRIEF["calls"]["orders"], "timeout": "300ms"}}  # type: ignore[dict-item]
    await dashboard.put("user-dashboard", document)
    dashboard.orders.default = Reply(body=echo_json, delay=30)  # far beyond every deadline
    dashboard.notifications.default = Reply(body=echo_json, delay=30)  # cut by the composite's 2 s deadline
    started = time.monotonic()
    status, headers, body = await call(http, f"{dashboard.gateway.url}/api/user-dashboard?user=a", bearer())
    elapsed = time.monotonic() - started
    assert status == 200
    assert headers["X-Gateway-Partial"] == "orders, notifications"
    assert (body["orders"], body["notifications"]) == ([], [])
    assert elapsed < 10  # nowhere near the 30 s the services would take (generous: a loaded shared machine)
    timeouts = await metric_value(
        http,
        dashboard.gateway.admin_url,
        "consulgw_composite_calls_total",
        service="composite:user-dashboard",
        call="orders",
        outcome="timeout",
    )
    assert timeouts == 1


async def test_the_composites_jwt_is_enforced_once_and_the_identity_reaches_every_call(
    dashboard: Dashboard, http: aiohttp.ClientSession
) -> None:
    # The services' own client-facing policies (an API key each) do not apply to the composite's calls.
    for service in ("users", "orders", "notifications"):
        await dashboard.consul.kv_put(f"consulgw/services/{service}", json.dumps({"auth": {"type": "api_key"}}))
    await wait_for(
        lambda: all(
            dashboard.gateway.view().services[s].policy.auth is not None for s in ("users", "orders", "notifications")
        )
    )  # type: ignore[union-attr]
    await dashboard.put("user-dashboard", BRIEF)
    url = f"{dashboard.gateway.url}/api/user-dashboard?user=a"
    status, headers, _ = await call(http, url)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")
    status, _, _ = await call(http, url, {"Authorization": "Bearer not-a-token"})
    assert status == 401
    assert sum(o.count() for o in (dashboard.users, dashboard.orders, dashboard.notifications)) == 0
    status, _, _body = await call(http, url, {**bearer("alice"), "X-User-ID": "mallory"})
    assert status == 200
    for origin in (dashboard.users, dashboard.orders, dashboard.notifications):
        assert origin.count() == 1
        assert origin.requests[-1].headers["x-user-id"] == "alice"
    # Directly, the services still ask for their API key.
    status, _, _ = await call(http, f"{dashboard.gateway.url}/users/alice")
    assert status == 401


async def test_a_missing_query_value_of_a_required_call_is_a_400(
    dashboard: Dashboard, http: aiohttp.ClientSession
) -> None:
    calls = {**BRIEF["calls"], "user": {"service": "users", "path": "/users/{query.id}", "required": True}}
    await dashboard.put("user-dashboard", {**BRIEF, "calls": calls})
    status, _, body = await call(http, f"{dashboard.gateway.url}/api/user-dashboard?user=a", bearer())
    assert status == 400
    assert body["message"] == "composite call 'user' needs {query.id}, which the request lacks"
    status, headers, body = await call(http, f"{dashboard.gateway.url}/api/user-dashboard?id=7", bearer())
    assert status == 200
    assert headers["X-Gateway-Partial"] == "notifications"  # optional and without its {query.user}: its default
    assert body["user"]["path"] == "/users/7"


async def test_shallow_merge_keeps_the_first_call_s_key_and_reports_collisions(
    dashboard: Dashboard, http: aiohttp.ClientSession
) -> None:
    dashboard.users.default = Reply(body=b'{"id": 1, "name": "Ann"}')
    dashboard.orders.default = Reply(body=b'{"id": 99, "orders": [1, 2]}')
    document = {
        "route": "/api/profile",
        "merge": "shallow",
        "calls": {
            "user": {"service": "users", "path": "/users/1", "required": True},
            "orders": {"service": "orders", "path": "/orders", "default": {}},
        },
    }
    await dashboard.put("profile", document)
    status, headers, body = await call(http, f"{dashboard.gateway.url}/api/profile")
    assert status == 200
    assert body == {"id": 1, "name": "Ann", "orders": [1, 2]}
    assert headers["X-Gateway-Collisions"] == "orders"
    collisions = await metric_value(
        http, dashboard.gateway.admin_url, "consulgw_composite_collisions_total", service="composite:profile"
    )
    assert collisions == 1


async def test_calls_go_through_the_target_services_retries_and_pool(
    dashboard: Dashboard, http: aiohttp.ClientSession, origins: Any
) -> None:
    await dashboard.consul.kv_put(
        "consulgw/services/users", json.dumps({"retries": {"attempts": 2, "on": ["connect_failure"]}})
    )
    dead = await origins("users-dead")
    await dead.stop()
    await dashboard.consul.register("users", dead.port, service_id="users-dead", tags=["gw.route=/users"])
    await wait_for(lambda: len(dashboard.gateway.view().services["users"].snapshot.instances) == 2)  # type: ignore[union-attr]
    await dashboard.put("user-dashboard", BRIEF)
    for _ in range(6):  # round-robin sends some first attempts to the dead instance: the retry saves them
        status, _, body = await call(http, f"{dashboard.gateway.url}/api/user-dashboard?user=a", bearer())
        assert status == 200, body


async def test_composite_routes_join_the_route_table_and_admin_routes(
    dashboard: Dashboard, http: aiohttp.ClientSession
) -> None:
    await dashboard.put("user-dashboard", BRIEF)
    await dashboard.put("orders-clash", {"route": "/orders", "calls": {"o": {"service": "orders", "path": "/orders"}}})
    routes = await admin_routes(http, dashboard.gateway.admin_url)
    mine = [r for r in routes["routes"] if r["service"] == "composite:user-dashboard"]
    assert mine == [
        {
            "route": "*/api/user-dashboard",
            "service": "composite:user-dashboard",
            "host": None,
            "prefix": "/api/user-dashboard",
            "strip": None,
            "methods": ["GET", "HEAD"],
            "tag": "consulgw/composites/user-dashboard",
            "lb": None,
        }
    ]
    assert routes["composites"]["user-dashboard"]["calls"][0] == {
        "name": "user",
        "service": "users",
        "path": "/users/{sub}",
        "required": True,
        "timeout": None,
        "default": None,
    }
    # The composite on /orders conflicts with the orders service: "composite:orders-clash" < "orders" wins.
    assert {"host": None, "prefix": "/orders", "winner": "composite:orders-clash", "losers": ["orders"]} in routes[
        "conflicts"
    ]
    status, _, _ = await call(http, f"{dashboard.gateway.url}/api/user-dashboard?user=a")
    assert status == 401
    async with http.post(f"{dashboard.gateway.url}/api/user-dashboard", headers=bearer()) as resp:
        assert resp.status == 405  # the route is GET and HEAD only
        assert resp.headers["Allow"] == "GET, HEAD"


async def test_an_invalid_composite_is_refused_with_key_path_and_value_and_the_previous_one_kept(
    dashboard: Dashboard, http: aiohttp.ClientSession
) -> None:
    await dashboard.put("user-dashboard", BRIEF)
    bad = {**BRIEF, "calls": {**BRIEF["calls"], "orders": {"service": "orders", "path": "orders?user={sub}"}}}
    await dashboard.consul.kv_put("consulgw/composites/user-dashboard", json.dumps(bad))
    await wait_for(lambda: "composites/user-dashboard" in dashboard.gateway.view().book.errors)  # type: ignore[union-attr]
    reason = dashboard.gateway.view().book.errors["composites/user-dashboard"]  # type: ignore[union-attr]
    assert reason == (
        "consulgw/composites/user-dashboard: calls.orders.path: 'orders?user={sub}' must start with '/' "
        "(a path on the service, with an optional ?query)"
    )
    status, _, body = await call(http, f"{dashboard.gateway.url}/api/user-dashboard?user=a", bearer())
    assert status == 200
    assert body["orders"]["path"] == "/orders?user=u-42&limit=5"  # the previous document still runs
    rejected = await metric_value(
        http, dashboard.gateway.admin_url, "consulgw_policy_rejected", key="composites/user-dashboard"
    )
    assert rejected == 1


async def test_a_cached_composite_answers_again_without_calling_its_services(
    dashboard: Dashboard, http: aiohttp.ClientSession
) -> None:
    await dashboard.put("user-dashboard", {**BRIEF, "cache": {"ttl": "60s", "key": {"per_consumer": True}}})
    url = f"{dashboard.gateway.url}/api/user-dashboard?user=a"
    status, headers, first = await call(http, url, bearer("ann"))
    assert (status, headers["Cache-Status"]) == (200, "consulgw; fwd=miss")

    async def hit() -> bool:
        status, headers, body = await call(http, url, bearer("ann"))
        assert (status, body) == (200, first)
        return headers["Cache-Status"].startswith("consulgw; hit")

    await wait_for(hit)
    assert dashboard.users.count() == 1
    status, headers, body = await call(http, url, bearer("bob"))  # another caller: never ann's document
    assert headers["Cache-Status"] == "consulgw; fwd=miss"
    assert body["user"]["path"] == "/users/bob"
