"""Consul at scale, end to end: 1,000 routed services (one process, and --workers 2) all routed while the gateway
holds at most --consul-max-conns connections to the agent (counted by a relay at the socket level, which also
refuses past Consul's default 200 per client as Consul does); a change to one service is routed; a token without
KV read is reported and routing goes on. Correctness only: the timings are in docs/benchmarks.md."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import structlog

from consulgw.server.gateway import Gateway
from tests.support.consul_fakes import CountingProxy, KvDenyingProxy
from tests.support.processes import gateway_process

from .conftest import Consul, gateway_settings_for, start_upstream, wait_for

SERVICES = 1000
MAX_CONNS = 64  # the default


@pytest.fixture
async def relay(dev_agent: Any) -> AsyncIterator[CountingProxy]:
    async with CountingProxy(dev_agent.port, limit=200) as proxy:  # Consul's http_max_conns_per_client
        yield proxy


async def register_many(http: aiohttp.ClientSession, url: str, port: int, count: int) -> None:
    """``count`` routed services of 2 instances each, through the catalog API (as a bulk import would)."""
    semaphore = asyncio.Semaphore(16)

    async def one(i: int, k: int) -> None:
        body = {
            "Node": f"node-{(i * 2 + k) % 100}",
            "Address": "127.0.0.1",
            "Service": {"ID": f"s{i}-{k}", "Service": f"s{i}", "Port": port, "Tags": [f"gw.route=/s{i}"]},
        }
        async with semaphore, http.put(f"{url}/v1/catalog/register", json=body) as resp:
            assert resp.status == 200, await resp.text()

    await asyncio.gather(*(one(i, k) for i in range(count) for k in range(2)))


async def routes(http: aiohttp.ClientSession, admin: str, query: str = "") -> dict[str, Any]:
    """The admin route document; it pages services (100 by default), hence ``limit=`` and ``service=``."""
    try:
        async with http.get(f"{admin}/-/routes{query}") as resp:
            return dict(await resp.json()) if resp.status == 200 else {}
    except aiohttp.ClientError:
        return {}


async def fresh_status(url: str) -> int:
    """One request on a new connection, so with --workers the kernel may hand it to either worker."""
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http,
        http.get(url) as resp,
    ):
        await resp.read()
        return resp.status


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
async def test_1000_services_are_routed_within_the_connection_budget(
    dev_agent: Any, relay: CountingProxy, http: aiohttp.ClientSession, workers: int
) -> None:
    up = await start_upstream("many")
    try:
        await register_many(http, dev_agent.url, up.port, SERVICES)
        async with gateway_process(relay.url, "--workers", str(workers), "--consul-max-conns", str(MAX_CONNS)) as gw:

            async def all_routed() -> bool:
                doc = await routes(http, gw.admin_url, f"?limit={SERVICES}")
                return len(doc.get("routes", [])) == SERVICES and all(
                    len(s["instances"]) == 2 for s in doc["services"].values()
                )

            await wait_for(all_routed, timeout=120, interval=0.5)
            doc = await routes(http, gw.admin_url, f"?limit={SERVICES}")
            assert doc["totals"]["services"] == SERVICES
            assert doc["consul"]["max_conns"] == MAX_CONNS
            assert doc["consul"]["live"] + doc["consul"]["parked"] == SERVICES
            for name in ("s0", "s499", "s999"):
                for _ in range(2 * workers):
                    assert await fresh_status(f"{gw.url}/{name}") == 200

            # One service changes: a third instance on another port, and a new routed service.
            other = await start_upstream("other")
            try:
                consul = Consul(http, dev_agent.url)
                await consul.register("s777", other.port, service_id="s777-new", tags=["gw.route=/s777"])
                await consul.register("brand-new", other.port, tags=["gw.route=/brand-new"])

                async def changed() -> bool:
                    doc = await routes(http, gw.admin_url, "?service=s777,brand-new")
                    ports = {i["port"] for i in doc.get("services", {}).get("s777", {}).get("instances", [])}
                    return other.port in ports and "brand-new" in doc.get("services", {})

                await wait_for(changed, timeout=60, interval=0.2)
                for _ in range(2 * workers):  # every worker has the new route
                    assert await fresh_status(f"{gw.url}/brand-new") == 200
            finally:
                await other.stop()
            assert relay.peak <= MAX_CONNS, f"the gateway held {relay.peak} connections to the agent"
            assert relay.refused == 0
    finally:
        await up.stop()


async def test_a_token_without_kv_read_is_reported_and_routing_goes_on(
    dev_agent: Any, consul: Consul, http: aiohttp.ClientSession
) -> None:
    up = await start_upstream("web")
    try:
        await consul.register("web", up.port, tags=["gw.route=/web"])
        await consul.kv_put("consulgw/services/web", json.dumps({"auth": {"type": "api_key"}}))
        async with KvDenyingProxy(dev_agent.url, prefix="consulgw/") as proxy:
            with structlog.testing.capture_logs() as logs:
                gateway = Gateway(gateway_settings_for(proxy.url), consul_wait=5.0)
                await gateway.start()
                try:
                    await gateway.wait_ready(10)
                    async with http.get(f"{gateway.url}/web") as resp:
                        assert resp.status == 200  # from the catalog; the unreadable auth policy is not applied
                    doc = await routes(http, gateway.admin_url)
                    assert doc["consul"]["kv_access"] == "denied"
                    assert doc["consul"]["kv_read_denied"] is True
                    assert "Permission denied" in doc["consul"]["kv_error"]
                    assert doc["consul"]["reachable"] is True
                    async with http.get(f"{gateway.admin_url}/metrics") as resp:
                        assert "consulgw_consul_kv_read_denied 1.0" in await resp.text()
                    async with http.get(f"{gateway.admin_url}/-/ready") as resp:
                        assert resp.status == 200

                    proxy.denying = False
                    await wait_for(lambda: gateway.status().kv_access == "ok", timeout=15)
                    async with http.get(f"{gateway.admin_url}/metrics") as resp:
                        assert "consulgw_consul_kv_read_denied 0.0" in await resp.text()
                finally:
                    await gateway.stop()
        assert [e["event"] for e in logs].count("consul_kv_read_denied") == 1
    finally:
        await up.stop()
