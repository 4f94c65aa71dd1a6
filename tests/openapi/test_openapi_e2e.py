"""One OpenAPI document for all routes, end to end: dev agent, three real services, the real gateway.

The three services publish their own documents (two through Service Meta ``gw-openapi``, one through the
``openapi`` policy section) and are routed with different strips, hosts and method filters. The merged document
must be valid OpenAPI (openapi-spec-validator), list exactly the operations the gateway routes, and every one of
them, called through the gateway as documented (host, path, credentials), must reach its service at the path the
service documented. A service whose document becomes unreachable or invalid keeps its last good one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web

from consulgw.server.gateway import Gateway
from tests.gateway.conftest import Consul, Upstream, wait_for

from .support import doc, op, valid

SECRET = "openapi-e2e-secret-0123456789abcdef"
API_KEY = "shop-client-key-0123456789"
ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}

USERS = doc(
    {
        "/users": {"get": op("listUsers"), "post": op("addUser")},
        "/users/{id}": {"get": op("getUser", parameters=[ID])},
        "/internal/stats": {"get": op("stats")},
    },
    servers=[{"url": "http://10.1.2.3:8080"}],
    components={
        "schemas": {"User": {"type": "object", "properties": {"id": {"type": "string"}}}},
        "securitySchemes": {"theirs": {"type": "http", "scheme": "basic"}},
    },
    security=[{"theirs": []}],
)
ORDERS = doc(
    {
        "/orders": {
            "get": op("listOrders", responses={"200": {"description": "ok", "content": {"application/json": {
                "schema": {"type": "array", "items": {"$ref": "#/components/schemas/Order"}}}}}}),
            "post": op("addOrder"),
            "delete": op("purgeOrders"),
        },
        "/orders/{id}": {"get": op("getOrder", parameters=[ID])},
    },
    version="3.0.3",
    servers=[{"url": "/v1"}],
    components={"schemas": {
        "Order": {"type": "object", "properties": {"user": {"$ref": "#/components/schemas/User"},
                                                   "note": {"type": "string", "nullable": True}}},
        "User": {"type": "object", "properties": {"name": {"type": "string"}}},
    }},
)  # fmt: skip
BILLING = doc(
    {
        "/invoices": {"get": op("listInvoices")},
        "/invoices/{id}": {"get": op("getInvoice", parameters=[ID])},
        "/health": {"get": op("health")},
    }
)

# (method, client path, host or None) -> (service, upstream path): what the gateway routes, worked out by hand.
EXPECTED = {
    ("GET", "/api/users", None): ("users", "/users"),
    ("POST", "/api/users", None): ("users", "/users"),
    ("GET", "/api/users/{id}", None): ("users", "/users/{id}"),
    ("GET", "/v1/orders", "shop.example.com"): ("orders", "/v1/orders"),
    ("POST", "/v1/orders", "shop.example.com"): ("orders", "/v1/orders"),
    ("GET", "/v1/orders/{id}", "shop.example.com"): ("orders", "/v1/orders/{id}"),
    ("GET", "/billing/invoices", None): ("billing", "/invoices"),
    ("GET", "/billing/invoices/{id}", None): ("billing", "/invoices/{id}"),
    ("GET", "/billing/health", None): ("billing", "/health"),
    ("GET", "/invoices", "*.pay.example.com"): ("billing", "/invoices"),
    ("GET", "/invoices/{id}", "*.pay.example.com"): ("billing", "/invoices/{id}"),
}


class Documents:
    """What each upstream answers at its document path: the document, or a failure a test switches on."""

    def __init__(self) -> None:
        self.by_service: dict[str, Any] = {"users": USERS, "orders": ORDERS, "billing": BILLING}
        self.fetches: dict[str, int] = {}

    def routes(self, service: str, path: str) -> Callable[[web.Application], None]:
        async def serve(_: web.Request) -> web.StreamResponse:
            self.fetches[service] = self.fetches.get(service, 0) + 1
            current = self.by_service[service]
            if isinstance(current, int):
                return web.Response(status=current)
            if isinstance(current, str):
                return web.Response(text=current, content_type="application/json")
            return web.json_response(current)

        def add(app: web.Application) -> None:
            app.router.add_get(path, serve)

        return add


async def json_of(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as resp:
        assert resp.status == 200, (url, resp.status, await resp.text())
        return json.loads(await resp.read())


def credentials(service: str) -> dict[str, str]:
    if service == "users":
        token = jwt.encode({"sub": "alice", "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")
        return {"Authorization": f"Bearer {token}"}
    if service == "orders":
        return {"X-API-Key": API_KEY}
    return {}


def host_of(operation: dict[str, Any]) -> str | None:
    servers = operation.get("servers")
    if not servers:
        return None
    [server] = servers
    url = server["url"].replace("{scheme}://", "")
    return None if url == "{authority}" else url.replace("{subdomain}", "*")


@pytest.fixture
async def three_services(
    consul: Consul, upstreams: Callable[..., Awaitable[Upstream]]
) -> tuple[Documents, dict[str, Upstream]]:
    docs = Documents()
    users = await upstreams("users", extra_routes=docs.routes("users", "/openapi.json"))
    orders = await upstreams("orders", extra_routes=docs.routes("orders", "/api-docs"))
    billing = await upstreams("billing", extra_routes=docs.routes("billing", "/docs/openapi.json"))
    await consul.kv_put(
        "consulgw/services/users",
        json.dumps({"auth": {"type": "jwt", "algorithms": ["HS256"], "secret": SECRET}, "openapi": {"refresh": "1s"}}),
    )
    await consul.kv_put("consulgw/services/orders", json.dumps({"auth": {"type": "api_key"}}))
    await consul.kv_put(
        "consulgw/consumers/shop-client", json.dumps({"api_key_sha256": [hashlib.sha256(API_KEY.encode()).hexdigest()]})
    )
    await consul.kv_put(
        "consulgw/services/billing", json.dumps({"openapi": {"path": "/docs/openapi.json", "refresh": "1s"}})
    )
    await consul.register(
        "users", users.port, tags=["gw.route=/api/users strip=/api"], meta={"gw-openapi": "/openapi.json"}
    )
    await consul.register(
        "orders",
        orders.port,
        tags=["gw.route=shop.example.com/v1/orders methods=GET,POST"],
        meta={"gw-openapi": "/api-docs"},
    )
    await consul.register(
        "billing", billing.port, tags=["gw.route=/billing strip=/billing", "gw.route=*.pay.example.com/invoices"]
    )
    return docs, {"users": users, "orders": orders, "billing": billing}


async def serving(http: aiohttp.ClientSession, gateway: Gateway, *services: str) -> dict[str, Any]:
    routes = await json_of(http, f"{gateway.admin_url}/-/routes")
    return {name: routes["services"].get(name, {}).get("openapi") for name in services}


async def test_three_services_one_valid_document_with_exactly_the_routed_paths(
    gateway_factory: Callable[..., Awaitable[Gateway]],
    three_services: tuple[Documents, dict[str, Upstream]],
    http: aiohttp.ClientSession,
) -> None:
    _, upstreams = three_services
    gateway = await gateway_factory()

    async def all_served() -> bool:
        states = await serving(http, gateway, "users", "orders", "billing")
        return all(s is not None and s["serving"] for s in states.values())

    await wait_for(all_served, timeout=20)
    merged = valid(await json_of(http, f"{gateway.admin_url}/-/openapi.json"))
    assert merged["openapi"] == "3.1.0"

    documented: dict[tuple[str, str, str | None], dict[str, Any]] = {}
    for path, item in merged["paths"].items():
        for method, operation in item.items():
            documented[(method.upper(), path, host_of(operation))] = operation
    assert set(documented) == set(EXPECTED)

    # Each documented operation, called as documented, reaches the right service at the documented path.
    for (method, path, host), (service, upstream_path) in EXPECTED.items():
        headers = credentials(service)
        if host is not None:
            headers["Host"] = host.replace("*", "api")
        url = gateway.url + path.replace("{id}", "7")
        async with http.request(method, url, headers=headers) as resp:
            body = await resp.read()
            assert resp.status == 200, (method, path, resp.status, body)
            assert resp.headers["X-Upstream"] == service
            assert json.loads(body)["raw_path"] == upstream_path.replace("{id}", "7")

    # The gateway's auth replaced the services' own; names are per service.
    schemes = merged["components"]["securitySchemes"]
    assert schemes == {
        "users.jwt": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": "A JWT, verified by the gateway."},
        "orders.api_key": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "An API key of a consumer."},
    }  # fmt: skip
    assert documented[("GET", "/api/users", None)]["security"] == [{"users.jwt": []}]
    assert "security" not in documented[("GET", "/billing/health", None)]
    assert sorted(merged["components"]["schemas"]) == ["orders.Order", "orders.User", "users.User"]
    order = merged["components"]["schemas"]["orders.Order"]["properties"]
    assert order["user"] == {"$ref": "#/components/schemas/orders.User"}
    assert order["note"] == {"type": ["string", "null"]}
    ids = [op["operationId"] for op in documented.values()]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"(users|orders|billing)\.\w+", i) for i in ids)

    # /-/routes says what was dropped, per service.
    states = await serving(http, gateway, "users", "orders", "billing")
    assert states["users"]["unrouted_operations"] == ["GET /internal/stats"]
    assert states["orders"]["unrouted_operations"] == ["DELETE /v1/orders"]
    assert (states["billing"]["unrouted"], states["billing"]["source"]) == (0, "policy")
    assert (states["users"]["operations"], states["users"]["exposed"], states["users"]["state"]) == (4, 3, "ok")

    # One service's document on its own.
    orders = valid(await json_of(http, f"{gateway.admin_url}/-/openapi/orders.json"))
    assert set(orders["paths"]) == {"/v1/orders", "/v1/orders/{id}"}
    async with http.get(f"{gateway.admin_url}/-/openapi/nobody.json") as resp:
        assert resp.status == 404
    assert upstreams  # every service really answered above


async def test_a_failing_document_keeps_the_last_good_one(
    gateway_factory: Callable[..., Awaitable[Gateway]],
    three_services: tuple[Documents, dict[str, Upstream]],
    http: aiohttp.ClientSession,
) -> None:
    docs, upstreams = three_services
    gateway = await gateway_factory()

    async def billing_served() -> bool:
        state = (await serving(http, gateway, "billing"))["billing"]
        return state is not None and state["serving"] is True

    await wait_for(billing_served, timeout=20)
    before = await json_of(http, f"{gateway.admin_url}/-/openapi/billing.json")
    billing_paths = set(before["paths"])

    async def billing_state(expected: str, error_part: str) -> bool:
        state = (await serving(http, gateway, "billing"))["billing"]
        return state["state"] == expected and error_part in (state["error"] or "")

    # Invalid JSON, then a document that is not OpenAPI, then HTTP 500: each keeps the last good document.
    for failure, error in (
        ('{"openapi": ', "not valid JSON"),
        ('{"swagger": "2.0"}', "Swagger 2.0"),
        (500, "HTTP 500"),
    ):
        docs.by_service["billing"] = failure
        await wait_for(lambda error=error: billing_state("error", error), timeout=20)
        after = valid(await json_of(http, f"{gateway.admin_url}/-/openapi.json"))
        assert billing_paths <= set(after["paths"])

    # The instance goes away entirely (its Consul check still passes): still the last good document.
    await upstreams["billing"].stop()
    await wait_for(lambda: billing_state("error", "GET http://127.0.0.1:"), timeout=20)
    assert (await json_of(http, f"{gateway.admin_url}/-/openapi/billing.json")) == before
    state = (await serving(http, gateway, "billing"))["billing"]
    assert state["serving"] is True
    assert state["fetched_at"] is not None


async def test_limits_and_route_changes(
    gateway_factory: Callable[..., Awaitable[Gateway]],
    consul: Consul,
    upstreams: Callable[..., Awaitable[Upstream]],
    http: aiohttp.ClientSession,
) -> None:
    big = doc({f"/things/n{i:04d}": {"get": op(f"thing{i}")} for i in range(40)})  # about 3 KiB
    slow_paths = {"/slow": {"get": op("slow")}}

    def serve(document: dict[str, Any], delay: float = 0.0) -> Callable[[web.Application], None]:
        async def handler(_: web.Request) -> web.Response:
            await asyncio.sleep(delay)
            return web.json_response(document)

        return lambda app: app.router.add_get("/openapi.json", handler)

    meta = {"gw-openapi": "/openapi.json"}
    large = await upstreams("large", extra_routes=serve(big))
    slow = await upstreams("slow", extra_routes=serve(doc(slow_paths), delay=5.0))
    moving = await upstreams("moving", extra_routes=serve(BILLING))
    await consul.kv_put("consulgw/services/large", json.dumps({"openapi": {"max_bytes": 1024}}))
    await consul.kv_put("consulgw/services/slow", json.dumps({"openapi": {"timeout": "300ms"}}))
    await consul.register("large", large.port, tags=["gw.route=/things"], meta=meta)
    await consul.register("slow", slow.port, tags=["gw.route=/slow"], meta=meta)
    await consul.register("moving", moving.port, service_id="moving-1", tags=["gw.route=/v1 strip=/v1"], meta=meta)
    await consul.kv_put("consulgw/services/hidden", json.dumps({"openapi": {"include": False}}))
    await consul.register("hidden", moving.port, tags=["gw.route=/hidden"], meta=meta)
    gateway = await gateway_factory()

    async def settled() -> bool:
        states = await serving(http, gateway, "large", "slow", "moving")
        return (
            states["moving"] is not None
            and states["moving"]["serving"]
            and all(states[s] is not None and states[s]["state"] == "error" for s in ("large", "slow"))
        )

    await wait_for(settled, timeout=20)
    states = await serving(http, gateway, "large", "slow")
    assert "larger than max_bytes (1024)" in states["large"]["error"]
    assert "no complete answer within 0.3s" in states["slow"]["error"]
    assert not states["large"]["serving"]
    assert (await serving(http, gateway, "hidden"))["hidden"] is None  # include: false, despite its Meta
    merged = valid(await json_of(http, f"{gateway.admin_url}/-/openapi.json"))
    assert set(merged["paths"]) == {"/v1/invoices", "/v1/invoices/{id}", "/v1/health"}

    # The route changes (new strip): the document follows the route table, without a new fetch being needed.
    await consul.register("moving", moving.port, service_id="moving-1", tags=["gw.route=/v2 strip=/v2"], meta=meta)

    async def moved() -> bool:
        paths = set((await json_of(http, f"{gateway.admin_url}/-/openapi.json"))["paths"])
        return paths == {"/v2/invoices", "/v2/invoices/{id}", "/v2/health"}

    await wait_for(moved, timeout=20)
