"""Sessions (create/destroy/renew/info/list/node, check binding) and transactions (200/409 shapes).

Reference: consul-api.md sections 6.5, 6.6 and py-consul's session/txn tests.
"""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest

from tests.conformance.support import Client, eventually, uid

pytestmark = pytest.mark.asyncio

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


# --------------------------------------------------------------------------------------------- sessions


async def test_session_lifecycle(api: Client) -> None:
    name = uid("my-session")
    node = await api.node_name()
    created = await api.put("/v1/session/create", json_body={"Name": name})
    assert created.status == 200, created
    session_id = created.json()["ID"]
    assert set(created.json()) == {"ID"}
    assert UUID.match(session_id)
    api.cleanups.append(lambda: api.put(f"/v1/session/destroy/{session_id}"))

    info = await api.get(f"/v1/session/info/{session_id}")
    assert info.status == 200, info
    assert info.index >= 1
    (session,) = info.json()
    assert session["ID"] == session_id
    assert session["Name"] == name
    assert session["Node"] == node
    assert session["Behavior"] == "release"
    assert session["LockDelay"] == 15_000_000_000
    assert session["TTL"] == ""
    assert session["NodeChecks"] == ["serfHealth"]
    assert session["ModifyIndex"] >= session["CreateIndex"] >= 1

    listed = await api.get("/v1/session/list")
    assert listed.index >= 1
    assert name in [s["Name"] for s in listed.json()]
    on_node = (await api.get(f"/v1/session/node/{node}")).json()
    assert name in [s["Name"] for s in on_node]

    destroyed = await api.put(f"/v1/session/destroy/{session_id}")
    assert (destroyed.status, destroyed.json()) == (200, True)
    assert name not in [s["Name"] for s in (await api.get("/v1/session/list")).json()]
    gone = await api.get(f"/v1/session/info/{session_id}")
    assert (gone.status, gone.json()) == (200, [])


async def test_session_create_without_body(api: Client) -> None:
    reply = await api.put("/v1/session/create")
    assert reply.status == 200, reply
    session_id = reply.json()["ID"]
    api.cleanups.append(lambda: api.put(f"/v1/session/destroy/{session_id}"))
    (session,) = (await api.get(f"/v1/session/info/{session_id}")).json()
    assert session["Name"] == ""


async def test_session_renew(api: Client) -> None:
    session_id = await api.create_session({"Behavior": "delete", "TTL": "20s"})
    reply = await api.put(f"/v1/session/renew/{session_id}")
    assert reply.status == 200, reply
    (session,) = reply.json()
    assert (session["ID"], session["Behavior"], session["TTL"]) == (session_id, "delete", "20s")


async def test_session_renew_unknown_is_404(api: Client) -> None:
    unknown = "1" * 36
    reply = await api.put(f"/v1/session/renew/{unknown}")
    assert reply.status == 404, reply
    assert reply.text == f"Session id '{unknown}' not found"


async def test_session_info_unknown_is_empty_list(api: Client) -> None:
    reply = await api.get(f"/v1/session/info/{'1' * 36}")
    assert (reply.status, reply.json()) == (200, [])
    assert "X-Consul-Index" in reply.headers


@pytest.mark.parametrize(
    ("body", "status"),
    [
        pytest.param({"Node": "no-such-node-anywhere"}, 500, id="unknown-node"),
        pytest.param({"TTL": "5s"}, 500, id="ttl-below-10s"),
        pytest.param({"TTL": "86401s"}, 500, id="ttl-above-24h"),
        pytest.param({"Behavior": "explode"}, 500, id="bad-behavior"),
    ],
)
async def test_session_create_rejections(api: Client, body: dict[str, Any], status: int) -> None:
    before = len((await api.get("/v1/session/list")).json())
    reply = await api.put("/v1/session/create", json_body=body)
    assert reply.status == status, reply
    assert len((await api.get("/v1/session/list")).json()) == before


async def test_session_create_decode_error(api: Client) -> None:
    reply = await api.put("/v1/session/create", data=b"{nope")
    assert reply.status == 400, reply
    assert reply.text.startswith("Request decode failed: ")


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        pytest.param("PUT", "/v1/session/destroy/", "Missing session", id="destroy"),
        pytest.param("PUT", "/v1/session/renew/", "Missing session", id="renew"),
        pytest.param("GET", "/v1/session/info/", "Missing session", id="info"),
        pytest.param("GET", "/v1/session/node/", "Missing node name", id="node"),
    ],
)
async def test_session_missing_argument(api: Client, method: str, path: str, expected: str) -> None:
    reply = await api.request(method, path)
    assert (reply.status, reply.text) == (400, expected)


async def test_critical_check_invalidates_bound_session(api: Client, kv_prefix: str) -> None:
    cid = uid("guard")
    await api.register_check({"Name": cid, "TTL": "30s", "Status": "passing"})
    session_id = await api.create_session({"NodeChecks": ["serfHealth", cid], "LockDelay": "0s"})
    key = f"{kv_prefix}guarded"
    assert (await api.kv_put(key, b"1", [("acquire", session_id)])).json() is True
    assert (await api.put(f"/v1/agent/check/fail/{cid}")).status == 200
    info = await eventually(lambda: api.get(f"/v1/session/info/{session_id}"), lambda r: r.json() == [], timeout=5)
    assert info.json() == []
    (item,) = (await api.get(f"/v1/kv/{key}")).json()
    assert "Session" not in item


