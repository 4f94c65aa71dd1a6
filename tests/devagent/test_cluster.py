"""Anti-entropy on the agent's own node, and the single-node cluster views (coordinates, raft, events)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable

import aiohttp

from consulgw.devagent import DevAgent
from tests.devagent.support import Api, NoJitter


async def test_anti_entropy_removes_catalog_registrations_on_own_node_only(
    dev_agent_factory: Callable[..., Awaitable[DevAgent]], session: aiohttp.ClientSession
) -> None:
    agent = await dev_agent_factory(rng=NoJitter(), ae_interval=0.3)
    api = Api(agent.url, session)
    await api.register({"Name": "local"})
    for node in ("test-node", "other-node"):
        body = {"Node": node, "Address": "10.0.0.9", "Service": {"Service": "foreign"}}
        assert (await api.put("/v1/catalog/register", body)).json() is True
    await asyncio.sleep(0.8)
    nodes = {s["Node"] for s in (await api.get("/v1/catalog/service/foreign")).json()}
    assert nodes == {"other-node"}
    assert [s["ServiceID"] for s in (await api.get("/v1/catalog/service/local")).json()] == ["local"]
    own = [n for n in (await api.get("/v1/catalog/nodes")).json() if n["Node"] == "test-node"]
    assert own[0]["Address"] == "127.0.0.1"  # the agent's node record is restored too


async def test_coordinates_and_raft(api: Api, dev_agent: DevAgent) -> None:
    dcs = (await api.get("/v1/coordinate/datacenters")).json()
    assert set(dcs[0]) == {"Datacenter", "Coordinates", "AreaID"}
    nodes = await api.get("/v1/coordinate/nodes")
    assert [n["Node"] for n in nodes.json()] == ["test-node"]
    assert nodes.index >= 1
    raft = (await api.get("/v1/operator/raft/configuration")).json()
    assert raft["Index"] == 0
    assert [(s["Node"], s["Leader"], s["Voter"]) for s in raft["Servers"]] == [("test-node", True, True)]


async def test_events_fire_list_and_block(api: Api) -> None:
    fired = await api.call("PUT", "/v1/event/fire/deploy", data=b"v2")
    assert fired.json()["Name"] == "deploy"
    listed = await api.get("/v1/event/list", {"name": "deploy"})
    assert [base64.b64decode(e["Payload"]) for e in listed.json()] == [b"v2"]
    assert (await api.get("/v1/event/list", {"name": "other"})).json() == []
    pending = asyncio.create_task(api.get("/v1/event/list", {"index": str(listed.index), "wait": "10s"}))
    await asyncio.sleep(0.1)
    assert not pending.done()
    await api.call("PUT", "/v1/event/fire/deploy", data=b"v3")
    later = await asyncio.wait_for(pending, 5)
    assert len(later.json()) == 2
    assert later.index != listed.index
