"""The demo: a dev agent, five self-registering services with different balancing and policies, the gateway.

Everything printed by ``consulgw demo`` comes from ``demo_steps``, which the test-suite runs line by line, so the
printed ``curl`` lines always give the answers they promise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web

DEMO_JWT_SECRET = "consulgw-demo-secret-at-least-32-bytes"
DEMO_ISSUER = "consulgw-demo"

POLICIES: dict[str, dict[str, object]] = {
    "orders": {
        "auth": {
            "type": "jwt",
            "algorithms": ["HS256"],
            "secret": DEMO_JWT_SECRET,
            "issuer": DEMO_ISSUER,
            "required_scopes": ["orders:read"],
        }
    },
    "search": {"rate_limit": {"requests": 5, "per": "30s", "key": "ip"}},
    "products": {"cache": {"ttl": "30s"}},
    "notifications": {"transform": {"response": {"json": {"remove": ["headers"], "set": {"served_by": "consulgw"}}}}},
    # A canary: 10% of visitors (each keeps its subset through its gw_split cookie), and everyone who asks for it.
    "catalog": {
        "subsets": {"stable": {"meta": {"version": "v1"}}, "canary": {"meta": {"version": "v2"}}},
        "split": {
            "default": "stable",
            "weights": {"stable": 90, "canary": 10},
            "match": [{"header": {"X-Canary": "always"}, "to": "canary"}],
            "response_header": True,
        },
    },
    # Sticky sessions over plain HTTP (a Secure cookie would never come back from curl or a browser).
    "cart": {"sticky": {"secure": False}},
}
# consulgw/composites/<name>: routes the gateway answers by calling several services at once.
COMPOSITES: dict[str, dict[str, object]] = {
    "user-dashboard": {
        "route": "/api/user-dashboard",
        "methods": ["GET"],
        "auth": {"type": "jwt", "algorithms": ["HS256"], "secret": DEMO_JWT_SECRET, "issuer": DEMO_ISSUER},
        "timeout": "800ms",
        "calls": {
            "user": {"service": "users", "path": "/users/{sub}", "required": True},
            "orders": {"service": "orders", "path": "/orders?user={sub}&limit=5", "timeout": "500ms", "default": []},
            "notifications": {"service": "notifications", "path": "/notifications?user={sub}&unread=1", "default": []},
        },
        "merge": "nest",
        "forward_headers": ["Accept-Language"],
    }
}


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoInstance:
    service: str
    instance: str
    tags: tuple[str, ...]
    weight: int = 1
    meta: tuple[tuple[str, str], ...] = ()


INSTANCES = (
    DemoInstance(service="users", instance="users-1", tags=("gw.route=/users",), weight=1),
    DemoInstance(service="users", instance="users-2", tags=("gw.route=/users",), weight=3),
    DemoInstance(service="orders", instance="orders-1", tags=("gw.route=/orders", "gw.lb=least_conn")),
    DemoInstance(service="orders", instance="orders-2", tags=("gw.route=/orders", "gw.lb=least_conn")),
    DemoInstance(service="search", instance="search-1", tags=("gw.route=/search", "gw.lb=ip_hash")),
    DemoInstance(service="search", instance="search-2", tags=("gw.route=/search", "gw.lb=ip_hash")),
    DemoInstance(service="products", instance="products-1", tags=("gw.route=/products",)),
    DemoInstance(service="notifications", instance="notifications-1", tags=("gw.route=/notifications",)),
    DemoInstance(service="catalog", instance="catalog-v1", tags=("gw.route=/catalog",), meta=(("version", "v1"),)),
    DemoInstance(service="catalog", instance="catalog-v2", tags=("gw.route=/catalog",), meta=(("version", "v2"),)),
    DemoInstance(service="cart", instance="cart-1", tags=("gw.route=/cart",)),
    DemoInstance(service="cart", instance="cart-2", tags=("gw.route=/cart",)),
)


# Multi-datacenter failover (``consulgw demo`` only: it runs a second dev agent as datacenter dc2, federated with
# --wan-peer): inventory's dc1 instance is in maintenance, so dc2's instance serves it.
FAILOVER_SERVICE = "inventory"
FAILOVER_POLICY: dict[str, object] = {
    "failover": {"datacenters": ["dc2"], "failback_after": "5s", "response_header": True}
}
FAILOVER_INSTANCES = (
    DemoInstance(service=FAILOVER_SERVICE, instance="inventory-dc1", tags=("gw.route=/inventory",)),
    DemoInstance(service=FAILOVER_SERVICE, instance="inventory-dc2", tags=("gw.route=/inventory",)),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoStep:
    """One thing to try: what it shows, the shell line, and the answer it gives (checked by the tests)."""

    title: str
    command: str
    expect: str  # the HTTP status codes printed, space-separated, or a substring of the output


def mint_token_command() -> str:
    claims = f'{{"sub": "demo-user", "iss": "{DEMO_ISSUER}", "scope": "orders:read", "exp": int(time.time()) + 3600}}'
    return (
        "TOKEN=$(.venv/bin/python -c 'import jwt, time; "
        f'print(jwt.encode({claims}, "{DEMO_JWT_SECRET}", algorithm="HS256"))\')'
    )


def demo_steps(gateway: int, admin: int, consul: int) -> tuple[DemoStep, ...]:
    gw = f"http://127.0.0.1:{gateway}"
    code = "curl -s -o /dev/null -w '%{http_code}\\n'"
    subset = "curl -s -o /dev/null -D -"  # then the URL, then: | grep -i '^x-gateway-subset'
    instance = ".venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)[\"instance\"])'"
    return (
        DemoStep(
            title="Weighted round-robin (users-2 has Weights.Passing=3): 8 requests, about 6 go to users-2",
            command=f"for i in $(seq 8); do curl -s {gw}/users/42 | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)[\"instance\"])'; done | sort | uniq -c",
            expect="users-2",
        ),
        DemoStep(title="No route: a JSON error", command=f"curl -s {gw}/nope", expect='"error": "no_route"'),
        DemoStep(title="orders needs a JWT: without one, 401", command=f"{code} {gw}/orders/7", expect="401"),
        DemoStep(title="Mint a demo token (HS256, scope orders:read)", command=mint_token_command(), expect=""),
        DemoStep(
            title="With the token: 200, and the service sees who you are (X-User-ID)",
            command=f'curl -s -H "Authorization: Bearer $TOKEN" {gw}/orders/7',
            expect='"x-user-id": "demo-user"',
        ),
        DemoStep(
            title="One call, three services in parallel (composite route): one JWT check, X-User-ID for each service",
            command=f'curl -s -H "Authorization: Bearer $TOKEN" {gw}/api/user-dashboard | .venv/bin/python -c '
            '\'import json,sys; d=json.load(sys.stdin); print(list(d), d["user"]["headers"]["x-user-id"])\'',
            expect="['user', 'orders', 'notifications'] demo-user",
        ),
        DemoStep(
            title="products is cached for 30s: the second answer comes from the gateway (Cache-Status, Age)",
            command=f"for i in 1 2; do curl -s -D - -o /dev/null {gw}/products/items | grep -i '^cache-status'; done",
            expect="Cache-Status: consulgw; hit; ttl=",
        ),
        DemoStep(
            title="notifications answers are transformed: the echoed headers removed, a field added",
            command=f"curl -s {gw}/notifications/latest",
            expect='"served_by":"consulgw"',
        ),
        DemoStep(
            title="search is limited to 5 requests per 30s per client IP: the 6th and 7th get 429",
            command=f"for i in $(seq 7); do {code} {gw}/search?q=consul; done | tr '\\n' ' '; echo",
            expect="200 200 200 200 200 429 429",
        ),
        DemoStep(
            title="Rate-limit headers on every answer",
            command=f"curl -s -D - -o /dev/null {gw}/search?q=x | grep -i '^ratelimit-limit'",
            expect="RateLimit-Limit: 5",
        ),
        DemoStep(
            title="Change policy live through Consul KV: lift the limit to 100 per 30s",
            command=f'curl -s -X PUT --data \'{{"rate_limit": {{"requests": 100, "per": "30s"}}}}\' '
            f"http://127.0.0.1:{consul}/v1/kv/consulgw/services/search && sleep 1 && {code} {gw}/search?q=x",
            expect="200",
        ),
        DemoStep(
            title="catalog runs a canary (Meta version=v2) at 10%: of 100 new visitors, about 10 get the canary",
            command=f"for i in $(seq 100); do {subset} {gw}/catalog/items | grep -i '^x-gateway-subset'; done "
            "| tr -d '\\r' | sort | uniq -c",
            expect="X-Gateway-Subset: stable",
        ),
        DemoStep(
            title="The header X-Canary: always always reaches the canary",
            command=f"curl -s -H 'X-Canary: always' {gw}/catalog/items | {instance}",
            expect="catalog-v2",
        ),
        DemoStep(
            title="A visitor keeps its subset: its gw_split cookie (in a cookie jar) decides, 5 times out of 5",
            command=f"JAR=$(mktemp) && for i in $(seq 5); do {subset} -b $JAR -c $JAR {gw}/catalog/items "
            "| grep -i '^x-gateway-subset'; done | tr -d '\\r' | uniq -c",
            expect="5 X-Gateway-Subset: ",
        ),
        DemoStep(
            title="cart is sticky: with its gw_sticky cookie, 6 requests stay on one instance (round-robin alternates)",
            command=f"JAR=$(mktemp) && for i in $(seq 6); do curl -s -b $JAR -c $JAR {gw}/cart | {instance}; done "
            "| uniq -c",
            expect="6 cart-",
        ),
        DemoStep(
            title="inventory fails over to datacenter dc2 (its dc1 instance is in maintenance): who served it",
            command=f"curl -s -D - -o /dev/null {gw}/inventory/items | grep -i '^x-gateway-datacenter'",
            expect="X-Gateway-Datacenter: dc2",
        ),
        DemoStep(
            title="What the gateway thinks (routes, instances, health, weights)",
            command=f"curl -s http://127.0.0.1:{admin}/-/routes | .venv/bin/python -m json.tool | head -40",
            expect='"routes"',
        ),
        DemoStep(
            title="The dev agent speaks Consul's HTTP API",
            command=f"curl -s http://127.0.0.1:{consul}/v1/catalog/services",
            expect='"users"',
        ),
    )


def demo_app(instance: DemoInstance) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "service": instance.service,
                "instance": instance.instance,
                "path": request.path,
                "headers": {k.lower(): v for k, v in request.headers.items()},
            },
            dumps=lambda value: json.dumps(value, indent=1),
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


@contextlib.asynccontextmanager
async def failover_services(session: aiohttp.ClientSession, dc1_url: str, dc2_url: str) -> AsyncIterator[list[str]]:
    """inventory in both datacenters (no checks: passing), its dc1 instance put in maintenance, and its failover
    policy in dc1's KV."""
    runners: list[web.AppRunner] = []
    registered: list[tuple[str, str]] = []  # (agent URL, service ID)
    try:
        for inst, url in zip(FAILOVER_INSTANCES, (dc1_url, dc2_url), strict=True):
            runner = web.AppRunner(demo_app(inst), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            runners.append(runner)
            port = next(a[1] for a in runner.addresses if isinstance(a, tuple))
            body = {"Name": inst.service, "ID": inst.instance, "Address": "127.0.0.1", "Port": port,
                    "Tags": list(inst.tags)}  # fmt: skip
            async with session.put(f"{url}/v1/agent/service/register", json=body) as resp:
                resp.raise_for_status()
            registered.append((url, inst.instance))
        maintenance = f"{dc1_url}/v1/agent/service/maintenance/{FAILOVER_INSTANCES[0].instance}"
        async with session.put(maintenance, params={"enable": "true", "reason": "demo: failover"}) as resp:
            resp.raise_for_status()
        key = f"{dc1_url}/v1/kv/consulgw/services/{FAILOVER_SERVICE}"
        async with session.put(key, data=json.dumps(FAILOVER_POLICY)) as resp:
            resp.raise_for_status()
        yield [sid for _, sid in registered]
    finally:
        for url, sid in registered:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.put(f"{url}/v1/agent/service/deregister/{sid}") as resp:
                    await resp.read()
        for runner in runners:
            await runner.cleanup()


@contextlib.asynccontextmanager
async def demo_services(session: aiohttp.ClientSession, consul_url: str) -> AsyncIterator[list[str]]:
    """Start every demo instance on an ephemeral port and register it with a TTL check it keeps passing."""
    runners: list[web.AppRunner] = []
    ids: list[str] = []
    heartbeat: asyncio.Task[None] | None = None
    try:
        for inst in INSTANCES:
            runner = web.AppRunner(demo_app(inst), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            runners.append(runner)
            port = next(a[1] for a in runner.addresses if isinstance(a, tuple))
            body = {
                "Name": inst.service,
                "ID": inst.instance,
                "Address": "127.0.0.1",
                "Port": port,
                "Tags": list(inst.tags),
                "Meta": dict(inst.meta),
                "Weights": {"Passing": inst.weight, "Warning": 1},
                "Check": {"CheckID": f"ttl:{inst.instance}", "TTL": "15s", "Status": "passing"},
            }
            async with session.put(f"{consul_url}/v1/agent/service/register", json=body) as resp:
                resp.raise_for_status()
            ids.append(inst.instance)
        for service, policy in POLICIES.items():
            async with session.put(f"{consul_url}/v1/kv/consulgw/services/{service}", data=json.dumps(policy)) as resp:
                resp.raise_for_status()
        for name, composite in COMPOSITES.items():
            async with session.put(
                f"{consul_url}/v1/kv/consulgw/composites/{name}", data=json.dumps(composite)
            ) as resp:
                resp.raise_for_status()

        async def beat() -> None:
            while True:
                await asyncio.sleep(5)
                for sid in ids:
                    with contextlib.suppress(aiohttp.ClientError):
                        async with session.put(f"{consul_url}/v1/agent/check/pass/ttl:{sid}") as resp:
                            await resp.read()

        heartbeat = asyncio.create_task(beat(), name="demo-heartbeat")
        yield ids
    finally:
        if heartbeat is not None:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        for sid in ids:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.put(f"{consul_url}/v1/agent/service/deregister/{sid}") as resp:
                    await resp.read()
        for runner in runners:
            await runner.cleanup()
