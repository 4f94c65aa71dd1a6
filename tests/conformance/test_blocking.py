"""Blocking queries: index semantics per endpoint, wake-ups, timeouts, wait parsing and bounds.

Reference: consul-api.md sections 2.1-2.4 and 12 items 1-6. Waits are short (1-2 s) and bounds loose: this checks
semantics, not timing.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conformance.support import Client, uid

pytestmark = pytest.mark.asyncio

SLACK = 1.5  # generous scheduling slack for a loaded 2-core CI box


async def assert_pending(task: asyncio.Task[Any], for_s: float = 0.4) -> None:
    await asyncio.sleep(for_s)
    assert not task.done(), task.result() if task.done() else None


async def test_non_blocking_without_index(api: Client) -> None:
    for params in ([], [("index", "0")], [("index", "0"), ("wait", "5s")], [("wait", "5s")]):
        reply = await api.get("/v1/catalog/services", params)
        assert reply.status == 200, reply
        assert reply.elapsed < 1.0, params


async def test_index_never_zero(api: Client, kv_prefix: str) -> None:
    paths = [
        f"/v1/kv/{kv_prefix}missing",
        "/v1/catalog/services",
        "/v1/catalog/nodes",
        f"/v1/catalog/service/{uid('none')}",
        f"/v1/health/service/{uid('none')}",
        "/v1/health/state/any",
        "/v1/session/list",
    ]
    for path in paths:
        reply = await api.get(path)
        assert reply.index >= 1, path


async def test_missing_key_404_carries_whole_kv_index(api: Client, kv_prefix: str) -> None:
    key = f"{kv_prefix}written"
    await api.kv_put(key, b"v")
    written = (await api.get(f"/v1/kv/{key}")).json()[0]["ModifyIndex"]
    missing = await api.get(f"/v1/kv/{kv_prefix}missing")
    assert missing.status == 404
    assert missing.index == written
    never_used = await api.get(f"/v1/kv/{uid('never')}/", [("recurse", None)])
    assert never_used.status == 404
    assert never_used.index == written  # a prefix that never had keys reports the whole-KV index


async def test_missing_key_blocking_wakes_only_when_key_appears(api: Client, kv_prefix: str) -> None:
    target, other = f"{kv_prefix}target", f"{kv_prefix}other"
    index = (await api.get(f"/v1/kv/{target}")).index
    waiter = asyncio.create_task(api.get(f"/v1/kv/{target}", [("index", str(index)), ("wait", "8s")], timeout=20))
    await assert_pending(waiter)
    await api.kv_put(other, b"unrelated")  # bumps the KV index, but the key is still missing
    await assert_pending(waiter, 0.6)
    await api.kv_put(target, b"hello")
    reply = await asyncio.wait_for(waiter, 5)
    assert reply.status == 200, reply
    assert reply.json()[0]["Key"] == target
    assert reply.index == reply.json()[0]["ModifyIndex"]
    assert reply.elapsed < 6


async def test_missing_key_blocking_times_out_with_404(api: Client, kv_prefix: str) -> None:
    key = f"{kv_prefix}never"
    index = (await api.get(f"/v1/kv/{key}")).index
    reply = await api.get(f"/v1/kv/{key}", [("index", str(index)), ("wait", "1s")])
    assert reply.status == 404, reply
    assert reply.index >= index
    assert 0.9 <= reply.elapsed < 1 + 1 / 16 + SLACK


async def test_single_key_blocking_wakes_on_write(api: Client, kv_prefix: str) -> None:
    key = f"{kv_prefix}watched"
    await api.kv_put(key, b"1")
    index = (await api.get(f"/v1/kv/{key}")).index
    same = await api.get(f"/v1/kv/{key}", [("index", str(index)), ("wait", "20ms")])  # py-consul test_kv_wait
    assert same.index == index
    waiter = asyncio.create_task(api.get(f"/v1/kv/{key}", [("index", str(index)), ("wait", "8s")], timeout=20))
    await assert_pending(waiter)
    await api.kv_put(key, b"2")
    reply = await asyncio.wait_for(waiter, 5)
    assert reply.index > index
    assert reply.index == reply.json()[0]["ModifyIndex"]


async def test_prefix_index_bumps_on_delete(api: Client, kv_prefix: str) -> None:
    await api.kv_put(f"{kv_prefix}dir/a", b"1")
    await api.kv_put(f"{kv_prefix}dir/b", b"2")
    listing = await api.get(f"/v1/kv/{kv_prefix}dir/", [("recurse", None)])
    keys = await api.get(f"/v1/kv/{kv_prefix}dir/", [("keys", None)])
    assert listing.index == keys.index == max(e["ModifyIndex"] for e in listing.json())
    waiter = asyncio.create_task(
        api.get(
            f"/v1/kv/{kv_prefix}dir/", [("recurse", None), ("index", str(listing.index)), ("wait", "8s")], timeout=20
        )
    )
    await assert_pending(waiter)
    assert (await api.delete(f"/v1/kv/{kv_prefix}dir/b")).json() is True
    reply = await asyncio.wait_for(waiter, 5)
    assert reply.index > listing.index  # the tombstone keeps the prefix index monotonic
    assert [e["Key"] for e in reply.json()] == [f"{kv_prefix}dir/a"]


async def test_index_ahead_waits_full_wait_then_returns_lower_index(api: Client) -> None:
    current = (await api.get("/v1/catalog/services")).index
    reply = await api.get("/v1/catalog/services", [("index", str(current + 1000)), ("wait", "1s")])
    assert reply.status == 200, reply
    assert reply.index == current
    assert 0.95 <= reply.elapsed < 1 + 1 / 16 + SLACK


@pytest.mark.parametrize(
    ("wait", "seconds"),
    [
        pytest.param("2s", 2.0, id="2s"),
        pytest.param("1500ms", 1.5, id="1500ms"),
        pytest.param("0.03m", 1.8, id="0.03m"),
    ],
)
async def test_wait_bounds_include_jitter(api: Client, wait: str, seconds: float) -> None:
    current = (await api.get("/v1/catalog/nodes")).index
    reply = await api.get("/v1/catalog/nodes", [("index", str(current + 10)), ("wait", wait)])
    assert reply.index == current
    assert seconds - 0.05 <= reply.elapsed <= seconds * (1 + 1 / 16) + SLACK


async def test_wait_above_max_is_clamped_not_rejected(api: Client, kv_prefix: str) -> None:
    key = f"{kv_prefix}clamp"
    await api.kv_put(key, b"1")
    index = (await api.get(f"/v1/kv/{key}")).index
    waiter = asyncio.create_task(api.get(f"/v1/kv/{key}", [("index", str(index)), ("wait", "20m")], timeout=20))
    await assert_pending(waiter)
    await api.kv_put(key, b"2")
    reply = await asyncio.wait_for(waiter, 5)
    assert reply.status == 200, reply
    assert reply.index > index


async def test_per_service_index_bumped_by_check_change(api: Client) -> None:
    name = uid("svcidx")
    await api.register_service({"Name": name, "Check": {"TTL": "30s"}})
    health = await api.get(f"/v1/health/service/{name}")
    catalog = await api.get(f"/v1/catalog/service/{name}")
    assert health.index == catalog.index
    waiter = asyncio.create_task(
        api.get(f"/v1/health/service/{name}", [("index", str(health.index)), ("wait", "8s")], timeout=20)
    )
    await assert_pending(waiter)
    assert (await api.put(f"/v1/agent/check/pass/service:{name}")).status == 200
    reply = await asyncio.wait_for(waiter, 5)
    assert reply.index > health.index
    assert reply.json()[0]["Checks"][-1]["Status"] == "passing"
    assert (await api.get(f"/v1/catalog/service/{name}")).index == reply.index


async def test_per_service_index_bumped_by_node_check_change(api: Client) -> None:
    name = uid("nodeidx")
    await api.register_service({"Name": name})
    before = (await api.get(f"/v1/health/service/{name}")).index
    api.cleanups.append(lambda: api.put("/v1/agent/maintenance", [("enable", "false")]))
    assert (await api.put("/v1/agent/maintenance", [("enable", "true")])).status == 200
    after = await api.get(f"/v1/health/service/{name}")
    assert after.index > before
    assert (await api.put("/v1/agent/maintenance", [("enable", "false")])).status == 200


async def test_other_service_changes_do_not_advance_index(api: Client) -> None:
    a, b = uid("quiet"), uid("noisy")
    await api.register_service({"Name": a})
    await api.register_service({"Name": b, "Check": {"TTL": "30s"}})
    index = (await api.get(f"/v1/health/service/{a}")).index
    waiter = asyncio.create_task(api.get(f"/v1/health/service/{a}", [("index", str(index)), ("wait", "1s")]))
    await asyncio.sleep(0.2)
    assert (await api.put(f"/v1/agent/check/pass/service:{b}")).status == 200
    await api.register_service({"Name": b, "Port": 1234, "Check": {"TTL": "30s"}})
    reply = await asyncio.wait_for(waiter, 5)
    assert reply.index == index  # a spurious wake-up is allowed; an index advance is not


async def test_catalog_services_blocking_wakes_on_registration(api: Client) -> None:
    index = (await api.get("/v1/catalog/services")).index
    waiter = asyncio.create_task(api.get("/v1/catalog/services", [("index", str(index)), ("wait", "8s")], timeout=20))
    await assert_pending(waiter)
    name = uid("newsvc")
    await api.register_service({"Name": name})
    reply = await asyncio.wait_for(waiter, 5)
    assert reply.index > index
    assert name in reply.json()


async def test_catalog_nodes_blocking_wakes_on_catalog_register(api: Client) -> None:
    index = (await api.get("/v1/catalog/nodes")).index
    waiter = asyncio.create_task(api.get("/v1/catalog/nodes", [("index", str(index)), ("wait", "8s")], timeout=20))
    await assert_pending(waiter)
    node = uid("newnode")
    reply = await api.put("/v1/catalog/register", json_body={"Node": node, "Address": "10.8.0.1"})
    api.cleanups.append(lambda: api.put("/v1/catalog/deregister", json_body={"Node": node}))
    assert reply.status == 200, reply
    woke = await asyncio.wait_for(waiter, 5)
    assert woke.index > index
    assert node in [n["Node"] for n in woke.json()]


async def test_health_state_index_tracks_any_check(api: Client) -> None:
    cid = uid("statechk")
    await api.register_check({"Name": cid, "TTL": "30s"})
    before = (await api.get("/v1/health/state/any")).index
    waiter = asyncio.create_task(
        api.get("/v1/health/state/passing", [("index", str(before)), ("wait", "8s")], timeout=20)
    )
    await assert_pending(waiter)
    assert (await api.put(f"/v1/agent/check/pass/{cid}")).status == 200
    reply = await asyncio.wait_for(waiter, 5)
    assert reply.index > before
    assert cid in [c["CheckID"] for c in reply.json()]


async def test_session_list_blocking(api: Client) -> None:
    """criteo/py-consul test_aio.py::test_session, by raw HTTP."""
    index = (await api.get("/v1/session/list")).index
    waiter = asyncio.create_task(api.get("/v1/session/list", [("index", str(index)), ("wait", "8s")], timeout=20))
    await assert_pending(waiter)
    session_id = await api.create_session({"Name": uid("blocking")})
    reply = await asyncio.wait_for(waiter, 5)
    assert reply.index > index
    assert session_id in [s["ID"] for s in reply.json()]
    waiter = asyncio.create_task(api.get("/v1/session/list", [("index", str(reply.index)), ("wait", "8s")], timeout=20))
    await assert_pending(waiter)
    assert (await api.put(f"/v1/session/destroy/{session_id}")).json() is True
    gone = await asyncio.wait_for(waiter, 5)
    assert session_id not in [s["ID"] for s in gone.json()]


async def test_blocked_response_carries_full_query_meta(api: Client, kv_prefix: str) -> None:
    key = f"{kv_prefix}meta"
    await api.kv_put(key, b"1")
    index = (await api.get(f"/v1/kv/{key}")).index
    reply = await api.get(f"/v1/kv/{key}", [("index", str(index)), ("wait", "300ms")])
    for header in ("X-Consul-Index", "X-Consul-KnownLeader", "X-Consul-LastContact", "X-Consul-Effective-Consistency"):
        assert header in reply.headers
