"""Catalog endpoints: register/deregister/services/service/nodes/node/datacenters, error texts, ordering.

Reference: consul-api.md sections 1.6, 4 and 12 items 16, 17, 18. Catalog registrations always use node names of
their own (never the agent's node, whose foreign entries real Consul's anti-entropy removes).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from tests.conformance.support import Client, uid

pytestmark = pytest.mark.asyncio

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


async def catalog_register(api: Client, body: dict[str, Any]) -> None:
    reply = await api.put("/v1/catalog/register", json_body=body)
    assert reply.status == 200, reply
    assert reply.json() is True
    node = body.get("Node") or body.get("node")
    api.cleanups.append(lambda: api.put("/v1/catalog/deregister", json_body={"Node": node}))


async def test_dev_baseline_catalog(api: Client, consul: Any) -> None:
    node = await api.node_name()
    nodes = (await api.get("/v1/catalog/nodes")).json()
    mine = [n for n in nodes if n["Node"] == node]
    assert len(mine) == 1
    entry = mine[0]
    assert UUID.match(entry["ID"]), entry
    assert entry["Datacenter"] == "dc1"
    assert {"lan", "lan_ipv4", "wan", "wan_ipv4"} <= set(entry["TaggedAddresses"])
    assert entry["TaggedAddresses"]["lan"] == entry["Address"]
    assert entry["Meta"]["consul-network-segment"] == ""
    assert entry["CreateIndex"] >= 1
    assert entry["ModifyIndex"] >= entry["CreateIndex"]
    services = (await api.get("/v1/catalog/services")).json()
    assert services["consul"] == []
    consul_nodes = (await api.get("/v1/catalog/service/consul")).json()
    assert [(n["ServiceID"], n["ServiceName"], n["ServicePort"]) for n in consul_nodes] == [("consul", "consul", 8300)]
    if consul.kind == "dev-agent":
        assert [n["Node"] for n in nodes] == ["test-node"]
        assert services == {"consul": []}


async def test_catalog_service_element_shape(api: Client) -> None:
    name = uid("shape")
    await api.register_service({"Name": name, "Address": "10.0.0.5", "Port": 8080})
    reply = await api.get(f"/v1/catalog/service/{name}")
    assert reply.status == 200, reply
    (entry,) = reply.json()
    node = await api.node_name()
    expected_keys = {
        "ID", "Node", "Address", "Datacenter", "TaggedAddresses", "NodeMeta", "ServiceKind", "ServiceID",
        "ServiceName", "ServiceTags", "ServiceAddress", "ServiceTaggedAddresses", "ServiceWeights", "ServiceMeta",
        "ServicePort", "ServiceEnableTagOverride", "ServiceProxy", "ServiceConnect", "CreateIndex", "ModifyIndex",
    }  # fmt: skip
    assert expected_keys <= set(entry), expected_keys - set(entry)
    assert entry["Node"] == node
    assert entry["ServiceTags"] == []
    assert entry["ServiceWeights"] == {"Passing": 1, "Warning": 1}
    assert entry["ServiceKind"] == ""
    assert entry["ServiceEnableTagOverride"] is False
    assert entry["ServiceProxy"]["Mode"] == ""
    assert entry["ServiceConnect"] == {}
    assert entry["ServiceTaggedAddresses"] == {
        "lan_ipv4": {"Address": "10.0.0.5", "Port": 8080},
        "wan_ipv4": {"Address": "10.0.0.5", "Port": 8080},
    }
    assert entry["ModifyIndex"] >= entry["CreateIndex"] >= 1


async def test_py_consul_catalog_scenario(api: Client) -> None:
    """criteo/py-consul tests/test_std.py::test_catalog, with unique names."""
    n1, n2 = uid("n1"), uid("n2")
    s1, s2 = uid("s1"), uid("s2")
    c1 = uid("c1")
    await catalog_register(
        api, {"node": n1, "address": "10.1.10.11", "service": {"service": s1}, "check": {"name": c1}}
    )
    await catalog_register(api, {"node": n1, "address": "10.1.10.11", "service": {"service": s2}})
    await catalog_register(api, {"node": n2, "address": "10.1.10.12", "service": {"service": s1, "tags": ["master"]}})

    nodes = [n["Node"] for n in (await api.get("/v1/catalog/nodes")).json() if n["Node"] in (n1, n2)]
    assert nodes == sorted([n1, n2])
    services = (await api.get("/v1/catalog/services")).json()
    assert services[s1] == ["master"]
    assert services[s2] == []
    node = (await api.get(f"/v1/catalog/node/{n1}")).json()
    assert set(node["Services"]) == {s1, s2}
    assert node["Node"]["Node"] == n1
    assert node["Node"]["Address"] == "10.1.10.11"
    assert {x["Node"] for x in (await api.get(f"/v1/catalog/service/{s1}")).json()} == {n1, n2}
    assert {x["Node"] for x in (await api.get(f"/v1/catalog/service/{s1}", [("tag", "master")])).json()} == {n2}

    # The catalog check defaults: CheckID = Name, Status critical, node-level (no ServiceID given).
    checks = (await api.get(f"/v1/health/node/{n1}")).json()
    assert [(c["CheckID"], c["Status"], c["ServiceID"]) for c in checks] == [(c1, "critical", "")]

    assert (await api.put("/v1/catalog/deregister", json_body={"Node": n1, "CheckID": c1})).json() is True
    assert (await api.put("/v1/catalog/deregister", json_body={"Node": n2, "ServiceID": s1})).json() is True
    nodes = [n["Node"] for n in (await api.get("/v1/catalog/nodes")).json() if n["Node"] in (n1, n2)]
    assert nodes == sorted([n1, n2])
    assert {x["Node"] for x in (await api.get(f"/v1/catalog/service/{s1}")).json()} == {n1}
    assert (await api.get(f"/v1/health/node/{n1}")).json() == []

    assert (await api.put("/v1/catalog/deregister", json_body={"Node": n1})).json() is True
    assert (await api.put("/v1/catalog/deregister", json_body={"Node": n2})).json() is True
    assert not [n for n in (await api.get("/v1/catalog/nodes")).json() if n["Node"] in (n1, n2)]
    assert s1 not in (await api.get("/v1/catalog/services")).json()


async def test_catalog_deregister_service_removes_its_checks(api: Client) -> None:
    node, svc = uid("dn"), uid("ds")
    await catalog_register(
        api,
        {
            "Node": node,
            "Address": "10.2.0.1",
            "Service": {"ID": f"{svc}-1", "Service": svc, "Port": 80},
            "Checks": [
                {"CheckID": f"{svc}-chk", "Name": "svc check", "ServiceID": f"{svc}-1", "Status": "passing"},
                {"CheckID": f"{node}-chk", "Name": "node check", "Status": "passing"},
            ],
        },
    )
    assert [c["CheckID"] for c in (await api.get(f"/v1/health/checks/{svc}")).json()] == [f"{svc}-chk"]
    assert (await api.put("/v1/catalog/deregister", json_body={"Node": node, "ServiceID": f"{svc}-1"})).json() is True
    assert (await api.get(f"/v1/health/checks/{svc}")).json() == []
    assert [c["CheckID"] for c in (await api.get(f"/v1/health/node/{node}")).json()] == [f"{node}-chk"]


async def test_catalog_deregister_missing_things_is_true(api: Client) -> None:
    node = uid("never")
    for body in ({"Node": node}, {"Node": node, "ServiceID": "x"}, {"Node": node, "CheckID": "y"}):
        reply = await api.put("/v1/catalog/deregister", json_body=body)
        assert reply.status == 200, reply
        assert reply.json() is True


async def test_catalog_check_definition_is_stored_not_run(api: Client, upstream: Any) -> None:
    node = uid("defn")
    await catalog_register(
        api,
        {
            "Node": node,
            "Address": "10.3.0.1",
            "Check": {
                "CheckID": "web-http",
                "Name": "web",
                "Definition": {"HTTP": f"{upstream.url}/ok", "Interval": "1s"},
            },
        },
    )
    await asyncio.sleep(2.5)
    (check,) = (await api.get(f"/v1/health/node/{node}")).json()
    assert check["Status"] == "critical"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param({"Address": "10.0.0.1"}, "Must provide node", id="missing-node"),
        pytest.param({"Node": "NODE"}, "Must provide address if SkipNodeUpdate is not set", id="missing-address"),
        pytest.param(
            {"Node": "NODE", "Address": "10.0.0.1", "Service": {"ID": "x", "Port": 1}},
            "Must provide service name",
            id="service-without-name",
        ),
        pytest.param(
            {"Node": "NODE", "Address": "10.0.0.1", "Service": {"Service": "x", "Address": "0.0.0.0"}},
            "Invalid service address",
            id="service-any-address",
        ),
    ],
)
async def test_catalog_register_validation_is_500(api: Client, body: dict[str, Any], expected: str) -> None:
    node = uid("badreg")
    body = {k: (node if v == "NODE" else v) for k, v in body.items()}
    reply = await api.put("/v1/catalog/register", json_body=body)
    assert reply.status == 500, reply
    assert expected in reply.text
    assert not [n for n in (await api.get("/v1/catalog/nodes")).json() if n["Node"] == node]


async def test_catalog_register_check_for_unknown_service_is_500(api: Client) -> None:
    node = uid("nosvc")
    reply = await api.put(
        "/v1/catalog/register",
        json_body={"Node": node, "Address": "10.0.0.9", "Check": {"Name": "c", "ServiceID": "missing"}},
    )
    assert reply.status == 500, reply
    api.cleanups.append(lambda: api.put("/v1/catalog/deregister", json_body={"Node": node}))


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        pytest.param("/v1/catalog/service/", "Missing service name", id="service"),
        pytest.param("/v1/catalog/node/", "Missing node name", id="node"),
    ],
)
async def test_catalog_missing_name_is_400(api: Client, path: str, expected: str) -> None:
    reply = await api.get(path)
    assert reply.status == 400, reply
    assert reply.text == expected


async def test_catalog_unknowns(api: Client) -> None:
    reply = await api.get(f"/v1/catalog/node/{uid('nonode')}")
    assert reply.status == 200, reply
    assert reply.body.strip() == b"null"
    assert reply.index >= 1
    reply = await api.get(f"/v1/catalog/service/{uid('nosvc')}")
    assert (reply.status, reply.json()) == (200, [])


async def test_catalog_service_tag_filter(api: Client) -> None:
    name = uid("tags")
    await api.register_service({"Name": name, "ID": f"{name}-1", "Tags": ["Blue", "canary"]})
    await api.register_service({"Name": name, "ID": f"{name}-2", "Tags": ["blue"]})
    await api.register_service({"Name": name, "ID": f"{name}-3", "Tags": ["green"]})

    async def ids(params: list[tuple[str, str | None]]) -> list[str]:
        return [n["ServiceID"] for n in (await api.get(f"/v1/catalog/service/{name}", params)).json()]

    assert await ids([("tag", "blue")]) == [f"{name}-1", f"{name}-2"]
    assert await ids([("tag", "BLUE"), ("tag", "Canary")]) == [f"{name}-1"]
    assert await ids([("tag", "blue"), ("tag", "green")]) == []
    assert await ids([]) == [f"{name}-1", f"{name}-2", f"{name}-3"]
    services = (await api.get("/v1/catalog/services")).json()
    assert sorted(services[name]) == sorted(["Blue", "canary", "blue", "green"])


async def test_catalog_ordering_node_then_service_id(api: Client) -> None:
    base, svc = uid("ord"), uid("ordsvc")
    for node in (f"{base}-c", f"{base}-a", f"{base}-b"):
        for sid in ("z", "m", "a"):
            await catalog_register(
                api, {"Node": node, "Address": "10.9.0.1", "Service": {"ID": f"{svc}-{sid}", "Service": svc}}
            )
    entries = (await api.get(f"/v1/catalog/service/{svc}")).json()
    got = [(e["Node"], e["ServiceID"]) for e in entries]
    assert got == sorted(got)
    nodes = [n["Node"] for n in (await api.get("/v1/catalog/nodes")).json()]
    assert nodes == sorted(nodes)
    health = [(e["Node"]["Node"], e["Service"]["ID"]) for e in (await api.get(f"/v1/health/service/{svc}")).json()]
    assert health == sorted(health)


async def test_catalog_nodes_and_services_filter(api: Client) -> None:
    node, svc = uid("fnode"), uid("fsvc")
    await catalog_register(
        api,
        {
            "Node": node,
            "Address": "10.7.0.1",
            "NodeMeta": {"rack": "r1"},
            "Service": {"Service": svc, "Meta": {"v": "2"}},
        },
    )
    nodes = (await api.get("/v1/catalog/nodes", [("filter", 'Meta.rack == "r1"')])).json()
    assert node in [n["Node"] for n in nodes]
    nodes = (await api.get("/v1/catalog/nodes", [("node-meta", "rack:r1")])).json()
    assert [n["Node"] for n in nodes] == [node]
    services = (await api.get("/v1/catalog/services", [("filter", f'ServiceName == "{svc}"')])).json()
    assert services == {svc: []}
    entries = (await api.get(f"/v1/catalog/service/{svc}", [("filter", 'ServiceMeta.v == "2"')])).json()
    assert [e["Node"] for e in entries] == [node]


async def test_catalog_filter_bad_expression_is_500(api: Client) -> None:
    reply = await api.get("/v1/catalog/nodes", [("filter", "Node ==")])
    assert reply.status == 500, reply
    assert "Failed to create boolean expression evaluator" in reply.text
