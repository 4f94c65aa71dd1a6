"""ConsulClient against the dev agent: blocking semantics and KV round trips as Consul really answers them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from consulgw.devagent import DevAgent
from consulgw.discovery.consul_api import ConsulClient
from consulgw.errors import DiscoveryError
from consulgw.model.snapshot import Health
from consulgw.settings import ConsulSettings
from tests.discovery.conftest import Agent


@pytest.fixture
async def dev() -> AsyncIterator[DevAgent]:
    async with DevAgent(node="test-node", port=0) as agent:
        yield agent


@pytest.fixture
def client(dev: DevAgent, session: aiohttp.ClientSession) -> ConsulClient:
    return ConsulClient(ConsulSettings(address=dev.url), session)


async def test_catalog_blocks_until_a_change(
    dev: DevAgent, client: ConsulClient, admin_session: aiohttp.ClientSession
) -> None:
    first = await client.catalog_services()
    assert "consul" in first.value
    assert first.index >= 1
    assert first.known_leader is True
    pending = asyncio.create_task(client.catalog_services(index=first.index, wait=10.0))
    await asyncio.sleep(0.1)
    assert not pending.done()  # blocking
    await Agent(dev.url, admin_session).register("web", tags=("gw", "v2"))
    changed = await asyncio.wait_for(pending, 10)
    assert changed.index > first.index
    assert set(changed.value["web"]) == {"gw", "v2"}


async def test_catalog_returns_after_wait_without_change(client: ConsulClient) -> None:
    first = await client.catalog_services()
    again = await client.catalog_services(index=first.index, wait=0.2)
    assert again.index == first.index
    assert again.value == first.value


async def test_health_service_sees_every_instance(
    dev: DevAgent, client: ConsulClient, admin_session: aiohttp.ClientSession
) -> None:
    agent = Agent(dev.url, admin_session)
    await agent.register("web", service_id="web-1", port=8001, Weights={"Passing": 5, "Warning": 1})
    await agent.register("web", service_id="web-2", port=8002)
    await agent.ttl("web-2", "warn")
    result = await client.health_service("web")
    assert [(i.id, i.port, i.health, i.weight) for i in result.value] == [
        ("test-node/web-1", 8001, Health.PASSING, 5),
        ("test-node/web-2", 8002, Health.WARNING, 1),
    ]
    assert (await client.health_service("nope")).value == ()


async def test_kv_round_trip_with_cas(client: ConsulClient) -> None:
    empty = await client.kv_list("consulgw/")
    assert dict(empty.value) == {}
    assert empty.index >= 1  # Consul's 404 still carries an index to block on
    assert await client.kv_put("consulgw/services/web", b'{"a": 1}', cas=0) is True
    assert await client.kv_put("consulgw/services/web", b"again", cas=0) is False  # create-only
    got = await client.kv_get("consulgw/services/web")
    assert got.value == b'{"a": 1}'
    assert await client.kv_put("consulgw/services/web", b"v2", cas=got.index) is True
    assert await client.kv_put("consulgw/services/web", b"v3", cas=got.index) is False  # stale index
    listed = await client.kv_list("consulgw/")
    assert dict(listed.value) == {"consulgw/services/web": b"v2"}
    assert await client.kv_delete("consulgw/services/web") is True
    assert (await client.kv_get("consulgw/services/web")).value is None


async def test_unknown_datacenter_is_a_discovery_error(dev: DevAgent, session: aiohttp.ClientSession) -> None:
    client = ConsulClient(ConsulSettings(address=dev.url, datacenter="dc9"), session)
    with pytest.raises(DiscoveryError, match=r"/v1/catalog/services: HTTP 500: No path to datacenter"):
        await client.catalog_services()
