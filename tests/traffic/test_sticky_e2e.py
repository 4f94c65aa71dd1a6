"""Sticky sessions through a real gateway (issue 9): an opaque cookie pins a client to one instance.

The service has three instances behind round-robin; a client that returns its ``gw_sticky`` cookie keeps its
instance, a client without one rotates. The cookie names no address, survives the instance only as long as the
instance can take it, is re-picked when tampered with, and means the same to every gateway with the same key.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from consulgw.server.gateway import Gateway
from consulgw.settings import Secret
from tests.gateway.conftest import Consul, routed
from tests.policy_e2e.conftest import metric_value, put_policy, unique, wait_for, wait_policy
from tests.support.processes import clean_env, gateway_process

from .support import SUBSETS, cookie_value, fetch, fetch_many

KEY = "traffic-tests-sticky-key-0123456789"
STICKY = {"sticky": {"secure": False}}


async def three_instances(
    gateway: Gateway, consul: Consul, upstreams: Any, policy: dict[str, Any], *, lb: str = "round_robin"
) -> tuple[str, dict[str, str]]:
    """A fresh service with instances one, two, three (upstream name -> Consul service ID)."""
    service = unique("sticky")
    await put_policy(consul, service, {"lb": lb, **policy})
    ids = {}
    for name in ("one", "two", "three"):
        up = await upstreams(name)
        ids[name] = await consul.register(service, up.port, service_id=f"{service}-{name}", tags=["gw.route=/"])
    await wait_for(lambda: routed(gateway, service, 3))
    await wait_policy(gateway, service, {"lb": lb, **policy})
    return service, ids


def sticky_cookie(reply: Any, name: str = "gw_sticky") -> str | None:
    return cookie_value(reply.set_cookies, name)


async def test_a_sticky_client_stays_on_one_instance_and_moves_with_a_new_cookie_when_it_leaves(
    make_gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession
) -> None:
    gateway: Gateway = await make_gateway(sticky_key=Secret(value=KEY))
    service, ids = await three_instances(gateway, consul, upstreams, STICKY)
    # Without the cookie, round-robin rotates over the three.
    anonymous = await fetch_many(http, f"{gateway.url}/a", [None] * 30, concurrency=1)
    assert Counter(r.upstream for r in anonymous) == {"one": 10, "two": 10, "three": 10}

    first = await fetch(http, f"{gateway.url}/a")
    cookie = sticky_cookie(first)
    assert cookie is not None
    line = next(c for c in first.set_cookies if c.startswith("gw_sticky="))
    assert line == f"gw_sticky={cookie}; Path=/; HttpOnly; SameSite=Lax"
    assert "127.0.0.1" not in cookie
    assert str(ids[first.upstream or ""]) not in cookie
    pinned = first.upstream
    replies = await fetch_many(http, f"{gateway.url}/a", [{"Cookie": f"gw_sticky={cookie}"}] * 50, concurrency=1)
    assert {r.upstream for r in replies} == {pinned}
    assert all(sticky_cookie(r) is None for r in replies)  # honoured: not set again

    # The pinned instance is deregistered: the next request succeeds on another one, with a new cookie.
    assert pinned is not None
    await consul.deregister(ids[pinned])
    await wait_for(lambda: routed(gateway, service, 2))
    moved = await fetch(http, f"{gateway.url}/a", headers={"Cookie": f"gw_sticky={cookie}"})
    assert moved.status == 200
    assert moved.upstream not in (None, pinned)
    new_cookie = sticky_cookie(moved)
    assert new_cookie is not None
    assert new_cookie != cookie
    again = await fetch_many(http, f"{gateway.url}/a", [{"Cookie": f"gw_sticky={new_cookie}"}] * 10, concurrency=1)
    assert {r.upstream for r in again} == {moved.upstream}
    assert await metric_value(http, gateway.admin_url, "consulgw_sticky_total", service=service, outcome="repick") == 1


@pytest.mark.parametrize(
    "tampered",
    [
        pytest.param("garbage", id="garbage"),
        pytest.param("", id="empty"),
        pytest.param("0123456789abcdef.00000000", id="well-formed-but-forged"),
        pytest.param("0123456789abcdef", id="token-without-check"),
        pytest.param("é" * 30, id="non-ascii"),
        pytest.param('"quoted"', id="quoted"),
    ],
)
async def test_a_tampered_cookie_is_re_picked_never_an_error(
    make_gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession, tampered: str
) -> None:
    gateway: Gateway = await make_gateway(sticky_key=Secret(value=KEY))
    _service, _ = await three_instances(
        gateway, consul, upstreams, {"sticky": {"secure": False, "on_unavailable": "fail"}}
    )
    reply = await fetch(http, f"{gateway.url}/a", headers={"Cookie": f"gw_sticky={tampered}"})
    assert reply.status == 200
    fresh = sticky_cookie(reply)
    assert fresh is not None
    assert fresh != tampered
    follow = await fetch_many(http, f"{gateway.url}/a", [{"Cookie": f"gw_sticky={fresh}"}] * 5, concurrency=1)
    assert {r.upstream for r in follow} == {reply.upstream}


async def test_a_cookie_of_another_key_or_service_is_re_picked(
    make_gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession
) -> None:
    other: Gateway = await make_gateway(sticky_key=Secret(value="another-key-0123456789abcdef"))
    gateway: Gateway = await make_gateway(sticky_key=Secret(value=KEY))
    service, _ = await three_instances(
        gateway, consul, upstreams, {"sticky": {"secure": False, "on_unavailable": "fail"}}
    )
    await wait_for(lambda: routed(other, service, 3))
    foreign = sticky_cookie(await fetch(http, f"{other.url}/a"))
    reply = await fetch(http, f"{gateway.url}/a", headers={"Cookie": f"gw_sticky={foreign}"})
    assert reply.status == 200
    assert sticky_cookie(reply) not in (None, foreign)
    assert (
        await metric_value(http, gateway.admin_url, "consulgw_sticky_total", service=service, outcome="tampered") == 1
    )


async def test_two_gateway_processes_with_the_same_key_honour_each_others_cookies(
    dev_agent: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    service = unique("sticky")
    await put_policy(consul, service, STICKY)
    for name in ("one", "two", "three"):
        up = await upstreams(name)
        await consul.register(service, up.port, service_id=f"{service}-{name}", tags=["gw.route=/"])

    async def serving(url: str) -> bool:
        try:
            return (await fetch(http, f"{url}/a")).status == 200
        except aiohttp.ClientError:
            return False

    async with (
        gateway_process(dev_agent.url, "--sticky-key", KEY, log=tmp_path / "a.log") as a,
        gateway_process(dev_agent.url, log=tmp_path / "b.log", env=clean_env(CONSULGW_STICKY_KEY=KEY)) as b,
    ):
        await wait_for(lambda: serving(a.url), timeout=30)
        await wait_for(lambda: serving(b.url), timeout=30)
        for made_by, used_by in ((a, b), (b, a)):
            first = await fetch(http, f"{made_by.url}/a")
            cookie = sticky_cookie(first)
            assert cookie is not None
            replies = await fetch_many(
                http, f"{used_by.url}/a", [{"Cookie": f"gw_sticky={cookie}"}] * 20, concurrency=1
            )
            assert {r.upstream for r in replies} == {first.upstream}
            assert all(sticky_cookie(r) is None for r in replies)
        assert "sticky_key_missing" not in a.log_text() + b.log_text()


async def test_without_a_key_the_gateway_warns_once_and_still_pins(
    dev_agent: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    service = unique("sticky")
    await put_policy(consul, service, STICKY)
    up = await upstreams("one")
    await consul.register(service, up.port, service_id=f"{service}-one", tags=["gw.route=/"])
    async with gateway_process(dev_agent.url, "--log-format", "json", log=tmp_path / "gw.log") as gw:

        async def pinned() -> bool:
            try:
                return sticky_cookie(await fetch(http, f"{gw.url}/a")) is not None
            except aiohttp.ClientError:
                return False

        await wait_for(pinned, timeout=30)

        def warnings() -> list[dict[str, Any]]:
            events = [json.loads(line) for line in gw.log_text().splitlines() if line.startswith("{")]
            return [e for e in events if e.get("event") == "sticky_key_missing"]

        await wait_for(lambda: len(warnings()) == 1)
        assert "--sticky-key" in warnings()[0]["reason"]
        # A policy edit builds a new sticky step: no second warning.
        await put_policy(consul, service, {"sticky": {"secure": False, "cookie": "pin"}})

        async def repinned() -> bool:
            return sticky_cookie(await fetch(http, f"{gw.url}/a"), "pin") is not None

        await wait_for(repinned)
        assert len(warnings()) == 1


async def test_on_unavailable_fail_answers_503_while_the_pinned_instance_is_critical(
    make_gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession
) -> None:
    gateway: Gateway = await make_gateway(sticky_key=Secret(value=KEY))
    service, ids = await three_instances(
        gateway, consul, upstreams, {"sticky": {"secure": False, "on_unavailable": "fail"}}
    )
    first = await fetch(http, f"{gateway.url}/a")
    cookie = sticky_cookie(first)
    assert first.upstream is not None
    assert cookie is not None
    await consul.check(ids[first.upstream], "critical")
    await wait_for(lambda: routed(gateway, service, 2))
    failed = await fetch(http, f"{gateway.url}/a", headers={"Cookie": f"gw_sticky={cookie}"})
    assert failed.status == 503
    assert json.loads(failed.body)["error"] == "no_healthy_upstream"
    assert (await fetch(http, f"{gateway.url}/a")).status == 200  # a client without the cookie is served
    await consul.check(ids[first.upstream], "passing")
    await wait_for(lambda: routed(gateway, service, 3))
    back = await fetch(http, f"{gateway.url}/a", headers={"Cookie": f"gw_sticky={cookie}"})
    assert (back.status, back.upstream) == (200, first.upstream)


@pytest.mark.parametrize("keep_draining", [True, False])
async def test_a_drained_instance_keeps_its_sessions_only_with_keep_draining(
    make_gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession, keep_draining: bool
) -> None:
    gateway: Gateway = await make_gateway(sticky_key=Secret(value=KEY))
    policy = {"sticky": {"secure": False, "keep_draining": keep_draining}}
    service, ids = await three_instances(gateway, consul, upstreams, policy)
    first = await fetch(http, f"{gateway.url}/a")
    cookie = sticky_cookie(first)
    assert first.upstream is not None
    assert cookie is not None
    # Drain it the Consul way: Weights.Warning = 0 and its check to warning. It stays healthy and registered.
    drained = first.upstream
    await _drain(consul, gateway, service, ids[drained])
    with_cookie = await fetch_many(http, f"{gateway.url}/a", [{"Cookie": f"gw_sticky={cookie}"}] * 10, concurrency=1)
    newcomers = await fetch_many(http, f"{gateway.url}/a", [None] * 30, concurrency=1)
    assert drained not in {r.upstream for r in newcomers}  # no new sessions either way
    if keep_draining:
        assert {r.upstream for r in with_cookie} == {drained}
        assert all(sticky_cookie(r) is None for r in with_cookie)
    else:
        assert drained not in {r.upstream for r in with_cookie}
        assert sticky_cookie(with_cookie[0]) is not None


async def test_inside_a_split_the_split_decides_the_subset_and_sticky_the_instance(
    make_gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession
) -> None:
    gateway: Gateway = await make_gateway(sticky_key=Secret(value=KEY))
    service = unique("sticky")
    policy = {
        "subsets": SUBSETS,
        "split": {"default": "stable", "weights": {"stable": 50, "canary": 50}, "hash": "cookie"},
        "sticky": {"secure": False},
    }
    await put_policy(consul, service, policy)
    for name, version in (("s1", "v1"), ("s2", "v1"), ("s3", "v1"), ("c1", "v2"), ("c2", "v2")):
        up = await upstreams(name)
        await consul.register(
            service, up.port, service_id=f"{service}-{name}", tags=["gw.route=/"], meta={"version": version}
        )
    await wait_for(lambda: routed(gateway, service, 5))
    await wait_policy(gateway, service, policy)
    seen: dict[int, set[str | None]] = {}
    for client in range(30):
        first = await fetch(http, f"{gateway.url}/a")
        jar = f"gw_split={cookie_value(first.set_cookies, 'gw_split')}; gw_sticky={sticky_cookie(first)}"
        replies = await fetch_many(http, f"{gateway.url}/a", [{"Cookie": jar}] * 10, concurrency=1)
        seen[client] = {first.upstream} | {r.upstream for r in replies}
    assert all(len(instances) == 1 for instances in seen.values()), seen
    assert {i for s in seen.values() for i in s} & {"c1", "c2"}  # some clients are on the canary


async def test_the_hash_balancer_keyed_by_a_header(
    make_gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession
) -> None:
    gateway: Gateway = await make_gateway()
    service, _ = await three_instances(gateway, consul, upstreams, {}, lb="round_robin")
    policy = {"lb": {"type": "hash", "key": "header:X-User-ID"}}
    await put_policy(consul, service, policy)
    await wait_policy(gateway, service, policy)
    by_user: dict[str, set[str | None]] = {}
    for _ in range(5):
        replies = await fetch_many(http, f"{gateway.url}/a", [{"X-User-ID": f"u{i}"} for i in range(60)])
        for i, reply in enumerate(replies):
            by_user.setdefault(f"u{i}", set()).add(reply.upstream)
    assert all(len(instances) == 1 for instances in by_user.values())
    assert len({next(iter(s)) for s in by_user.values()}) == 3  # the users spread over all three


async def _drain(consul: Consul, gateway: Gateway, service: str, service_id: str) -> None:
    view = gateway.view()
    assert view is not None
    instance = next(i for i in view.services[service].snapshot.instances if i.service_id == service_id)
    await consul.register(service, instance.port, service_id=service_id, tags=list(instance.tags), weights=(1, 0))
    await consul.check(service_id, "warning")
    await wait_for(lambda: routed(gateway, service, 2))
