"""Agent endpoints: registration identity and validation, state carry-over, maintenance, agent health, hashes."""

from __future__ import annotations

import asyncio

import pytest

from tests.devagent.support import Api


async def test_check_ids_names_and_initial_status(api: Api) -> None:
    await api.register({"name": "one", "check": {"ttl": "10s"}})
    await api.register({"name": "multi", "id": "multi-1", "checks": [{"ttl": "10s"}, {"ttl": "10s"}, {}]})
    checks = (await api.get("/v1/agent/checks")).json()
    assert sorted(checks) == ["service:multi-1:1", "service:multi-1:2", "service:one"]
    assert checks["service:one"]["Name"] == "Service 'one' check"
    assert {c["Status"] for c in checks.values()} == {"critical"}


async def test_reregistration_keeps_status_and_output_even_over_explicit_status(api: Api) -> None:
    await api.register({"Name": "web", "Check": {"TTL": "10s"}})
    await api.put("/v1/agent/check/pass/service:web", params={"note": "fine"})
    await api.register({"Name": "web", "Tags": ["new"], "Check": {"TTL": "10s", "Status": "critical"}})
    check = (await api.get("/v1/agent/checks")).json()["service:web"]
    assert (check["Status"], check["Output"]) == ("passing", "fine")
    assert (await api.get("/v1/agent/services")).json()["web"]["Tags"] == ["new"]


@pytest.mark.parametrize(
    ("param", "kept"),
    [
        pytest.param(None, True, id="kept-by-default"),
        pytest.param("", False, id="replace-empty-value"),
        pytest.param("true", False, id="replace-true"),
    ],
)
async def test_replace_existing_checks(api: Api, param: str | None, kept: bool) -> None:
    await api.register({"Name": "web", "Checks": [{"CheckID": "a", "TTL": "10s"}, {"CheckID": "b", "TTL": "10s"}]})
    params = {"replace-existing-checks": param} if param is not None else {}
    await api.register({"Name": "web", "Checks": [{"CheckID": "a", "TTL": "10s"}]}, **params)
    assert ("b" in (await api.get("/v1/agent/checks")).json()) is kept


async def test_bad_request_changes_nothing(api: Api) -> None:
    await api.register({"Name": "web", "Port": 80, "Check": {"TTL": "10s"}})
    before = (await api.get("/v1/health/service/web")).body
    index = (await api.get("/v1/health/service/web")).index
    for body in (
        {"Name": "web", "Port": 81, "Checks": [{"TTL": "10s"}, {"HTTP": "http://x/"}]},
        {"Name": "web", "Port": 81, "Meta": {"consul-x": "1"}},
        {"Name": "web", "Port": "81"},
        {"Name": "web", "Port": 81, "Weights": {"Passing": 0}},
    ):
        assert (await api.put("/v1/agent/service/register", body)).status == 400
    after = await api.get("/v1/health/service/web")
    assert (after.body, after.index) == (before, index)


async def test_deregister_unknown_and_check_unknown(api: Api) -> None:
    reply = await api.put("/v1/agent/service/deregister/nope")
    assert (reply.status, reply.text) == (
        404,
        'Unknown service ID "nope". Ensure that the service ID is passed, not the service name.',
    )
    reply = await api.put("/v1/agent/check/pass/nope")
    assert (reply.status, reply.text) == (
        404,
        'Unknown check ID "nope". Ensure that the check ID is passed, not the check name.',
    )


async def test_service_maintenance(api: Api) -> None:
    await api.register({"Name": "web"})
    assert (await api.put("/v1/agent/service/maintenance/web", params={"enable": "true", "reason": "r1"})).status == 200
    await api.put("/v1/agent/service/maintenance/web", params={"enable": "true", "reason": "r2"})
    check = (await api.get("/v1/agent/checks")).json()["_service_maintenance:web"]
    assert (check["Name"], check["Status"], check["Notes"]) == ("Service Maintenance Mode", "critical", "r1")
    assert (await api.get("/v1/health/service/web", {"passing": ""})).json() == []
    health = await api.get("/v1/agent/health/service/id/web", {"format": "text"})
    assert (health.status, health.text) == (503, "maintenance")
    await api.put("/v1/agent/service/maintenance/web", params={"enable": "false"})
    assert len((await api.get("/v1/health/service/web", {"passing": ""})).json()) == 1
    bad = await api.put("/v1/agent/service/maintenance/web", params={"enable": "maybe"})
    assert (bad.status, bad.text) == (400, 'Invalid value for enable: "maybe"')
    missing = await api.put("/v1/agent/service/maintenance/web")
    assert (missing.status, missing.text) == (400, "Missing value for enable")


