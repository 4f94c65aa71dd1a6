"""Agent checks: derived identity, register/deregister, TTL pass/warn/fail/update, truncation, expiry,
re-registration state carry-over, replace-existing-checks.

Reference: consul-api.md sections 3.1, 3.3, 3.5, 9 and 12 items 10, 11, 12, 19.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conformance.support import Client, eventually, uid

pytestmark = pytest.mark.asyncio


async def check_of(api: Client, check_id: str) -> dict[str, Any]:
    checks = await api.agent_checks()
    assert check_id in checks, sorted(checks)
    return dict(checks[check_id])


# --------------------------------------------------------------------------------------------- identity (3.1)


async def test_single_check_identity_and_defaults(api: Client) -> None:
    name, sid = uid("one"), uid("one-id")
    await api.register_service({"Name": name, "ID": sid, "Tags": ["t1"], "Check": {"TTL": "30s"}})
    node = await api.node_name()
    check = await check_of(api, f"service:{sid}")
    assert check["CheckID"] == f"service:{sid}"
    assert check["Name"] == f"Service '{name}' check"
    assert check["Status"] == "critical"
    assert check["Notes"] == ""
    assert check["Output"] == ""
    assert check["ServiceID"] == sid
    assert check["ServiceName"] == name
    assert check["ServiceTags"] == ["t1"]
    assert check["Node"] == node
    assert check["Type"] == "ttl"


async def test_several_checks_are_numbered_across_check_and_checks(api: Client) -> None:
    name = uid("multi")
    await api.register_service(
        {"Name": name, "Check": {"TTL": "30s"}, "Checks": [{"TTL": "30s"}, {"TTL": "30s", "Name": "custom"}]}
    )
    checks = await api.agent_checks()
    mine = sorted(c for c in checks if c.startswith(f"service:{name}"))
    assert mine == [f"service:{name}:1", f"service:{name}:2", f"service:{name}:3"]
    assert checks[f"service:{name}:1"]["Name"] == f"Service '{name}' check"
    assert checks[f"service:{name}:3"]["Name"] == "custom"
    health = (await api.get(f"/v1/health/checks/{name}")).json()
    assert [c["CheckID"] for c in health] == mine


async def test_empty_check_objects_are_dropped(api: Client) -> None:
    name = uid("empty")
    await api.register_service({"Name": name, "Checks": [{}, {"TTL": "30s"}]})
    mine = [c for c in await api.agent_checks() if name in c]
    assert mine == [f"service:{name}"]


async def test_explicit_check_id_name_status_notes(api: Client) -> None:
    name, cid = uid("explicit"), uid("chk")
    await api.register_service(
        {"Name": name, "Check": {"CheckID": cid, "Name": "mine", "TTL": "30s", "Status": "passing", "Notes": "n"}}
    )
    check = await check_of(api, cid)
    assert (check["Name"], check["Status"], check["Notes"], check["ServiceID"]) == ("mine", "passing", "n", name)


async def test_service_with_no_checks_is_healthy(api: Client) -> None:
    name = uid("nochk")
    await api.register_service({"Name": name})
    entries = (await api.get(f"/v1/health/service/{name}", [("passing", None)])).json()
    assert [e["Service"]["ID"] for e in entries] == [name]
    assert [c["CheckID"] for c in entries[0]["Checks"]] == ["serfHealth"]


# --------------------------------------------------------------------------------------------- re-registration (3.1)


async def test_reregister_keeps_live_status_and_output(api: Client) -> None:
    name = uid("keep")
    await api.register_service({"Name": name, "Check": {"TTL": "30s"}})
    assert (await api.put(f"/v1/agent/check/pass/service:{name}", [("note", "all good")])).status == 200
    # Even an explicit Status in the new definition does not override the live state.
    await api.register_service({"Name": name, "Port": 99, "Check": {"TTL": "30s", "Status": "critical"}})
    check = await check_of(api, f"service:{name}")
    assert (check["Status"], check["Output"]) == ("passing", "all good")
    catalog = (await api.get(f"/v1/health/checks/{name}")).json()
    assert [c["Status"] for c in catalog] == ["passing"]


async def test_reregister_critical_check_is_not_forced_passing(api: Client) -> None:
    name = uid("keepcrit")
    await api.register_service({"Name": name, "Check": {"TTL": "30s"}})
    await api.register_service({"Name": name, "Check": {"TTL": "30s", "Status": "passing"}})
    assert (await check_of(api, f"service:{name}"))["Status"] == "critical"


async def test_reregister_without_check_keeps_it(api: Client) -> None:
    name = uid("survive")
    await api.register_service({"Name": name, "Check": {"TTL": "30s"}})
    await api.register_service({"Name": name})
    assert f"service:{name}" in await api.agent_checks()


@pytest.mark.parametrize(
    "flag", [pytest.param(None, id="bare-flag"), pytest.param("true", id="true"), pytest.param("", id="empty-value")]
)
async def test_replace_existing_checks_drops_stale_ones(api: Client, flag: str | None) -> None:
    name = uid("replace")
    await api.register_service(
        {"Name": name, "Checks": [{"CheckID": f"{name}-a", "TTL": "30s"}, {"CheckID": f"{name}-b", "TTL": "30s"}]}
    )
    await api.register_service(
        {"Name": name, "Checks": [{"CheckID": f"{name}-b", "TTL": "30s"}]}, [("replace-existing-checks", flag)]
    )
    mine = sorted(c for c in await api.agent_checks() if c.startswith(name))
    assert mine == [f"{name}-b"]
    assert [c["CheckID"] for c in (await api.get(f"/v1/health/checks/{name}")).json()] == [f"{name}-b"]


async def test_replace_existing_checks_false_keeps_them(api: Client) -> None:
    name = uid("noreplace")
    await api.register_service({"Name": name, "Checks": [{"CheckID": f"{name}-a", "TTL": "30s"}]})
    await api.register_service(
        {"Name": name, "Checks": [{"CheckID": f"{name}-b", "TTL": "30s"}]}, [("replace-existing-checks", "false")]
    )
    assert sorted(c for c in await api.agent_checks() if c.startswith(name)) == [f"{name}-a", f"{name}-b"]


# --------------------------------------------------------------------------------------------- check register (3.3)


async def test_check_register_node_level_and_defaults(api: Client) -> None:
    name = uid("nodechk")
    await api.register_check({"Name": name, "TTL": "30s", "Notes": "foo"})
    check = await check_of(api, name)  # ID defaults to Name
    assert check["Notes"] == "foo"
    assert check["Status"] == "critical"
    assert check["ServiceID"] == ""
    assert check["ServiceName"] == ""
    assert check["ServiceTags"] == []
    node = await api.node_name()
    node_checks = (await api.get(f"/v1/health/node/{node}")).json()
    assert name in [c["CheckID"] for c in node_checks]


@pytest.mark.parametrize(
    "service_key",
    [
        pytest.param("ServiceID", id="ServiceID"),
        pytest.param("service_id", id="snake"),
        pytest.param("serviceid", id="lowercase-as-py-consul-sends"),
    ],
)
async def test_check_register_attached_to_service(api: Client, service_key: str) -> None:
    svc, cid = uid("owner"), uid("attached")
    await api.register_service({"Name": svc, "Tags": ["x"]})
    await api.register_check({"Name": "attached check", "ID": cid, service_key: svc, "TTL": "30s", "Status": "warning"})
    check = await check_of(api, cid)
    assert (check["ServiceID"], check["ServiceName"], check["Status"], check["Name"]) == (
        svc,
        svc,
        "warning",
        "attached check",
    )
    entries = (await api.get(f"/v1/health/service/{svc}")).json()
    assert [c["CheckID"] for c in entries[0]["Checks"]] == ["serfHealth", cid]


async def test_check_reregister_overwrites(api: Client) -> None:
    cid = uid("over")
    await api.register_check({"Name": cid, "TTL": "30s", "Notes": "one"})
    await api.register_check({"Name": cid, "TTL": "30s", "Notes": "two"})
    assert (await check_of(api, cid))["Notes"] == "two"


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        pytest.param({"TTL": "10s"}, 400, "Missing check name", id="missing-name"),
        pytest.param({"Name": "c", "TTL": "10s", "Status": "ok"}, 400, "Bad check status", id="bad-status"),
        pytest.param(
            {"Name": "c", "TTL": "10s", "Interval": "10s"},
            400,
            "Invalid check: Interval and TTL cannot both be specified",
            id="ttl-and-interval",
        ),
        pytest.param({"Name": "c"}, 400, "Invalid check: TTL must be > 0 for TTL checks", id="no-type"),
        pytest.param(
            {"Name": "c", "HTTP": "http://127.0.0.1:1/"},
            400,
            "Invalid check: Interval must be > 0 for Script, HTTP",
            id="http-no-interval",
        ),
        pytest.param(
            {"Name": "c", "TTL": "10s", "ServiceID": "no-such-service"},
            404,
            'ServiceID "no-such-service" does not exist',
            id="unknown-service",
        ),
    ],
)
async def test_check_register_errors(api: Client, body: dict[str, Any], status: int, expected: str) -> None:
    reply = await api.put("/v1/agent/check/register", json_body=body)
    assert reply.status == status, reply
    assert reply.text.startswith(expected), reply
    assert "c" not in await api.agent_checks()


async def test_check_deregister(api: Client) -> None:
    cid = uid("gone")
    await api.register_check({"Name": cid, "TTL": "30s"})
    reply = await api.put(f"/v1/agent/check/deregister/{cid}")
    assert reply.status == 200, reply
    assert reply.body == b""
    assert cid not in await api.agent_checks()


async def test_check_deregister_unknown_is_404(api: Client) -> None:
    cid = uid("nocheck")
    reply = await api.put(f"/v1/agent/check/deregister/{cid}")
    assert reply.status == 404, reply
    assert reply.text == f'Unknown check ID "{cid}". Ensure that the check ID is passed, not the check name.'


# --------------------------------------------------------------------------------------------- TTL updates (3.3)


@pytest.mark.parametrize(
    ("verb", "status"),
    [
        pytest.param("pass", "passing", id="pass"),
        pytest.param("warn", "warning", id="warn"),
        pytest.param("fail", "critical", id="fail"),
    ],
)
async def test_ttl_verbs_set_status_and_note_goes_to_output(api: Client, verb: str, status: str) -> None:
    cid = uid("ttl")
    await api.register_check({"Name": cid, "TTL": "30s", "Notes": "static notes"})
    if verb == "fail":  # start from passing so the change is visible
        assert (await api.put(f"/v1/agent/check/pass/{cid}")).status == 200
    reply = await api.put(f"/v1/agent/check/{verb}/{cid}", [("note", f"note for {verb}")])
    assert reply.status == 200, reply
    assert reply.body == b""
    check = await check_of(api, cid)
    assert (check["Status"], check["Output"], check["Notes"]) == (status, f"note for {verb}", "static notes")
    reply = await api.put(f"/v1/agent/check/{verb}/{cid}")
    assert reply.status == 200, reply
    assert (await check_of(api, cid))["Output"] == ""


@pytest.mark.parametrize("verb", ["pass", "warn", "fail", "update"])
async def test_ttl_verbs_unknown_check_is_404(api: Client, verb: str) -> None:
    cid = uid("unknown")
    body = {"Status": "passing"} if verb == "update" else None
    reply = await api.put(f"/v1/agent/check/{verb}/{cid}", json_body=body)
    assert reply.status == 404, reply
    assert reply.text == f'Unknown check ID "{cid}". Ensure that the check ID is passed, not the check name.'


@pytest.mark.parametrize("verb", ["pass", "warn", "fail", "update"])
async def test_ttl_verbs_on_non_ttl_check_are_500(api: Client, upstream: Any, verb: str) -> None:
    cid = uid("http")
    await api.register_check({"Name": cid, "HTTP": f"{upstream.url}/ok", "Interval": "30s"})
    body = {"Status": "passing"} if verb == "update" else None
    reply = await api.put(f"/v1/agent/check/{verb}/{cid}", json_body=body)
    assert reply.status == 500, reply
    assert reply.text == f'CheckID "{cid}" does not have associated TTL'


@pytest.mark.parametrize(
    ("body", "status", "output"),
    [
        pytest.param({"Status": "passing", "Output": "fine"}, "passing", "fine", id="passing"),
        pytest.param({"Status": "warning", "Output": "meh"}, "warning", "meh", id="warning"),
        pytest.param({"Status": "critical"}, "critical", "", id="critical-no-output"),
        pytest.param({"status": "warning", "output": "lower"}, "warning", "lower", id="lowercase-keys"),
    ],
)
async def test_check_update(api: Client, body: dict[str, str], status: str, output: str) -> None:
    cid = uid("upd")
    await api.register_check({"Name": cid, "TTL": "30s", "Status": "passing"})
    reply = await api.put(f"/v1/agent/check/update/{cid}", json_body=body)
    assert reply.status == 200, reply
    check = await check_of(api, cid)
    assert (check["Status"], check["Output"]) == (status, output)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param({"Status": "bogus", "Output": "x"}, "Invalid check status: 'bogus'", id="bogus"),
        pytest.param({"Output": "x"}, "Invalid check status: ''", id="missing-status"),
        pytest.param({"Status": "Passing"}, "Invalid check status: 'Passing'", id="case-sensitive"),
    ],
)
async def test_check_update_status_validation(api: Client, body: dict[str, str], expected: str) -> None:
    cid = uid("updbad")
    await api.register_check({"Name": cid, "TTL": "30s"})
    reply = await api.put(f"/v1/agent/check/update/{cid}", json_body=body)
    assert reply.status == 400, reply
    assert reply.text == expected
    assert (await check_of(api, cid))["Status"] == "critical"


@pytest.mark.parametrize(
    ("max_size", "length", "expected_len"),
    [
        pytest.param(None, 4096, 4096, id="default-at-limit"),
        pytest.param(None, 5000, 4096, id="default-over-limit"),
        pytest.param(10, 25, 10, id="custom-limit"),
    ],
)
async def test_output_truncation(api: Client, max_size: int | None, length: int, expected_len: int) -> None:
    cid = uid("trunc")
    definition: dict[str, Any] = {"Name": cid, "TTL": "30s"}
    if max_size is not None:
        definition["OutputMaxSize"] = max_size
    await api.register_check(definition)
    output = "".join(chr(ord("a") + i % 26) for i in range(length))
    assert (
        await api.put(f"/v1/agent/check/update/{cid}", json_body={"Status": "passing", "Output": output})
    ).status == 200
    got = (await check_of(api, cid))["Output"]
    if length <= expected_len:
        assert got == output
    else:
        assert got == f"{output[:expected_len]} ... (captured {expected_len} of {length} bytes)"


# --------------------------------------------------------------------------------------------- TTL expiry (3.3, 9)


@pytest.mark.parametrize(
    ("note", "expected"),
    [
        pytest.param(None, "TTL expired", id="no-output"),
        pytest.param("last words", "TTL expired (last output before timeout follows): last words", id="with-output"),
    ],
)
async def test_ttl_expiry_output(api: Client, note: str | None, expected: str) -> None:
    cid = uid("expire")
    await api.register_check({"Name": cid, "TTL": "1s"})
    params = [("note", note)] if note is not None else []
    assert (await api.put(f"/v1/agent/check/pass/{cid}", params)).status == 200
    assert (await check_of(api, cid))["Status"] == "passing"
    check = await eventually(lambda: check_of(api, cid), lambda c: c["Status"] == "critical", timeout=6)
    assert (check["Status"], check["Output"]) == ("critical", expected)
    catalog = await eventually(
        lambda: api.get("/v1/health/state/critical"), lambda r: cid in [c["CheckID"] for c in r.json()], timeout=3
    )
    assert cid in [c["CheckID"] for c in catalog.json()]


async def test_ttl_given_as_nanoseconds_expires(api: Client) -> None:
    cid = uid("expire-ns")
    await api.register_check({"Name": cid, "TTL": 700_000_000})
    assert (await api.put(f"/v1/agent/check/warn/{cid}")).status == 200
    check = await eventually(lambda: check_of(api, cid), lambda c: c["Status"] == "critical", timeout=5)
    assert check["Output"] == "TTL expired"


async def test_ttl_timer_restarts_on_every_update(api: Client) -> None:
    cid = uid("refresh")
    await api.register_check({"Name": cid, "TTL": "2s"})
    for _ in range(3):
        assert (await api.put(f"/v1/agent/check/pass/{cid}")).status == 200
        await asyncio.sleep(1.0)
        assert (await check_of(api, cid))["Status"] == "passing"


async def test_identical_ttl_pass_does_not_bump_indexes(api: Client) -> None:
    """A heartbeat with the same Status and Output is a no-op for watchers (2.4)."""
    name = uid("hb")
    await api.register_service({"Name": name, "Check": {"TTL": "30s"}})
    assert (await api.put(f"/v1/agent/check/pass/service:{name}", [("note", "same")])).status == 200
    before = (await api.get(f"/v1/health/service/{name}")).index
    assert (await api.put(f"/v1/agent/check/pass/service:{name}", [("note", "same")])).status == 200
    reply = await api.get(f"/v1/health/service/{name}", [("index", str(before)), ("wait", "1s")])
    assert reply.index == before
    assert reply.elapsed >= 0.9
