"""DevAgent lifecycle: dev baseline, ephemeral and fixed ports, restart on the same port with all state lost."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from consulgw.devagent import DevAgent
from tests.devagent.support import Api


async def test_dev_baseline(api: Api, dev_agent: DevAgent) -> None:
    assert dev_agent.node == "test-node"
    assert dev_agent.url == f"http://127.0.0.1:{dev_agent.port}"
    nodes = await api.get("/v1/catalog/nodes")
    assert [n["Node"] for n in nodes.json()] == ["test-node"]
    assert 2 < nodes.index < 30
    assert (await api.get("/v1/catalog/services")).json() == {"consul": []}
    consul = (await api.get("/v1/catalog/service/consul")).json()
    assert [(s["ServiceID"], s["ServicePort"]) for s in consul] == [("consul", 8300)]
    checks = (await api.get("/v1/health/state/any")).json()
    assert [(c["CheckID"], c["Status"], c["Output"]) for c in checks] == [
        ("serfHealth", "passing", "Agent alive and reachable")
    ]
    assert (await api.get("/v1/agent/services")).json() == {}
    assert (await api.get("/v1/agent/checks")).json() == {}
    assert (await api.get("/v1/status/leader")).json() == "127.0.0.1:8300"
    assert (await api.get("/v1/status/peers")).json() == ["127.0.0.1:8300"]
    me = (await api.get("/v1/agent/self")).json()
    assert set(me) == {"Config", "DebugConfig", "Coord", "Member", "Stats", "Meta", "xDS"}
    assert me["Config"]["NodeName"] == "test-node"
    assert me["Member"] in (await api.get("/v1/agent/members")).json()


async def test_restart_on_same_port_loses_state_and_index_goes_back(
    dev_agent_factory: Callable[..., Awaitable[DevAgent]], session: aiohttp.ClientSession
) -> None:
    first = await dev_agent_factory()
    api = Api(first.url, session)
    for n in range(20):
        await api.call("PUT", f"/v1/kv/k{n}", data=b"x")
    high = (await api.get("/v1/kv/k19")).index
    port = first.port
    await first.stop()
    second = await dev_agent_factory(port=port)
    assert second.port == port
    reply = await api.get("/v1/kv/k19")
    assert reply.status == 404
    assert reply.index < high


async def test_two_agents_side_by_side(dev_agent_factory: Callable[..., Awaitable[DevAgent]]) -> None:
    a = await dev_agent_factory(node="a")
    b = await dev_agent_factory(node="b", datacenter="dc2")
    assert a.port != b.port
    assert (a.node, b.node, b.datacenter) == ("a", "b", "dc2")


async def test_busy_port_fails_to_start(dev_agent: DevAgent) -> None:
    with pytest.raises(OSError):
        await DevAgent(node="x", port=dev_agent.port).start()


async def test_port_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        _ = DevAgent(node="x", port=0).port