async def test_session_cannot_bind_to_critical_check(api: Client) -> None:
    cid = uid("critical")
    await api.register_check({"Name": cid, "TTL": "30s"})  # critical from registration
    reply = await api.put("/v1/session/create", json_body={"NodeChecks": ["serfHealth", cid]})
    assert reply.status == 500, reply


# --------------------------------------------------------------------------------------------- txn


async def test_txn_set_then_get(api: Client, kv_prefix: str) -> None:
    """criteo/py-consul test_transaction."""
    key = f"{kv_prefix}asdf"
    value = b64(b"1")
    reply = await api.put("/v1/txn", json_body=[{"KV": {"Verb": "set", "Key": key, "Value": value}}])
    assert reply.status == 200, reply
    body = reply.json()
    assert body["Errors"] is None
    (result,) = body["Results"]
    assert result["KV"]["Key"] == key
    assert result["KV"]["Value"] is None  # only get/get-tree carry values
    assert result["KV"]["ModifyIndex"] >= 1
    reply = await api.put("/v1/txn", json_body=[{"KV": {"Verb": "get", "Key": key}}])
    assert reply.status == 200, reply
    assert reply.json()["Results"][0]["KV"]["Value"] == value
    assert reply.headers["X-Consul-KnownLeader"] == "true"  # read-only transactions carry leader metadata
    assert "X-Consul-LastContact" in reply.headers


async def test_txn_multiple_verbs(api: Client, kv_prefix: str) -> None:
    a, b, c = f"{kv_prefix}a", f"{kv_prefix}b", f"{kv_prefix}tree/c"
    await api.kv_put(b, b"old")
    index = (await api.get(f"/v1/kv/{b}")).json()[0]["ModifyIndex"]
    ops = [
        {"KV": {"Verb": "set", "Key": a, "Value": b64(b"A"), "Flags": 3}},
        {"KV": {"Verb": "cas", "Key": b, "Value": b64(b"B"), "Index": index}},
        {"KV": {"Verb": "set", "Key": c, "Value": b64(b"C")}},
        {"KV": {"Verb": "check-not-exists", "Key": f"{kv_prefix}nothing"}},
        {"KV": {"Verb": "get-tree", "Key": f"{kv_prefix}tree/"}},
        {"KV": {"Verb": "delete", "Key": a}},
    ]
    reply = await api.put("/v1/txn", json_body=ops)
    assert reply.status == 200, reply
    body = reply.json()
    assert body["Errors"] is None
    kv_results = [r["KV"] for r in body["Results"]]
    assert [r["Key"] for r in kv_results] == [a, b, c, c]  # check-not-exists and delete produce no result
    assert kv_results[3]["Value"] == b64(b"C")
    assert (await api.get(f"/v1/kv/{a}")).status == 404
    assert base64.b64decode((await api.get(f"/v1/kv/{b}")).json()[0]["Value"]) == b"B"


@pytest.mark.parametrize(
    ("failing_op", "what"),
    [
        pytest.param({"KV": {"Verb": "check-index", "Key": "EXISTING", "Index": 1}}, None, id="check-index-mismatch"),
        pytest.param({"KV": {"Verb": "get", "Key": "MISSING"}}, "doesn't exist", id="get-missing"),
        pytest.param(
            {"KV": {"Verb": "lock", "Key": "EXISTING", "Value": ""}}, "missing session", id="lock-without-session"
        ),
        pytest.param({"KV": {"Verb": "cas", "Key": "EXISTING", "Value": "", "Index": 1}}, None, id="cas-mismatch"),
    ],
)
async def test_txn_rollback_is_409(api: Client, kv_prefix: str, failing_op: dict[str, Any], what: str | None) -> None:
    existing, missing, fresh = f"{kv_prefix}existing", f"{kv_prefix}missing", f"{kv_prefix}fresh"
    await api.kv_put(existing, b"keep")
    failing_op["KV"]["Key"] = existing if failing_op["KV"]["Key"] == "EXISTING" else missing
    ops = [{"KV": {"Verb": "set", "Key": fresh, "Value": b64(b"x")}}, failing_op]
    reply = await api.put("/v1/txn", json_body=ops)
    assert reply.status == 409, reply
    assert reply.headers["Content-Type"].startswith("application/json")
    body = reply.json()
    assert body["Results"] is None
    (error,) = body["Errors"]
    assert error["OpIndex"] == 1
    assert isinstance(error["What"], str)
    assert error["What"]
    if what is not None:
        assert what in error["What"]
    assert (await api.get(f"/v1/kv/{fresh}")).status == 404  # atomic: the set was rolled back
    assert base64.b64decode((await api.get(f"/v1/kv/{existing}")).json()[0]["Value"]) == b"keep"


async def test_txn_bad_body_is_400(api: Client) -> None:
    reply = await api.put("/v1/txn", data=b"{not json")
    assert reply.status == 400, reply
    assert reply.text.startswith("Failed to parse body: ")


async def test_txn_too_many_operations_is_413(api: Client, kv_prefix: str) -> None:
    ops = [{"KV": {"Verb": "get", "Key": f"{kv_prefix}k{i}"}} for i in range(129)]
    reply = await api.put("/v1/txn", json_body=ops)
    assert reply.status == 413, reply
    assert reply.text == "Transaction contains too many operations (129 > 128)"
