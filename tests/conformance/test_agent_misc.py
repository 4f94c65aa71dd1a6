"""Maintenance, agent health endpoints, agent/self and agent/members.

Reference: consul-api.md sections 3.6, 3.7, 3.8, 5.1 (maintenance appearance), 8 and 12 item 14.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conformance.support import Client, uid

pytestmark = pytest.mark.asyncio

SERVICE_DEFAULT_REASON = (
    "Maintenance mode is enabled for this service, but no reason was provided. This is a default message."
)
NODE_DEFAULT_REASON = (
    "Maintenance mode is enabled for this node, but no reason was provided. This is a default message."
)


# --------------------------------------------------------------------------------------------- service maintenance


@pytest.mark.parametrize(
    ("reason", "notes"),
    [
        pytest.param("deploying v2", "deploying v2", id="with-reason"),
        pytest.param(None, SERVICE_DEFAULT_REASON, id="default-reason"),
    ],
)
async def test_service_maintenance_check(api: Client, reason: str | None, notes: str) -> None:
    name, sid = uid("maint"), uid("maint-id")
    await api.register_service({"Name": name, "ID": sid})
    params = [("enable", "true")] + ([("reason", reason)] if reason is not None else [])
    reply = await api.put(f"/v1/agent/service/maintenance/{sid}", params)
    assert reply.status == 200, reply
    assert reply.body == b""
    check = (await api.agent_checks())[f"_service_maintenance:{sid}"]
    assert check["CheckID"] == f"_service_maintenance:{sid}"
    assert check["Name"] == "Service Maintenance Mode"
    assert check["Status"] == "critical"
    assert check["Notes"] == notes
    assert check["ServiceID"] == sid
    assert check["ServiceName"] == name
    assert check["Output"] == ""
    # Visible in the catalog: the instance leaves ?passing and shows up as critical.
    entries = (await api.get(f"/v1/health/service/{name}")).json()
    assert [c["CheckID"] for c in entries[0]["Checks"]] == ["serfHealth", f"_service_maintenance:{sid}"]
    assert (await api.get(f"/v1/health/service/{name}", [("passing", None)])).json() == []
    critical = (await api.get("/v1/health/state/critical")).json()
    assert f"_service_maintenance:{sid}" in [c["CheckID"] for c in critical]
    assert f"_service_maintenance:{sid}" in [c["CheckID"] for c in (await api.get(f"/v1/health/checks/{name}")).json()]


async def test_service_maintenance_reenable_keeps_first_reason_and_disable_removes(api: Client) -> None:
    name = uid("maint2")
    await api.register_service({"Name": name})
    assert (
        await api.put(f"/v1/agent/service/maintenance/{name}", [("enable", "true"), ("reason", "first")])
    ).status == 200
    assert (
        await api.put(f"/v1/agent/service/maintenance/{name}", [("enable", "true"), ("reason", "second")])
    ).status == 200
    assert (await api.agent_checks())[f"_service_maintenance:{name}"]["Notes"] == "first"
    assert (await api.put(f"/v1/agent/service/maintenance/{name}", [("enable", "false")])).status == 200
    assert f"_service_maintenance:{name}" not in await api.agent_checks()
    entries = (await api.get(f"/v1/health/service/{name}", [("passing", None)])).json()
    assert [e["Service"]["ID"] for e in entries] == [name]


@pytest.mark.parametrize("value", ["1", "t", "T", "TRUE", "true", "True"])
async def test_maintenance_enable_accepts_go_parsebool(api: Client, value: str) -> None:
    name = uid("pb")
    await api.register_service({"Name": name})
    reply = await api.put(f"/v1/agent/service/maintenance/{name}", [("enable", value)])
    assert reply.status == 200, reply
    assert f"_service_maintenance:{name}" in await api.agent_checks()


@pytest.mark.parametrize(
    ("params", "status", "expected"),
    [
        pytest.param([], 400, "Missing value for enable", id="missing-enable"),
        pytest.param([("enable", "maybe")], 400, 'Invalid value for enable: "maybe"', id="bad-enable"),
        pytest.param([("enable", "")], 400, 'Invalid value for enable: ""', id="empty-enable"),
    ],
)
async def test_service_maintenance_errors(
    api: Client, params: list[tuple[str, str]], status: int, expected: str
) -> None:
    name = uid("merr")
    await api.register_service({"Name": name})
    reply = await api.put(f"/v1/agent/service/maintenance/{name}", params)
    assert reply.status == status, reply
    assert reply.text == expected


async def test_service_maintenance_unknown_service_is_404(api: Client) -> None:
    sid = uid("nomaint")
    reply = await api.put(f"/v1/agent/service/maintenance/{sid}", [("enable", "true")])
    assert reply.status == 404, reply
    assert reply.text.startswith(f'Unknown service ID "{sid}"')


async def test_service_maintenance_missing_id_is_400(api: Client) -> None:
    reply = await api.put("/v1/agent/service/maintenance/", [("enable", "true")])
    assert reply.status == 400, reply
    assert reply.text == "Missing service ID"


# --------------------------------------------------------------------------------------------- node maintenance


@pytest.mark.parametrize(
    ("reason", "notes"),
    [
        pytest.param("kernel upgrade", "kernel upgrade", id="with-reason"),
        pytest.param(None, NODE_DEFAULT_REASON, id="default-reason"),
    ],
)
async def test_node_maintenance(api: Client, reason: str | None, notes: str) -> None:
    a, b = uid("nm-a"), uid("nm-b")
    await api.register_service({"Name": a})
    await api.register_service({"Name": b, "Check": {"TTL": "30s", "Status": "passing"}})
    params = [("enable", "true")] + ([("reason", reason)] if reason is not None else [])
    api.cleanups.append(lambda: api.put("/v1/agent/maintenance", [("enable", "false")]))
    reply = await api.put("/v1/agent/maintenance", params)
    assert reply.status == 200, reply
    check = (await api.agent_checks())["_node_maintenance"]
    assert (check["Name"], check["Status"], check["Notes"], check["ServiceID"]) == (
        "Node Maintenance Mode",
        "critical",
        notes,
        "",
    )
    for svc in (a, b):
        entries = (await api.get(f"/v1/health/service/{svc}")).json()
        ids = [c["CheckID"] for c in entries[0]["Checks"]]
        assert ids[:2] == ["_node_maintenance", "serfHealth"], ids  # node-level checks first, sorted by CheckID
        assert (await api.get(f"/v1/health/service/{svc}", [("passing", None)])).json() == []
    assert (await api.put("/v1/agent/maintenance", [("enable", "false")])).status == 200
    assert "_node_maintenance" not in await api.agent_checks()
    assert len((await api.get(f"/v1/health/service/{b}", [("passing", None)])).json()) == 1


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        pytest.param([], "Missing value for enable", id="missing"),
        pytest.param([("enable", "yes")], 'Invalid value for enable: "yes"', id="bad"),
    ],
)
async def test_node_maintenance_errors(api: Client, params: list[tuple[str, str]], expected: str) -> None:
    reply = await api.put("/v1/agent/maintenance", params)
    assert reply.status == 400, reply
    assert reply.text == expected
    assert "_node_maintenance" not in await api.agent_checks()


# --------------------------------------------------------------------------------------------- agent health (3.8)


@pytest.mark.parametrize(
    ("verb", "code", "word"),
    [
        pytest.param("pass", 200, "passing", id="passing-200"),
        pytest.param("warn", 429, "warning", id="warning-429"),
        pytest.param("fail", 503, "critical", id="critical-503"),
    ],
)
async def test_agent_health_by_id(api: Client, verb: str, code: int, word: str) -> None:
    name, sid = uid("ah"), uid("ah-id")
    await api.register_service({"Name": name, "ID": sid, "Check": {"TTL": "30s"}})
    assert (await api.put(f"/v1/agent/check/{verb}/service:{sid}")).status == 200
    reply = await api.get(f"/v1/agent/health/service/id/{sid}")
    assert reply.status == code, reply
    body = reply.json()
    assert body["AggregatedStatus"] == word
    assert body["Service"]["ID"] == sid
    assert body["Service"]["Service"] == name
    assert [c["CheckID"] for c in body["Checks"]] == [f"service:{sid}"]
    text = await api.get(f"/v1/agent/health/service/id/{sid}", [("format", "text")])
    assert (text.status, text.text) == (code, word)
    accept = await api.get(f"/v1/agent/health/service/id/{sid}", headers={"Accept": "text/plain"})
    assert (accept.status, accept.text) == (code, word)


async def test_agent_health_maintenance_and_no_checks(api: Client) -> None:
    bare, maint = uid("bare"), uid("inmaint")
    await api.register_service({"Name": bare})
    await api.register_service({"Name": maint, "Check": {"TTL": "30s", "Status": "passing"}})
    reply = await api.get(f"/v1/agent/health/service/id/{bare}", [("format", "text")])
    assert (reply.status, reply.text) == (200, "passing")
    assert (await api.put(f"/v1/agent/service/maintenance/{maint}", [("enable", "true")])).status == 200
    reply = await api.get(f"/v1/agent/health/service/id/{maint}")
    assert reply.status == 503, reply
    assert reply.json()["AggregatedStatus"] == "maintenance"


async def test_agent_health_by_name_worst_wins(api: Client) -> None:
    name = uid("byname")
    await api.register_service({"Name": name, "ID": f"{name}-1", "Check": {"TTL": "30s", "Status": "passing"}})
    await api.register_service({"Name": name, "ID": f"{name}-2", "Check": {"TTL": "30s", "Status": "warning"}})
    reply = await api.get(f"/v1/agent/health/service/name/{name}")
    assert reply.status == 429, reply
    body = reply.json()
    assert isinstance(body, list)
    assert sorted(e["Service"]["ID"] for e in body) == [f"{name}-1", f"{name}-2"]
    assert sorted(e["AggregatedStatus"] for e in body) == ["passing", "warning"]
    assert (await api.put(f"/v1/agent/check/fail/service:{name}-1")).status == 200
    text = await api.get(f"/v1/agent/health/service/name/{name}", [("format", "text")])
    assert (text.status, text.text) == (503, "critical")


async def test_agent_health_unknown(api: Client) -> None:
    sid = uid("nohealth")
    reply = await api.get(f"/v1/agent/health/service/id/{sid}", [("format", "text")])
    assert reply.status == 404, reply
    assert reply.text == f"ServiceId {sid} not found"
    reply = await api.get(f"/v1/agent/health/service/id/{sid}")
    assert reply.status == 404, reply
    reply = await api.get(f"/v1/agent/health/service/name/{sid}")
    assert reply.status == 404, reply
    assert reply.json() == []
    reply = await api.get(f"/v1/agent/health/service/name/{sid}", [("format", "text")])
    assert (reply.status, reply.text) == (404, f"ServiceName {sid} Not Found")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        pytest.param("/v1/agent/health/service/id/", "Missing serviceID", id="id"),
        pytest.param("/v1/agent/health/service/name/", "Missing service Name", id="name"),
    ],
)
async def test_agent_health_missing_argument(api: Client, path: str, expected: str) -> None:
    reply = await api.get(path)
    assert reply.status == 400, reply
    assert reply.text == expected


# --------------------------------------------------------------------------------------------- self, members, status


async def test_agent_self_shape(api: Client, consul: Any) -> None:
    me = (await api.get("/v1/agent/self")).json()
    assert set(me) == {"Config", "DebugConfig", "Coord", "Member", "Stats", "Meta", "xDS"}
    config = me["Config"]
    assert config["Datacenter"] == "dc1"
    assert config["PrimaryDatacenter"] == "dc1"
    assert config["Server"] is True
    assert isinstance(config["Version"], str)
    assert config["Version"]
    assert config["NodeID"]
    if consul.kind == "dev-agent":
        assert config["NodeName"] == "test-node"
    assert me["DebugConfig"]["DevMode"] is True
    assert me["Stats"]["consul"]["leader"] == "true"
    assert me["Stats"]["consul"]["server"] == "true"
    assert me["Meta"]["consul-network-segment"] == ""
    assert isinstance(me["Meta"]["consul-version"], str)
    assert me["Meta"]["consul-version"]


async def test_agent_self_consistent_with_status_and_members(api: Client) -> None:
    me = (await api.get("/v1/agent/self")).json()
    leader = await api.get("/v1/status/leader")
    assert leader.status == 200, leader
    assert leader.json() == me["Stats"]["consul"]["leader_addr"]
    assert leader.json() != ""
    peers = (await api.get("/v1/status/peers")).json()
    assert me["Stats"]["consul"]["leader_addr"] in peers
    members = (await api.get("/v1/agent/members")).json()
    assert me["Member"] in members
    for member in members:
        assert member["Status"] == 1
        assert member["Name"]
        assert member["Tags"] is not None
    assert me["Member"]["Name"] == me["Config"]["NodeName"]
    assert me["Member"]["Tags"]["dc"] == "dc1"
    assert me["Member"]["Tags"]["role"] == "consul"
    wan = (await api.get("/v1/agent/members", [("wan", "1")])).json()
    assert wan
    assert f"{me['Config']['NodeName']}.dc1" in [m["Name"] for m in wan]


async def test_status_endpoints(api: Client) -> None:
    leader = await api.get("/v1/status/leader")
    peers = await api.get("/v1/status/peers")
    assert leader.status == 200
    assert peers.status == 200
    assert isinstance(leader.json(), str)
    assert ":" in leader.json()
    assert peers.json() == [leader.json()]
    assert (await api.get("/v1/catalog/datacenters")).json() == ["dc1"]
