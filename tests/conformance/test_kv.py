"""KV store: get/put/delete, recurse, keys, separator, raw, flags, empty values, cas, locks, limits, errors.

Reference: consul-api.md sections 6.1-6.3, 6.5, 2.4 (KV indexes) and 12 items 1, 6, 7, 8, 9, 18.
Keys use only [A-Za-z0-9_./-] and no file-like extensions (valid under every 1.2x key validator, 6.4).
"""

from __future__ import annotations

import base64
import struct
from typing import Any

import pytest

from tests.conformance.support import Client

pytestmark = pytest.mark.asyncio


async def entry(api: Client, key: str) -> dict[str, Any]:
    reply = await api.get(f"/v1/kv/{key}")
    assert reply.status == 200, reply
    (item,) = reply.json()
    return dict(item)


async def test_put_get_delete_round_trip(api: Client, kv_prefix: str) -> None:
    key = f"{kv_prefix}foo"
    missing = await api.get(f"/v1/kv/{key}")
    assert missing.status == 404, missing
    assert missing.body == b""
    put = await api.put(f"/v1/kv/{key}", data=b"bar")
    assert put.status == 200, put
    assert put.json() is True
    assert put.headers["Content-Type"].startswith("application/json")
    reply = await api.get(f"/v1/kv/{key}")
    assert reply.status == 200, reply
    (item,) = reply.json()
    assert set(item) >= {"LockIndex", "Key", "Flags", "Value", "CreateIndex", "ModifyIndex"}
    assert "Session" not in item
    assert item["Key"] == key
    assert base64.b64decode(item["Value"]) == b"bar"
    assert (item["Flags"], item["LockIndex"]) == (0, 0)
    assert item["CreateIndex"] == item["ModifyIndex"]
    assert reply.index == item["ModifyIndex"]  # single-key index == entry ModifyIndex
    deleted = await api.delete(f"/v1/kv/{key}")
    assert (deleted.status, deleted.json()) == (200, True)
    assert (await api.get(f"/v1/kv/{key}")).status == 404
    assert (await api.delete(f"/v1/kv/{key}")).json() is True  # deleting a missing key is fine


async def test_binary_and_empty_values(api: Client, kv_prefix: str) -> None:
    key = f"{kv_prefix}bin"
    blob = struct.pack("i", 1000) + b"\x00\xff"
    await api.kv_put(key, blob)
    assert base64.b64decode((await entry(api, key))["Value"]) == blob
    await api.kv_put(key, b"")
    assert (await entry(api, key))["Value"] is None
    raw = await api.get(f"/v1/kv/{key}", [("raw", None)])
    assert (raw.status, raw.body) == (200, b"")


async def test_modify_index_moves_create_index_stays(api: Client, kv_prefix: str) -> None:
    key = f"{kv_prefix}idx"
    await api.kv_put(key, b"1")
    first = await entry(api, key)
    await api.kv_put(key, b"2")
    second = await entry(api, key)
    assert second["CreateIndex"] == first["CreateIndex"]
    assert second["ModifyIndex"] > first["ModifyIndex"]


async def test_flags_are_overwritten_and_reset(api: Client, kv_prefix: str) -> None:
    key = f"{kv_prefix}flags"
    await api.kv_put(key, b"v")
    assert (await entry(api, key))["Flags"] == 0
    assert (await api.kv_put(key, b"v", [("flags", "50")])).json() is True
    assert (await entry(api, key))["Flags"] == 50
    assert (await api.kv_put(key, b"v", [("flags", "18446744073709551615")])).status == 200
    assert (await entry(api, key))["Flags"] == 18446744073709551615
    await api.kv_put(key, b"v")
    assert (await entry(api, key))["Flags"] == 0


