"""KV writes (flags, cas, locks), listings, and /v1/txn atomicity."""

from __future__ import annotations

import base64

import pytest

from tests.devagent.support import Api


async def put(api: Api, key: str, value: bytes = b"v", **params: str) -> object:
    return (await api.call("PUT", f"/v1/kv/{key}", params or None, data=value)).json()


async def test_flags_reset_and_empty_value_is_null(api: Api) -> None:
    await put(api, "k", flags="42")
    await put(api, "k", b"")
    entry = (await api.get("/v1/kv/k")).json()[0]
    assert (entry["Flags"], entry["Value"]) == (0, None)


async def test_cas_semantics(api: Api) -> None:
    assert await put(api, "k", cas="0") is True
    assert await put(api, "k", cas="0") is False
    index = (await api.get("/v1/kv/k")).json()[0]["ModifyIndex"]
    assert await put(api, "k", cas=str(index - 1)) is False
    assert await put(api, "k", cas=str(index)) is True
    delete = await api.call("DELETE", "/v1/kv/k", {"cas": "0"})
    assert delete.json() is False
    assert (await api.get("/v1/kv/k")).status == 200


@pytest.mark.parametrize(
    ("method", "params", "status", "text"),
    [
        pytest.param("PUT", {"cas": "1", "acquire": "x"}, 400, "Conflicting flags: acquire=x&cas=1\n", id="put-conflict"),
        pytest.param("DELETE", {"recurse": "", "cas": "1"}, 400, "Conflicting flags: cas=1&recurse=\n", id="del-conflict"),
        pytest.param("PUT", {"flags": "x"}, 500, 'strconv.ParseUint: parsing "x": invalid syntax', id="bad-flags"),
        pytest.param("PUT", {"cas": "-1"}, 500, 'strconv.ParseUint: parsing "-1": invalid syntax', id="bad-cas"),
        pytest.param("PUT", {"acquire": "nope"}, 500, 'invalid session "nope"', id="bad-session"),
    ],
)  # fmt: skip
async def test_write_errors(api: Api, method: str, params: dict[str, str], status: int, text: str) -> None:
    reply = await api.call(method, "/v1/kv/k", params, data=b"v")
    assert (reply.status, reply.text) == (status, text)
    assert (await api.get("/v1/kv/k")).status == 404


async def test_value_limit_413(api: Api) -> None:
    reply = await api.call("PUT", "/v1/kv/big", data=b"x" * (512 * 1024 + 1))
    assert reply.status == 413
    assert reply.text.startswith("Request body(524289 bytes) too large, max size: 524288 bytes. See ")
    assert (await api.call("PUT", "/v1/kv/big", data=b"x" * 512 * 1024)).json() is True


async def test_lock_acquire_release(api: Api) -> None:
    s1 = (await api.put("/v1/session/create", {})).json()["ID"]
    s2 = (await api.put("/v1/session/create", {})).json()["ID"]
    assert await put(api, "lock", acquire=s1) is True
    assert await put(api, "lock", acquire=s2) is False
    assert await put(api, "lock", acquire=s1) is True
    entry = (await api.get("/v1/kv/lock")).json()[0]
    assert (entry["LockIndex"], entry["Session"]) == (1, s1)
    assert await put(api, "lock", release=s2) is False
    assert await put(api, "lock", release=s1) is True
    assert await put(api, "lock", acquire=s2) is True
    assert (await api.get("/v1/kv/lock")).json()[0]["LockIndex"] == 2


async def test_session_delete_behavior_deletes_held_keys(api: Api) -> None:
    sid = (await api.put("/v1/session/create", {"Behavior": "delete", "TTL": "20s"})).json()["ID"]
    renewed = (await api.put(f"/v1/session/renew/{sid}")).json()[0]
    assert (renewed["Behavior"], renewed["TTL"]) == ("delete", "20s")
    await put(api, "owned", acquire=sid)
    assert (await api.put(f"/v1/session/destroy/{sid}")).json() is True
    assert (await api.get("/v1/kv/owned")).status == 404


async def test_keys_with_separator(api: Api) -> None:
    for key in ("bar", "base/foo", "base/base/foo"):
        await put(api, key)
    assert (await api.get("/v1/kv/base/", {"keys": "", "separator": "/"})).json() == ["base/base/", "base/foo"]
    assert (await api.get("/v1/kv/base/", {"keys": "", "seperator": "/"})).json() == ["base/base/", "base/foo"]
    assert (await api.get("/v1/kv/zzz/", {"keys": ""})).status == 404


async def test_raw(api: Api) -> None:
    await put(api, "raw", b"\x00\xffbytes")
    reply = await api.get("/v1/kv/raw", {"raw": ""})
    assert reply.body == b"\x00\xffbytes"
    assert reply.headers["Content-Type"] == "text/plain"
    assert reply.headers["X-Content-Type-Options"] == "nosniff"


def op(verb: str, key: str, value: bytes | None = None, **extra: object) -> dict[str, object]:
    kv: dict[str, object] = {"Verb": verb, "Key": key, **extra}
    if value is not None:
        kv["Value"] = base64.b64encode(value).decode()
    return {"KV": kv}


async def test_txn_commits_at_one_index(api: Api) -> None:
    reply = await api.put("/v1/txn", [op("set", "a", b"1"), op("set", "b", b"2"), op("get", "a")])
    body = reply.json()
    assert reply.status == 200
    assert body["Errors"] is None
    assert body["Results"][0]["KV"]["Value"] is None
    assert body["Results"][2]["KV"]["Value"] == base64.b64encode(b"1").decode()
    a, b = (await api.get("/v1/kv/a")).json()[0], (await api.get("/v1/kv/b")).json()[0]
    assert a["ModifyIndex"] == b["ModifyIndex"]


async def test_txn_rolls_back_on_any_error(api: Api) -> None:
    reply = await api.put("/v1/txn", [op("set", "x", b"1"), op("get", "missing"), op("cas", "y", b"1", Index=99)])
    assert reply.status == 409
    body = reply.json()
    assert body["Results"] is None
    assert body["Errors"] == [
        {"OpIndex": 1, "What": 'key "missing" doesn\'t exist'},
        {"OpIndex": 2, "What": 'failed to set key "y", index is stale'},
    ]
    assert (await api.get("/v1/kv/x")).status == 404
