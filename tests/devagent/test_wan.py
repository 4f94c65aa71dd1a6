"""WAN peers (``--wan-peer``): ``?dc=<peer>`` is answered by the peer's agent on every read endpoint, blocking
queries included, as a federated Consul server forwards it; an unknown ``dc`` stays 500 ``No path to datacenter``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from consulgw.devagent import DevAgent
from consulgw.devagent.wan import parse_wan_peer, parse_wan_peers
from tests.devagent.support import Api

Factory = Callable[..., Awaitable[DevAgent]]


async def _pair(factory: Factory) -> tuple[DevAgent, DevAgent]:
    dc2 = await factory(datacenter="dc2", node="node-dc2")
    dc1 = await factory(datacenter="dc1", node="node-dc1", wan_peers={"dc2": dc2.url})
    return dc1, dc2


async def test_reads_for_a_peer_datacenter_are_answered_by_the_peer(
    dev_agent_factory: Factory, session: aiohttp.ClientSession
) -> None:
    dc1, dc2 = await _pair(dev_agent_factory)
    api1, api2 = Api(dc1.url, session), Api(dc2.url, session)
    await api2.register({"Name": "web", "ID": "web-2", "Port": 9002, "Tags": ["remote"]})
    await api1.register({"Name": "web", "ID": "web-1", "Port": 9001})
    assert (await api2.call("PUT", "/v1/kv/where", data=b"dc2")).status == 200

    local = await api1.get("/v1/health/service/web")
    remote = await api1.get("/v1/health/service/web", {"dc": "dc2"})
    direct = await api2.get("/v1/health/service/web")
    assert [e["Service"]["ID"] for e in local.json()] == ["web-1"]
    assert [e["Service"]["ID"] for e in remote.json()] == ["web-2"]
    assert remote.json()[0]["Node"]["Datacenter"] == "dc2"
    assert remote.index == direct.index  # the peer's own indexes
    assert remote.headers["X-Consul-KnownLeader"] == "true"
    assert (await api1.get("/v1/catalog/services", {"dc": "dc2"})).json() == {"consul": [], "web": ["remote"]}
    kv = await api1.get("/v1/kv/where", {"dc": "dc2", "raw": ""})
    assert (kv.status, kv.text) == (200, "dc2")
    assert (await api1.get("/v1/kv/where")).status == 404
    assert (await api1.get("/v1/status/leader", {"dc": "dc2"})).status == 200
    # the peer's own dc is served locally there, and the local one here
    assert [e["Service"]["ID"] for e in (await api1.get("/v1/health/service/web", {"dc": "dc1"})).json()] == ["web-1"]


async def test_datacenters_lists_this_one_first_then_the_peers(
    dev_agent_factory: Factory, session: aiohttp.ClientSession
) -> None:
    dc1, dc2 = await _pair(dev_agent_factory)
    assert (await Api(dc1.url, session).get("/v1/catalog/datacenters")).json() == ["dc1", "dc2"]
    assert (await Api(dc2.url, session).get("/v1/catalog/datacenters")).json() == ["dc2"]


async def test_unknown_datacenter_is_still_no_path(dev_agent_factory: Factory, session: aiohttp.ClientSession) -> None:
    dc1, _ = await _pair(dev_agent_factory)
    api = Api(dc1.url, session)
    for path in ("/v1/catalog/services", "/v1/health/service/x", "/v1/kv/a", "/v1/status/leader"):
        reply = await api.get(path, {"dc": "dc3"})
        assert (reply.status, reply.text) == (500, "No path to datacenter"), path


async def test_blocking_query_through_the_peer_wakes_on_the_peers_change(
    dev_agent_factory: Factory, session: aiohttp.ClientSession
) -> None:
    dc1, dc2 = await _pair(dev_agent_factory)
    api1, api2 = Api(dc1.url, session), Api(dc2.url, session)
    await api2.register({"Name": "web", "ID": "web-2", "Port": 9002})
    first = await api1.get("/v1/health/service/web", {"dc": "dc2"})
    waiting = asyncio.create_task(api1.get("/v1/health/service/web", {"dc": "dc2", "index": str(first.index),
                                                                      "wait": "10s"}))  # fmt: skip
    await asyncio.sleep(0.2)
    assert not waiting.done()  # blocked at the peer
    await api2.register({"Name": "web", "ID": "web-3", "Port": 9003})
    woken = await asyncio.wait_for(waiting, 5)
    assert woken.index > first.index
    assert sorted(e["Service"]["ID"] for e in woken.json()) == ["web-2", "web-3"]


async def test_writes_for_a_peer_datacenter_go_to_the_peer(
    dev_agent_factory: Factory, session: aiohttp.ClientSession
) -> None:
    dc1, dc2 = await _pair(dev_agent_factory)
    api1, api2 = Api(dc1.url, session), Api(dc2.url, session)
    reply = await api1.call("PUT", "/v1/kv/k", {"dc": "dc2"}, data=b"v")
    assert (reply.status, reply.text.strip()) == (200, "true")
    assert (await api2.get("/v1/kv/k", {"raw": ""})).text == "v"
    body = {"Datacenter": "dc2", "Node": "ext", "Address": "10.0.0.9",
            "Service": {"Service": "db", "ID": "db-1", "Port": 5432}}  # fmt: skip
    assert (await api1.put("/v1/catalog/register", body)).status == 200
    assert [e["Service"]["ID"] for e in (await api2.get("/v1/health/service/db")).json()] == ["db-1"]
    assert (await api1.get("/v1/health/service/db")).json() == []


async def test_a_peer_that_is_down_is_consuls_unreachable_error(
    dev_agent_factory: Factory, session: aiohttp.ClientSession, free_port: Callable[[], int]
) -> None:
    dc1 = await dev_agent_factory(wan_peers={"dc2": f"http://127.0.0.1:{free_port()}"})
    reply = await Api(dc1.url, session).get("/v1/health/service/web", {"dc": "dc2"})
    assert reply.status == 500
    assert reply.text.startswith("Remote DC has no server currently reachable (dc2: ")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("dc2=http://127.0.0.1:8501", ("dc2", "http://127.0.0.1:8501"), id="plain"),
        pytest.param("eu-1=https://consul.example:443/", ("eu-1", "https://consul.example:443"), id="slash"),
        pytest.param("dc2=http://[::1]:8501", ("dc2", "http://[::1]:8501"), id="ipv6"),
    ],
)
def test_wan_peer_values(value: str, expected: tuple[str, str]) -> None:
    assert parse_wan_peer("--wan-peer", value) == expected


@pytest.mark.parametrize(
    "value",
    ["dc2", "=http://a:1", "dc 2=http://a:1", "dc2=http://a", "dc2=a:1", "dc2=http://a:99999", "dc2=http://a:1/x",
     "dc2=http://u:p@a:1", "dc2=http://a:1?q"],
)  # fmt: skip
def test_bad_wan_peer_values_name_the_flag_and_value(value: str) -> None:
    with pytest.raises(ValueError, match=r"^--wan-peer: ") as caught:
        parse_wan_peer("--wan-peer", value)
    assert repr(value) in str(caught.value)


def test_own_and_repeated_datacenters_are_refused() -> None:
    with pytest.raises(ValueError, match="own datacenter 'dc1'"):
        parse_wan_peers("--wan-peer", ["dc1=http://a:1"], "dc1")
    with pytest.raises(ValueError, match="'dc2' a second time"):
        parse_wan_peers("--wan-peer", ["dc2=http://a:1", "dc2=http://b:2"], "dc1")