async def test_raw(api: Client, kv_prefix: str) -> None:
    key = f"{kv_prefix}raw"
    await api.kv_put(key, b"<script>alert(1)</script>")
    reply = await api.get(f"/v1/kv/{key}", [("raw", None)])
    assert reply.status == 200, reply
    assert reply.body == b"<script>alert(1)</script>"
    assert reply.headers["Content-Type"] == "text/plain"
    assert reply.headers["X-Content-Type-Options"] == "nosniff"
    assert reply.headers["Content-Security-Policy"] == "sandbox"
    assert reply.headers["Content-Length"] == str(len(reply.body))
    assert reply.index >= 1
    missing = await api.get(f"/v1/kv/{kv_prefix}nope", [("raw", None)])
    assert missing.status == 404


async def test_recurse(api: Client, kv_prefix: str) -> None:
    base = f"{kv_prefix}foo/"
    assert (await api.get(f"/v1/kv/{base}", [("recurse", None)])).status == 404
    await api.kv_put(base, b"")
    assert len((await api.get(f"/v1/kv/{base}", [("recurse", None)])).json()) == 1
    for n in (3, 1, 2):
        await api.kv_put(f"{base}bar{n}", str(n).encode())
    await api.kv_put(f"{kv_prefix}foobar", b"outside")
    items = (await api.get(f"/v1/kv/{base}", [("recurse", None)])).json()
    assert [x["Key"] for x in items] == [base, f"{base}bar1", f"{base}bar2", f"{base}bar3"]
    assert [x["Value"] and base64.b64decode(x["Value"]) for x in items] == [None, b"1", b"2", b"3"]
    # A prefix need not end at a separator.
    items = (await api.get(f"/v1/kv/{kv_prefix}foo", [("recurse", None)])).json()
    assert [x["Key"] for x in items] == [base, f"{base}bar1", f"{base}bar2", f"{base}bar3", f"{kv_prefix}foobar"]
    # ?raw is ignored with recurse.
    assert isinstance((await api.get(f"/v1/kv/{base}", [("recurse", None), ("raw", None)])).json(), list)


async def test_keys_and_separator(api: Client, kv_prefix: str) -> None:
    p = kv_prefix
    for key in ("bar", "base/foo", "base/base/foo", "base/base/zed", "base/zzz/deep/er"):
        await api.kv_put(f"{p}{key}", b"1")
    keys = (await api.get(f"/v1/kv/{p}base/", [("keys", None)])).json()
    assert keys == [f"{p}base/base/foo", f"{p}base/base/zed", f"{p}base/foo", f"{p}base/zzz/deep/er"]
    keys = (await api.get(f"/v1/kv/{p}base/", [("keys", None), ("separator", "/")])).json()
    assert keys == [f"{p}base/base/", f"{p}base/foo", f"{p}base/zzz/"]
    keys = (await api.get(f"/v1/kv/{p}base/", [("keys", None), ("seperator", "/")])).json()
    assert keys == [f"{p}base/base/", f"{p}base/foo", f"{p}base/zzz/"]
    keys = (await api.get(f"/v1/kv/{p}", [("keys", None), ("separator", "/")])).json()
    assert keys == [f"{p}bar", f"{p}base/"]
    missing = await api.get(f"/v1/kv/{p}nothing/", [("keys", None)])
    assert (missing.status, missing.body) == (404, b"")
    assert "X-Consul-Index" in missing.headers
    root = await api.get("/v1/kv/", [("keys", None)])
    assert root.status == 200, root
    assert isinstance(root.json(), list)


async def test_missing_key_name(api: Client) -> None:
    for method in ("GET", "PUT", "DELETE"):
        reply = await api.request(method, "/v1/kv/")
        assert (reply.status, reply.text) == (400, "Missing key name"), method


async def test_cas_put(api: Client, kv_prefix: str) -> None:
    key = f"{kv_prefix}cas"
    assert (await api.kv_put(key, b"bar", [("cas", "50")])).json() is False  # absent key, N>0
    assert (await api.kv_put(key, b"bar", [("cas", "0")])).json() is True  # create-only
    assert (await api.kv_put(key, b"again", [("cas", "0")])).json() is False  # exists now
    index = (await entry(api, key))["ModifyIndex"]
    assert (await api.kv_put(key, b"bar2", [("cas", str(index - 1))])).json() is False
    assert (await api.kv_put(key, b"bar2", [("cas", str(index))])).json() is True
    assert base64.b64decode((await entry(api, key))["Value"]) == b"bar2"


