"""The admin listener: liveness, readiness, the route table as JSON and Prometheus metrics."""

from __future__ import annotations

from typing import Any

import aiohttp

from .conftest import Consul, routed, wait_for


async def test_health_ready_routes_and_metrics(
    gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession
) -> None:
    up = await upstreams("a")
    await consul.register("users", up.port, tags=["gw.route=/users", "gw.route=/broken strip=nope", "gw.lb=least_conn"])
    await wait_for(lambda: routed(gateway, "users", 1))
    async with http.get(f"{gateway.admin_url}/-/healthy") as resp:
        assert resp.status == 200
    async with http.get(f"{gateway.admin_url}/-/ready") as resp:
        assert resp.status == 200
        assert (await resp.json())["ready"] is True
    async with http.get(f"{gateway.url}/users/1") as resp:
        assert resp.status == 200
    async with http.get(f"{gateway.admin_url}/-/routes") as resp:
        body = await resp.json()
    assert body["consul"]["reachable"] is True
    assert [r["route"] for r in body["routes"]] == ["*/users"]
    svc = body["services"]["users"]
    assert svc["lb"] == "least_conn"
    (instance,) = svc["instances"]
    assert instance["address"] == "127.0.0.1"
    assert instance["port"] == up.port
    assert instance["health"] == "passing"
    assert instance["weight"] == 1
    assert instance["in_flight"] == 0
    assert instance["breaker"] == "closed"
    assert body["route_errors"][0]["tag"] == "gw.route=/broken strip=nope"
    assert "strip" in body["route_errors"][0]["reason"]
    async with http.get(f"{gateway.admin_url}/metrics") as resp:
        text = await resp.text()
    assert 'consulgw_requests_total{route="*/users",service="users",status_class="2xx"} 1.0' in text
    assert "consulgw_request_duration_seconds_bucket" in text
    assert 'consulgw_pool_instances{service="users",state="in_pool"} 1.0' in text
    assert 'consulgw_route_errors{service="users"} 1.0' in text
    assert "consulgw_consul_sync_age_seconds 0.0" in text
    [tasks] = [line for line in text.splitlines() if line.startswith("consulgw_event_loop_tasks ")]
    assert float(tasks.split()[1]) >= 3  # this scrape's handler, the watcher, the view builder at least
    assert "/users/1" not in text  # never raw paths as labels


async def test_not_ready_before_consul_is_loaded(dev_agent: Any, http: aiohttp.ClientSession) -> None:
    # Point at a port where nothing listens: the gateway is alive but never ready.
    import socket

    from consulgw.server.gateway import Gateway

    from .conftest import gateway_settings_for

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    gateway = Gateway(gateway_settings_for(f"http://127.0.0.1:{dead}"), consul_wait=5.0)
    await gateway.start()
    try:
        async with http.get(f"{gateway.admin_url}/-/healthy") as resp:
            assert resp.status == 200
        async with http.get(f"{gateway.admin_url}/-/ready") as resp:
            assert resp.status == 503
            assert (await resp.json())["ready"] is False
        async with http.get(f"{gateway.url}/anything") as resp:
            assert resp.status == 503
            assert (await resp.json())["error"] == "no_healthy_upstream"

        def consul_errors(text: str) -> float:
            return float(
                next(line for line in text.splitlines() if line.startswith("consulgw_consul_errors_total ")).split()[1]
            )

        async def failures_counted() -> bool:
            async with http.get(f"{gateway.admin_url}/metrics") as resp:
                return consul_errors(await resp.text()) >= 1

        await wait_for(failures_counted, timeout=10)
    finally:
        await gateway.stop()


async def test_routes_filters_and_pages(
    gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession
) -> None:
    """/-/routes answers a page of services (``limit``, ``after``, ``next``) or the ones named in ``service``;
    consulgw/server/routes_document.py has the bounds (tested with 5,000 services in tests/server)."""
    up = await upstreams("a")
    names = [f"svc-{i}" for i in range(5)]
    for name in names:
        await consul.register(name, up.port, tags=[f"gw.route=/{name}"])
    for name in names:
        await wait_for(lambda name=name: routed(gateway, name, 1))

    async def get(query: str) -> tuple[int, dict[str, Any]]:
        async with http.get(f"{gateway.admin_url}/-/routes{query}") as resp:
            return resp.status, await resp.json()

    status, body = await get("?service=svc-3&service=svc-1")
    assert status == 200
    assert list(body["services"]) == ["svc-1", "svc-3"]
    assert [r["service"] for r in body["routes"]] == ["svc-1", "svc-3"]
    assert body["totals"]["services"] == 2
    assert body["services"]["svc-1"]["instances"][0]["breaker"] == "closed"  # runtime counters are there

    _, first = await get("?limit=2")
    _, second = await get(f"?limit=2&after={first['next']}")
    _, third = await get(f"?limit=2&after={second['next']}")
    assert [list(page["services"]) for page in (first, second, third)] == [names[:2], names[2:4], names[4:]]
    assert third["next"] is None
    assert first["totals"]["services"] == 5

    status, body = await get("?limit=0")
    assert (status, body["error"]) == (400, "bad_query")
    status, body = await get("?sevice=svc-1")
    assert status == 400
    assert "unknown parameter 'sevice'" in body["message"]
