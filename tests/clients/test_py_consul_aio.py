"""py-consul's asyncio client (``consul.aio.Consul``) against the DevAgent.

Modelled on criteo/py-consul tests/test_aio.py. The client is constructed inside the running loop (aiohttp requires
it, consul-api.md section 11) and closed with ``await c.close()``.
"""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import AsyncIterator

import consul
import consul.aio
import consul.check
import pytest

from tests.clients.conftest import Agent

Check = consul.check.Check

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def c(agent: Agent) -> AsyncIterator[consul.aio.Consul]:
    client = consul.aio.Consul(host=agent.host, port=agent.port)
    try:
        yield client
    finally:
        await client.close()


async def test_kv(c: consul.aio.Consul) -> None:
    _index, data = await c.kv.get("foo")
    assert data is None
    assert await c.kv.put("foo", "bar") is True
    _index, data = await c.kv.get("foo")
    assert data["Value"] == b"bar"


async def test_kv_binary(c: consul.aio.Consul) -> None:
    await c.kv.put("foo", struct.pack("i", 1000))
    _index, data = await c.kv.get("foo")
    assert struct.unpack("i", data["Value"]) == (1000,)


async def test_kv_missing(c: consul.aio.Consul) -> None:
    async def put() -> None:
        await asyncio.sleep(2.0 / 100)
        await c.kv.put("foo", "bar")

    fut = asyncio.ensure_future(put())
    await c.kv.put("index", "bump")
    index, data = await c.kv.get("foo")
    assert data is None
    index, data = await c.kv.get("foo", index=index)
    assert data["Value"] == b"bar"
    await fut


async def test_kv_put_flags(c: consul.aio.Consul) -> None:
    await c.kv.put("foo", "bar")
    _index, data = await c.kv.get("foo")
    assert data["Flags"] == 0
    assert await c.kv.put("foo", "bar", flags=50) is True
    _index, data = await c.kv.get("foo")
    assert data["Flags"] == 50


async def test_kv_delete(c: consul.aio.Consul) -> None:
    await c.kv.put("foo1", "1")
    await c.kv.put("foo2", "2")
    await c.kv.put("foo3", "3")
    _index, data = await c.kv.get("foo", recurse=True)
    assert [x["Key"] for x in data] == ["foo1", "foo2", "foo3"]
    assert await c.kv.delete("foo2") is True
    _index, data = await c.kv.get("foo", recurse=True)
    assert [x["Key"] for x in data] == ["foo1", "foo3"]
    assert await c.kv.delete("foo", recurse=True) is True
    _index, data = await c.kv.get("foo", recurse=True)
    assert data is None


async def test_kv_subscribe(c: consul.aio.Consul) -> None:
    async def put() -> None:
        await asyncio.sleep(1.0 / 100)
        assert await c.kv.put("foo", "bar") is True

    fut = asyncio.ensure_future(put())
    index, data = await c.kv.get("foo")
    assert data is None
    index, data = await c.kv.get("foo", index=index)
    assert data["Value"] == b"bar"
    await fut


async def test_transaction(c: consul.aio.Consul) -> None:
    value = base64.b64encode(b"1").decode("utf8")
    r = await c.txn.put([{"KV": {"Verb": "set", "Key": "asdf", "Value": value}}])
    assert r["Errors"] is None
    r = await c.txn.put([{"KV": {"Verb": "get", "Key": "asdf"}}])
    assert r["Results"][0]["KV"]["Value"] == value


async def test_agent_services(c: consul.aio.Consul) -> None:
    assert await c.agent.services() == {}
    assert await c.agent.service.register("foo") is True
    assert await c.agent.services() == {
        "foo": {
            "Address": "",
            "Datacenter": "dc1",
            "EnableTagOverride": False,
            "ID": "foo",
            "Meta": {},
            "Port": 0,
            "Service": "foo",
            "Tags": [],
            "Weights": {"Passing": 1, "Warning": 1},
        }
    }
    assert await c.agent.service.deregister("foo") is True
    assert await c.agent.services() == {}


async def test_agent_checks_ttl_and_maintenance(c: consul.aio.Consul) -> None:
    await c.agent.service.register("foo", check=Check.ttl("10s"))
    checks = await c.agent.checks()
    assert checks["service:foo"]["Status"] == "critical"
    assert await c.agent.check.ttl_pass("service:foo", notes="ok") is True
    checks = await c.agent.checks()
    assert (checks["service:foo"]["Status"], checks["service:foo"]["Output"]) == ("passing", "ok")
    await c.agent.service.maintenance("foo", "true", "test")
    assert (await c.agent.checks())["_service_maintenance:foo"]["Notes"] == "test"
    _index, nodes = await c.health.service("foo", passing=True)
    assert nodes == []
    await c.agent.service.maintenance("foo", "false")
    _index, nodes = await c.health.service("foo", passing=True)
    assert [n["Service"]["ID"] for n in nodes] == ["foo"]


async def test_catalog_and_health_blocking(c: consul.aio.Consul) -> None:
    index, services = await c.catalog.services()
    assert services == {"consul": []}

    async def register() -> None:
        await asyncio.sleep(0.05)
        await c.agent.service.register("web", service_id="web-1", tags=["v1"], check=Check.ttl("10s"))

    fut = asyncio.ensure_future(register())
    index, services = await c.catalog.services(index=index, wait="5s")
    assert services == {"consul": [], "web": ["v1"]}
    await fut
    index, nodes = await c.health.service("web")
    assert [n["Service"]["ID"] for n in nodes] == ["web-1"]

    async def pass_check() -> None:
        await asyncio.sleep(0.05)
        await c.agent.check.ttl_pass("service:web-1")

    fut = asyncio.ensure_future(pass_check())
    index, nodes = await c.health.service("web", index=index, wait="5s", passing=True)
    assert [n["Service"]["ID"] for n in nodes] == ["web-1"]
    await fut


async def test_session(c: consul.aio.Consul) -> None:
    async def register() -> None:
        await asyncio.sleep(1.0 / 100)
        session_id = await c.session.create()
        await asyncio.sleep(50 / 1000.0)
        assert await c.session.destroy(session_id) is True

    fut = asyncio.ensure_future(register())
    index, services = await c.session.list()
    assert services == []
    await asyncio.sleep(20 / 1000.0)
    index, services = await c.session.list(index=index)
    assert len(services)
    index, services = await c.session.list(index=index)
    assert services == []
    await fut


async def test_status(c: consul.aio.Consul) -> None:
    agent_self = await c.agent.self()
    addr_port = agent_self["Stats"]["consul"]["leader_addr"]
    assert await c.status.leader() == addr_port
    assert addr_port in await c.status.peers()