async def test_cas_delete(api: Client, kv_prefix: str) -> None:
    key = f"{kv_prefix}casdel"
    await api.kv_put(key, b"bar")
    before = await api.get(f"/v1/kv/{key}")
    index = before.json()[0]["ModifyIndex"]
    assert (await api.delete(f"/v1/kv/{key}", [("cas", str(index - 1))])).json() is False
    assert (await api.delete(f"/v1/kv/{key}", [("cas", "0")])).json() is False  # cas=0 never deletes
    after = await api.get(f"/v1/kv/{key}")
    assert (after.json(), after.index) == (before.json(), before.index)
    assert (await api.delete(f"/v1/kv/{key}", [("cas", str(index))])).json() is True
    assert (await api.get(f"/v1/kv/{key}")).status == 404


async def test_delete_recurse(api: Client, kv_prefix: str) -> None:
    for key in ("foo1", "foo2", "foo3", "other"):
        await api.kv_put(f"{kv_prefix}{key}", b"x")
    assert (await api.delete(f"/v1/kv/{kv_prefix}foo2")).json() is True
    keys = [x["Key"] for x in (await api.get(f"/v1/kv/{kv_prefix}foo", [("recurse", None)])).json()]
    assert keys == [f"{kv_prefix}foo1", f"{kv_prefix}foo3"]
    assert (await api.delete(f"/v1/kv/{kv_prefix}foo", [("recurse", None)])).json() is True
    assert (await api.get(f"/v1/kv/{kv_prefix}foo", [("recurse", None)])).status == 404
    assert (await api.get(f"/v1/kv/{kv_prefix}other")).status == 200


@pytest.mark.parametrize(
    ("method", "params"),
    [
        pytest.param("PUT", [("cas", "0"), ("acquire", "SESSION")], id="put-cas-acquire"),
        pytest.param("PUT", [("acquire", "SESSION"), ("release", "SESSION")], id="put-acquire-release"),
        pytest.param("PUT", [("cas", "1"), ("release", "SESSION")], id="put-cas-release"),
        pytest.param("DELETE", [("recurse", None), ("cas", "1")], id="delete-recurse-cas"),
    ],
)
async def test_conflicting_flags_are_400(
    api: Client, kv_prefix: str, method: str, params: list[tuple[str, str | None]]
) -> None:
    session = await api.create_session()
    params = [(k, session if v == "SESSION" else v) for k, v in params]
    key = f"{kv_prefix}conflict"
    await api.kv_put(key, b"orig")
    reply = await api.request(method, f"/v1/kv/{key}", params, data=b"new" if method == "PUT" else None)
    assert reply.status == 400, reply
    assert reply.text.startswith("Conflicting flags: "), reply
    assert reply.text.endswith("\n")
    assert base64.b64decode((await entry(api, key))["Value"]) == b"orig"


@pytest.mark.parametrize(
    ("method", "params", "fragment"),
    [
        pytest.param("PUT", [("flags", "abc")], 'parsing "abc": invalid syntax', id="put-flags"),
        pytest.param("PUT", [("flags", "-1")], 'parsing "-1": invalid syntax', id="put-flags-negative"),
        pytest.param("PUT", [("cas", "abc")], 'parsing "abc": invalid syntax', id="put-cas"),
        pytest.param("DELETE", [("cas", "x1")], 'parsing "x1": invalid syntax', id="delete-cas"),
    ],
)
async def test_non_numeric_flags_and_cas_are_500(
    api: Client, kv_prefix: str, method: str, params: list[tuple[str, str]], fragment: str
) -> None:
    key = f"{kv_prefix}num"
    await api.kv_put(key, b"orig")
    reply = await api.request(method, f"/v1/kv/{key}", params, data=b"new" if method == "PUT" else None)
    assert reply.status == 500, reply
    assert reply.text.startswith("strconv.ParseUint: "), reply
    assert fragment in reply.text
    assert base64.b64decode((await entry(api, key))["Value"]) == b"orig"


