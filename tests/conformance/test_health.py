"""Health endpoints: service (passing, tags, filter), checks/:service, state/:state, node/:node, ordering.

Reference: consul-api.md sections 1.6, 5 and 12 items 15, 16.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conformance.support import Client, uid

pytestmark = pytest.mark.asyncio


async def ids(api: Client, name: str, params: list[tuple[str, str | None]] | None = None) -> list[str]:
    reply = await api.get(f"/v1/health/service/{name}", params or [])
    assert reply.status == 200, reply
    return [e["Service"]["ID"] for e in reply.json()]


async def three_instances(api: Client) -> str:
    """name-1 passing, name-2 warning, name-3 critical (TTL checks with an initial Status)."""
    name = uid("hs")
    for n, status in ((1, "passing"), (2, "warning"), (3, "critical")):
        await api.register_service(
            {
                "Name": name,
                "ID": f"{name}-{n}",
                "Tags": [f"i{n}", "All"],
                "Meta": {"n": str(n)},
                "Check": {"TTL": "30s", "Status": status},
            }
        )
    return name


async def test_health_service_entry_shape(api: Client) -> None:
    name = uid("shape")
    await api.register_service({"Name": name, "Address": "10.0.0.5", "Port": 8080, "Check": {"TTL": "30s"}})
    (entry,) = (await api.get(f"/v1/health/service/{name}")).json()
    assert set(entry) >= {"Node", "Service", "Checks"}
    node = await api.node_name()
    assert entry["Node"]["Node"] == node
    assert entry["Node"]["Datacenter"] == "dc1"
    svc = entry["Service"]
    assert (svc["ID"], svc["Service"], svc["Tags"], svc["Address"], svc["Port"]) == (name, name, [], "10.0.0.5", 8080)
    assert svc["Weights"] == {"Passing": 1, "Warning": 1}
    assert svc["Meta"] in ({}, None)
    assert [c["CheckID"] for c in entry["Checks"]] == ["serfHealth", f"service:{name}"]
    serf = entry["Checks"][0]
    assert (serf["Name"], serf["Status"], serf["ServiceID"], serf["ServiceTags"]) == (
        "Serf Health Status",
        "passing",
        "",
        [],
    )
    assert serf["Output"] == "Agent alive and reachable"
    assert entry["Checks"][1]["ServiceTags"] == []


async def test_health_service_unknown_is_empty(api: Client) -> None:
    reply = await api.get(f"/v1/health/service/{uid('none')}")
    assert (reply.status, reply.json()) == (200, [])
    assert reply.index >= 1


async def test_health_service_missing_name_is_400(api: Client) -> None:
    reply = await api.get("/v1/health/service/")
    assert (reply.status, reply.text) == (400, "Missing service name")


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        pytest.param([], [1, 2, 3], id="no-filter"),
        pytest.param([("passing", None)], [1], id="passing-flag"),
        pytest.param([("passing", "true")], [1], id="passing-true"),
        pytest.param([("passing", "1")], [1], id="passing-1"),
        pytest.param([("passing", "false")], [1, 2, 3], id="passing-false"),
        pytest.param([("passing", "0")], [1, 2, 3], id="passing-0"),
    ],
)
async def test_passing_filter_excludes_warning_and_critical(
    api: Client, params: list[tuple[str, str | None]], expected: list[int]
) -> None:
    name = await three_instances(api)
    assert sorted(await ids(api, name, params)) == [f"{name}-{n}" for n in expected]


async def test_passing_invalid_value_is_400(api: Client) -> None:
    reply = await api.get("/v1/health/service/consul", [("passing", "yes please")])
    assert (reply.status, reply.text) == (400, "Invalid value for ?passing")


async def test_passing_filter_does_not_change_index(api: Client) -> None:
    name = await three_instances(api)
    full = await api.get(f"/v1/health/service/{name}")
    filtered = await api.get(f"/v1/health/service/{name}", [("passing", None)])
    assert full.index == filtered.index
    # A blocking ?passing query on the current index waits (the filtered result does not matter).
    blocked = await api.get(
        f"/v1/health/service/{name}", [("passing", None), ("index", str(full.index)), ("wait", "1s")]
    )
    assert blocked.index == full.index
    assert blocked.elapsed >= 0.9


async def test_node_level_checks_count_for_passing(api: Client) -> None:
    node, svc = uid("nodechk"), uid("nodesvc")
    reply = await api.put(
        "/v1/catalog/register",
        json_body={
            "Node": node,
            "Address": "10.5.0.1",
            "Service": {"ID": f"{svc}-1", "Service": svc},
            "Checks": [
                {"CheckID": "node-health", "Name": "node health", "Status": "critical"},
                {"CheckID": "svc-health", "Name": "svc health", "Status": "passing", "ServiceID": f"{svc}-1"},
            ],
        },
    )
    assert reply.status == 200, reply
    api.cleanups.append(lambda: api.put("/v1/catalog/deregister", json_body={"Node": node}))
    (entry,) = (await api.get(f"/v1/health/service/{svc}")).json()
    assert [c["CheckID"] for c in entry["Checks"]] == ["node-health", "svc-health"]
    assert await ids(api, svc, [("passing", None)]) == []
    checks = (await api.get(f"/v1/health/checks/{svc}")).json()
    assert [c["CheckID"] for c in checks] == ["svc-health"]  # service-level only


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        pytest.param(["i1"], [1], id="one-tag"),
        pytest.param(["I1"], [1], id="case-insensitive"),
        pytest.param(["all"], [1, 2, 3], id="shared-tag-other-case"),
        pytest.param(["all", "i2"], [2], id="and-semantics"),
        pytest.param(["i1", "i2"], [], id="and-no-match"),
        pytest.param(["i3", ""], [3], id="empty-tag-ignored"),
    ],
)
async def test_tag_filter_is_and_and_case_insensitive(api: Client, tags: list[str], expected: list[int]) -> None:
    name = await three_instances(api)
    assert await ids(api, name, [("tag", t) for t in tags]) == [f"{name}-{n}" for n in expected]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        pytest.param('"i2" in Service.Tags', [2], id="tag-in"),
        pytest.param('Service.Meta.n == "3"', [3], id="meta"),
        pytest.param('Service.Meta.n != "3"', [1, 2], id="meta-not"),
        pytest.param('"does:not:exist" in Service.Tags', [], id="nothing"),
        pytest.param('Service.Service == "NAME" and Service.ID matches "-1$"', [1], id="and-matches"),
    ],
)
async def test_health_service_filter(api: Client, expression: str, expected: list[int]) -> None:
    name = await three_instances(api)
    got = await ids(api, name, [("filter", expression.replace("NAME", name))])
    assert sorted(got) == [f"{name}-{n}" for n in expected]


async def test_filter_is_evaluated_before_passing(api: Client) -> None:
    name = await three_instances(api)
    assert await ids(api, name, [("filter", '"All" in Service.Tags'), ("passing", None)]) == [f"{name}-1"]


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/v1/health/service/consul", id="health-service"),
        pytest.param("/v1/health/state/any", id="health-state"),
        pytest.param("/v1/health/checks/consul", id="health-checks"),
    ],
)
async def test_bad_filter_is_500(api: Client, path: str) -> None:
    reply = await api.get(path, [("filter", "Service.Tags ===")])
    assert reply.status == 500, reply
    assert "Failed to create boolean expression evaluator" in reply.text


async def test_health_checks_for_service(api: Client) -> None:
    name = uid("hc")
    await api.register_service({"Name": name, "ID": f"{name}-b", "Checks": [{"TTL": "30s"}, {"TTL": "30s"}]})
    await api.register_service({"Name": name, "ID": f"{name}-a", "Check": {"TTL": "30s", "Status": "passing"}})
    reply = await api.get(f"/v1/health/checks/{name}")
    assert reply.status == 200, reply
    assert [c["CheckID"] for c in reply.json()] == [f"service:{name}-a", f"service:{name}-b:1", f"service:{name}-b:2"]
    assert {c["ServiceName"] for c in reply.json()} == {name}
    filtered = (await api.get(f"/v1/health/checks/{name}", [("filter", f'CheckID == "service:{name}-a"')])).json()
    assert [c["CheckID"] for c in filtered] == [f"service:{name}-a"]
    assert (await api.get(f"/v1/health/checks/{uid('none')}")).json() == []
    missing = await api.get("/v1/health/checks/")
    assert (missing.status, missing.text) == (400, "Missing service name")


async def test_health_state(api: Client, consul: Any) -> None:
    any_checks = (await api.get("/v1/health/state/any")).json()
    if consul.kind == "dev-agent":  # a fresh dev agent has exactly the serf check
        assert [c["CheckID"] for c in any_checks] == ["serfHealth"]
        assert [c["ServiceID"] for c in any_checks] == [""]
    name = await three_instances(api)

    async def mine(state: str) -> list[str]:
        reply = await api.get(f"/v1/health/state/{state}")
        assert reply.status == 200, reply
        return [c["ServiceID"] for c in reply.json() if c["ServiceName"] == name]

    assert await mine("passing") == [f"{name}-1"]
    assert await mine("warning") == [f"{name}-2"]
    assert await mine("critical") == [f"{name}-3"]
    assert await mine("any") == [f"{name}-1", f"{name}-2", f"{name}-3"]
    all_checks = (await api.get("/v1/health/state/any")).json()
    assert "serfHealth" in [c["CheckID"] for c in all_checks]
    assert all(c["ServiceTags"] is not None for c in all_checks)
    keys = [(c["Node"], c["CheckID"]) for c in all_checks]
    assert keys == sorted(keys)
    filtered = (await api.get("/v1/health/state/passing", [("filter", f'ServiceID == "{name}-1"')])).json()
    assert [c["ServiceID"] for c in filtered] == [f"{name}-1"]


async def test_health_state_unknown_and_missing(api: Client) -> None:
    reply = await api.get("/v1/health/state/bogus")
    assert (reply.status, reply.json()) == (200, [])
    reply = await api.get("/v1/health/state/")
    assert (reply.status, reply.text) == (400, "Missing check state")


async def test_health_node(api: Client) -> None:
    node = await api.node_name()
    name = uid("hn")
    await api.register_service({"Name": name, "Check": {"TTL": "30s"}})
    checks = (await api.get(f"/v1/health/node/{node}")).json()
    assert {"serfHealth", f"service:{name}"} <= {c["CheckID"] for c in checks}
    assert all(c["Node"] == node for c in checks)
    assert [c["CheckID"] for c in checks] == sorted(c["CheckID"] for c in checks)
    filtered = (await api.get(f"/v1/health/node/{node}", [("filter", 'Node == "does-not-exist"')])).json()
    assert filtered == []
    assert (await api.get(f"/v1/health/node/{uid('nonode')}")).json() == []
    missing = await api.get("/v1/health/node/")
    assert (missing.status, missing.text) == (400, "Missing node name")


async def test_checks_of_an_instance_are_node_first_then_by_check_id(api: Client) -> None:
    name = uid("order")
    await api.register_service(
        {"Name": name, "Checks": [{"CheckID": f"{name}-z", "TTL": "30s"}, {"CheckID": f"{name}-a", "TTL": "30s"}]}
    )
    assert (await api.put(f"/v1/agent/service/maintenance/{name}", [("enable", "true")])).status == 200
    (entry,) = (await api.get(f"/v1/health/service/{name}")).json()
    ids_ = [c["CheckID"] for c in entry["Checks"]]
    assert ids_[0] == "serfHealth"
    assert ids_[1:] == sorted([f"{name}-a", f"{name}-z", f"_service_maintenance:{name}"])


async def test_health_service_instance_order(api: Client) -> None:
    """py-consul asserts ["foo:1", "foo:2"] on one node: by node, then service ID."""
    name = uid("foo")
    await api.register_service({"Name": name, "ID": f"{name}:2", "Check": {"TTL": "30s"}})
    await api.register_service({"Name": name, "ID": f"{name}:1", "Check": {"TTL": "30s"}, "Tags": ["tag:foo:1"]})
    assert await ids(api, name) == [f"{name}:1", f"{name}:2"]
    assert await ids(api, name, [("passing", None)]) == []
    for sid in (f"{name}:1", f"{name}:2"):
        assert (await api.put(f"/v1/agent/check/pass/service:{sid}")).status == 200
    assert await ids(api, name, [("passing", None)]) == [f"{name}:1", f"{name}:2"]
    assert await ids(api, name, [("tag", "tag:foo:1")]) == [f"{name}:1"]


@pytest.mark.parametrize(
    ("path", "params"),
    [
        pytest.param("/v1/health/connect/NAME", [], id="connect-plain-service"),
        pytest.param("/v1/health/ingress/NAME", [], id="ingress-none-configured"),
        pytest.param("/v1/health/ingress/NAME", [("filter", "Node.Node != ``")], id="ingress-with-filter"),
        pytest.param("/v1/catalog/connect/NAME", [], id="catalog-connect"),
        pytest.param("/v1/health/service/NAME", [("peer", "non-existent-peer")], id="unknown-peer"),
    ],
)
async def test_mesh_and_peer_views_of_a_plain_service_are_empty(
    api: Client, path: str, params: list[tuple[str, str | None]]
) -> None:
    """criteo/py-consul test_health_connect / test_health_ingress / test_health_service_peer."""
    name = uid("plainmesh")
    await api.register_service({"Name": name, "ID": f"{name}:1", "Check": {"TTL": "10s"}})
    reply = await api.get(path.replace("NAME", name), params)
    assert reply.status == 200, reply
    assert reply.json() == []
    assert reply.index >= 1


@pytest.mark.parametrize(
    "params",
    [
        pytest.param([("merge-central-config", None)], id="merge-central-config"),
        pytest.param([("near", "_agent")], id="near-agent"),
        pytest.param([("stale", None)], id="stale"),
        pytest.param([("consistent", None)], id="consistent"),
        pytest.param([("cached", None)], id="cached"),
    ],
)
async def test_accepted_parameters_do_not_change_identity(api: Client, params: list[tuple[str, str | None]]) -> None:
    name = uid("params")
    await api.register_service({"Name": name, "ID": f"{name}:1", "Check": {"TTL": "10s"}})
    assert await ids(api, name, params) == [f"{name}:1"]


async def test_node_meta_filter(api: Client) -> None:
    svc = uid("nm")
    for node, rack in ((uid("rack-a"), "a"), (uid("rack-b"), "b")):
        reply = await api.put(
            "/v1/catalog/register",
            json_body={
                "Node": node,
                "Address": "10.6.0.1",
                "NodeMeta": {"rack": rack, "tier": "x"},
                "Service": {"Service": svc},
            },
        )
        assert reply.status == 200, reply
        api.cleanups.append(lambda node=node: api.put("/v1/catalog/deregister", json_body={"Node": node}))
    entries = (await api.get(f"/v1/health/service/{svc}", [("node-meta", "rack:a")])).json()
    assert [e["Node"]["Meta"]["rack"] for e in entries] == ["a"]
    entries = (await api.get(f"/v1/health/service/{svc}", [("node-meta", "rack:a"), ("node-meta", "tier:x")])).json()
    assert len(entries) == 1
    entries = (await api.get(f"/v1/health/service/{svc}", [("node-meta", "rack:a"), ("node-meta", "tier:y")])).json()
    assert entries == []
    nodes = (await api.get(f"/v1/catalog/service/{svc}", [("node-meta", "tier:x")])).json()
    assert len(nodes) == 2