async def test_node_maintenance_makes_every_instance_non_passing(api: Api) -> None:
    await api.register({"Name": "web"})
    await api.put("/v1/agent/maintenance", params={"enable": "1"})
    check = (await api.get("/v1/agent/checks")).json()["_node_maintenance"]
    assert check["Notes"].startswith("Maintenance mode is enabled for this node")
    entry = (await api.get("/v1/health/service/web")).json()[0]
    assert [c["CheckID"] for c in entry["Checks"]] == ["_node_maintenance", "serfHealth"]
    assert (await api.get("/v1/health/service/web", {"passing": "true"})).json() == []


@pytest.mark.parametrize(
    ("action", "code", "word"),
    [
        pytest.param("pass", 200, "passing", id="passing"),
        pytest.param("warn", 429, "warning", id="warning"),
        pytest.param("fail", 503, "critical", id="critical"),
    ],
)
async def test_agent_health_codes(api: Api, action: str, code: int, word: str) -> None:
    await api.register({"Name": "web", "ID": "web-1", "Check": {"TTL": "10s"}})
    await api.put(f"/v1/agent/check/{action}/service:web-1")
    by_id = await api.get("/v1/agent/health/service/id/web-1")
    assert by_id.status == code
    assert by_id.json()["AggregatedStatus"] == word
    by_name = await api.get("/v1/agent/health/service/name/web", {"format": "text"})
    assert (by_name.status, by_name.text) == (code, word)


async def test_service_hash_blocking(api: Api) -> None:
    await api.register({"Name": "web"})
    first = await api.get("/v1/agent/service/web")
    digest = first.headers["X-Consul-ContentHash"]
    assert first.json()["ContentHash"] == digest
    assert "X-Consul-Index" not in first.headers
    pending = asyncio.create_task(api.get("/v1/agent/service/web", {"hash": digest, "wait": "10s"}))
    await asyncio.sleep(0.1)
    assert not pending.done()
    await api.register({"Name": "web", "Port": 9})
    changed = await asyncio.wait_for(pending, 5)
    assert changed.headers["X-Consul-ContentHash"] != digest
    assert changed.json()["Port"] == 9
    missing = await api.get("/v1/agent/service/nope")
    assert (missing.status, missing.text) == (404, "unknown service ID: nope")


async def test_tagged_addresses_are_filled_from_the_address(api: Api) -> None:
    await api.register({"Name": "v4", "Address": "10.0.0.5", "Port": 80})
    await api.register({"Name": "v6", "Address": "2001:db8::1", "Port": 80})
    await api.register({"Name": "none"})
    services = (await api.get("/v1/agent/services")).json()
    assert set(services["v4"]["TaggedAddresses"]) == {"lan_ipv4", "wan_ipv4"}
    assert set(services["v6"]["TaggedAddresses"]) == {"lan_ipv6", "wan_ipv6"}
    assert "TaggedAddresses" not in services["none"]


async def test_output_is_truncated_to_output_max_size(api: Api) -> None:
    await api.put("/v1/agent/check/register", {"Name": "big", "TTL": "10s"})
    await api.put("/v1/agent/check/update/big", {"Status": "passing", "Output": "x" * 5000})
    output = (await api.get("/v1/agent/checks")).json()["big"]["Output"]
    assert output == "x" * 4096 + " ... (captured 4096 of 5000 bytes)"


async def test_script_checks_are_refused_unless_enabled(api: Api) -> None:
    reply = await api.put("/v1/agent/check/register", {"Name": "s", "Args": ["/bin/true"], "Interval": "10s"})
    assert reply.status == 500
    assert reply.text.startswith("Scripts are disabled on this agent")


async def test_check_reregistration_keeps_live_state(api: Api) -> None:
    await api.put("/v1/agent/check/register", {"Name": "c", "TTL": "10s"})
    await api.put("/v1/agent/check/warn/c", params={"note": "slow"})
    await api.put("/v1/agent/check/register", {"Name": "c", "TTL": "20s", "Notes": "updated"})
    check = (await api.get("/v1/agent/checks")).json()["c"]
    assert (check["Status"], check["Output"], check["Notes"]) == ("warning", "slow", "updated")