async def test_value_size_limit(api: Client, kv_prefix: str) -> None:
    key = f"{kv_prefix}big"
    limit = 512 * 1024
    assert (await api.kv_put(key, b"x" * limit)).status == 200
    reply = await api.kv_put(key, b"y" * (limit + 1))
    assert reply.status == 413, reply
    assert reply.text.startswith(f"Request body({limit + 1} bytes) too large, max size: {limit} bytes. See "), reply
    assert "kv_max_value_size" in reply.text
    assert base64.b64decode((await entry(api, key))["Value"]) == b"x" * limit


# --------------------------------------------------------------------------------------------- locks (6.2, 6.5)


async def test_acquire_release(api: Client, kv_prefix: str) -> None:
    """criteo/py-consul test_kv_acquire_release, plus Session/LockIndex bookkeeping."""
    key = f"{kv_prefix}lock"
    bogus = await api.kv_put(key, b"bar", [("acquire", "foo")])
    assert bogus.status == 500, bogus
    s1 = await api.create_session()
    s2 = await api.create_session()
    assert (await api.kv_put(key, b"1", [("acquire", s1)])).json() is True
    item = await entry(api, key)
    assert (item["Session"], item["LockIndex"]) == (s1, 1)
    assert (await api.kv_put(key, b"2", [("acquire", s2)])).json() is False
    assert (await api.kv_put(key, b"1", [("acquire", s1)])).json() is True  # re-acquire by holder
    assert (await entry(api, key))["LockIndex"] == 1  # not a new acquisition
    assert (await api.kv_put(key, b"1", [("release", "foo")])).json() is False
    assert (await api.kv_put(key, b"2", [("release", s2)])).json() is False
    assert (await api.kv_put(key, b"2", [("release", s1)])).json() is True
    item = await entry(api, key)
    assert "Session" not in item
    assert item["LockIndex"] == 1  # not reset on release
    assert base64.b64decode(item["Value"]) == b"2"  # release updates the value
    assert (await api.kv_put(key, b"3", [("acquire", s2)])).json() is True
    assert (await entry(api, key))["LockIndex"] == 2


async def test_plain_put_ignores_lock_holder(api: Client, kv_prefix: str) -> None:
    key = f"{kv_prefix}plain"
    s1 = await api.create_session()
    assert (await api.kv_put(key, b"locked", [("acquire", s1)])).json() is True
    assert (await api.kv_put(key, b"overwritten")).json() is True
    item = await entry(api, key)
    assert base64.b64decode(item["Value"]) == b"overwritten"
    assert item["Session"] == s1


async def test_lock_delay_blocks_reacquisition_after_invalidation(api: Client, kv_prefix: str) -> None:
    key = f"{kv_prefix}delay"
    s1 = await api.create_session({"LockDelay": "15s"})
    s2 = await api.create_session()
    assert (await api.kv_put(key, b"1", [("acquire", s1)])).json() is True
    assert (await api.put(f"/v1/session/destroy/{s1}")).json() is True
    item = await entry(api, key)  # Behavior release: key kept, lock dropped
    assert "Session" not in item
    assert (await api.kv_put(key, b"2", [("acquire", s2)])).json() is False


async def test_zero_lock_delay_allows_immediate_reacquisition(api: Client, kv_prefix: str) -> None:
    key = f"{kv_prefix}nodelay"
    s1 = await api.create_session({"LockDelay": "0s"})
    s2 = await api.create_session()
    assert (await api.kv_put(key, b"1", [("acquire", s1)])).json() is True
    assert (await api.put(f"/v1/session/destroy/{s1}")).json() is True
    assert (await api.kv_put(key, b"2", [("acquire", s2)])).json() is True


async def test_delete_behavior_removes_held_keys(api: Client, kv_prefix: str) -> None:
    key = f"{kv_prefix}ephemeral"
    session = await api.create_session({"Behavior": "delete", "TTL": "20s"})
    assert (await api.kv_put(key, b"1", [("acquire", session)])).json() is True
    assert (await api.put(f"/v1/session/destroy/{session}")).json() is True
    assert (await api.get(f"/v1/kv/{key}")).status == 404
