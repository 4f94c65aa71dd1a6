"""Request mirroring through a real gateway (issue 9): copies go to a shadow service in the background.

The primary service is routed at ``/``; the shadow is another Consul service without a route of its own (the
gateway watches it because the policy names it) or a subset of the primary. A mirror never changes, delays or fails
the primary exchange: these tests make the shadow down, slow (10 s) and failing (500) and look at the primary.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from consulgw.server.gateway import Gateway
from tests.gateway.conftest import Consul, Upstream, routed
from tests.policy_e2e.conftest import Switchable, metric_value, put_policy, unique, wait_for, wait_policy
from tests.support.processes import free_port

from .support import SUBSETS, fetch, fetch_many


async def mirrored_service(
    gateway: Gateway, consul: Consul, upstreams: Any, mirror: dict[str, Any], *, shadow_port: int | None = None
) -> tuple[str, Upstream, Upstream | None]:
    """A primary service and a ``<name>-shadow`` service (no route) that ``mirror.to`` may name as ``SHADOW``."""
    service = unique("mirrored")
    shadow_name = f"{service}-shadow"
    primary = await upstreams("primary")
    shadow = None
    if shadow_port is None:
        shadow = await upstreams("shadow")
        shadow_port = shadow.port
    await consul.register(shadow_name, shadow_port, service_id=f"{shadow_name}-1")
    to = [{**t, "service": shadow_name} if t.get("service") == "SHADOW" else t for t in mirror["to"]]
    policy = {"mirror": {**mirror, "to": to}}
    await put_policy(consul, service, policy)
    await consul.register(service, primary.port, service_id=f"{service}-1", tags=["gw.route=/"])
    await wait_for(lambda: routed(gateway, service, 1))
    await wait_policy(gateway, service, policy)
    await wait_for(lambda: routed(gateway, shadow_name, 1))
    return service, primary, shadow


async def test_every_mirrored_get_reaches_the_mirror_target(
    make_gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession
) -> None:
    gateway: Gateway = await make_gateway()
    mirror = {"to": [{"service": "SHADOW"}], "headers": {"remove": ["Authorization"], "set": {"X-Mirror": "1"}}}
    service, primary, shadow = await mirrored_service(gateway, consul, upstreams, mirror)
    assert shadow is not None
    headers = {"Authorization": "Bearer secret-token", "X-Trace": "t1"}
    replies = await fetch_many(http, f"{gateway.url}/orders?page=2", [headers] * 100)
    assert {(r.status, r.upstream) for r in replies} == {(200, "primary")}
    await wait_for(lambda: len(shadow.received) == 100)
    await fetch(http, f"{gateway.url}/not-mirrored", method="POST", data=b"x")  # POST is not in the default methods
    await fetch(http, f"{gateway.url}/head", method="HEAD")
    await wait_for(lambda: len(shadow.received) == 101)
    assert {r["method"] for r in shadow.received} == {"GET", "HEAD"}
    ids = {json.loads(r.body)["headers"]["X-Request-ID"] for r in replies}
    copies = shadow.received[:100]
    assert {dict(c["headers"])["X-Request-ID"] for c in copies} == ids  # the same request, by the same id
    for copy in copies:
        sent = dict(copy["headers"])
        assert copy["raw_path"] == "/orders?page=2"
        assert "Authorization" not in sent  # removed from the copy only
        assert sent["X-Mirror"] == "1"
        assert sent["X-Trace"] == "t1"
    assert all(dict(r["headers"]).get("Authorization") == "Bearer secret-token" for r in primary.received[:100])
    assert (
        await metric_value(
            http, gateway.admin_url, "consulgw_mirror_sent_total", service=service, target=f"service:{service}-shadow"
        )
        == 101
    )


@pytest.mark.parametrize("trouble", ["down", "slow", "500"])
async def test_the_primary_is_unchanged_when_the_mirror_is_down_slow_or_failing(
    make_gateway: Any,
    consul: Consul,
    upstreams: Any,
    http: aiohttp.ClientSession,
    switchables: Any,
    trouble: str,
) -> None:
    gateway: Gateway = await make_gateway()
    shadow_port: int
    if trouble == "down":
        shadow_port = free_port()  # nothing listens there
    elif trouble == "slow":
        shadow_port = (await upstreams("shadow", delay=10.0)).port
    else:
        failing: Switchable = await switchables("shadow")
        failing.status = 500
        shadow_port = failing.port
    mirror = {"to": [{"service": "SHADOW"}], "timeout": "15s"}
    service, primary, _ = await mirrored_service(gateway, consul, upstreams, mirror, shadow_port=shadow_port)
    target = f"service:{service}-shadow"
    for _ in range(20):
        started = time.monotonic()
        reply = await fetch(http, f"{gateway.url}/a?x=1")
        took = time.monotonic() - started
        body = json.loads(reply.body)
        assert (reply.status, reply.upstream, body["raw_path"], body["body_bytes"]) == (200, "primary", "/a?x=1", 0)
        assert took < 5.0  # far below the slow mirror's 10 s: nobody waited for it
    assert len(primary.received) == 20
    if trouble == "down":
        await wait_for(
            lambda: _metric(
                http, gateway, "consulgw_mirror_errors_total", service=service, target=target, kind="connect"
            )
        )
    elif trouble == "500":
        await wait_for(
            lambda: _metric(http, gateway, "consulgw_mirror_status_mismatch_total", service=service, target=target)
        )
    else:
        assert (
            await metric_value(http, gateway.admin_url, "consulgw_mirror_sent_total", service=service, target=target)
            == 20
        )
        # Twenty mirrors are still waiting on the slow shadow: stopping the gateway cancels them, it does not wait.
        started = time.monotonic()
        await gateway.stop()
        assert time.monotonic() - started < 8.0


async def _metric(http: aiohttp.ClientSession, gateway: Gateway, name: str, **labels: str) -> bool:
    return await metric_value(http, gateway.admin_url, name, **labels) == 20


@pytest.mark.parametrize("chunked", [False, True])
async def test_bodies_are_mirrored_up_to_max_body_bytes_and_never_above(
    make_gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession, chunked: bool
) -> None:
    gateway: Gateway = await make_gateway()
    mirror = {"to": [{"service": "SHADOW"}], "methods": ["POST"], "max_body_bytes": 1024}
    service, primary, shadow = await mirrored_service(gateway, consul, upstreams, mirror)
    assert shadow is not None

    async def post(body: bytes) -> None:
        async def stream() -> AsyncIterator[bytes]:
            for start in range(0, len(body), 100):
                yield body[start : start + 100]

        reply = await fetch(http, f"{gateway.url}/up", method="POST", data=stream() if chunked else body)
        assert (reply.status, json.loads(reply.body)["body_bytes"]) == (200, len(body))

    small, exact, large = b"s" * 500, b"e" * 1024, b"L" * 5000
    for body in (small, large, exact, large):
        await post(body)
    assert [r["body"] for r in primary.received] == [small, large, exact, large]
    await wait_for(lambda: len(shadow.received) == 2)
    await asyncio.sleep(0.2)  # nothing else is on its way (the large bodies were never sent)
    assert [r["body"] for r in shadow.received] == [small, exact]
    dropped = await metric_value(
        http,
        gateway.admin_url,
        "consulgw_mirror_dropped_total",
        service=service,
        target=f"service:{service}-shadow",
        reason="body_too_large",
    )
    assert dropped == 2


async def test_a_body_after_100_continue_is_mirrored(
    make_gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession
) -> None:
    gateway: Gateway = await make_gateway()
    mirror = {"to": [{"service": "SHADOW"}], "methods": ["PUT"]}
    _, primary, shadow = await mirrored_service(gateway, consul, upstreams, mirror)
    assert shadow is not None
    async with http.put(f"{gateway.url}/doc", data=b"d" * 3000, expect100=True) as resp:
        assert resp.status == 200
    await wait_for(lambda: len(shadow.received) == 1)
    assert shadow.received[0]["body"] == primary.received[0]["body"] == b"d" * 3000


async def test_mirrors_in_flight_are_bounded_and_the_rest_dropped(
    make_gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession, switchables: Any
) -> None:
    gateway: Gateway = await make_gateway()
    held: Switchable = await switchables("shadow")
    held.hold = asyncio.Event()
    mirror = {"to": [{"service": "SHADOW"}], "max_in_flight": 2, "timeout": "30s"}
    service, _, _ = await mirrored_service(gateway, consul, upstreams, mirror, shadow_port=held.port)
    replies = await fetch_many(http, f"{gateway.url}/a", [None] * 10, concurrency=1)
    assert {r.status for r in replies} == {200}
    await wait_for(lambda: held.hits == 2)
    target = f"service:{service}-shadow"
    assert (
        await metric_value(
            http,
            gateway.admin_url,
            "consulgw_mirror_dropped_total",
            service=service,
            target=target,
            reason="in_flight_full",
        )
        == 8
    )
    held.hold.set()
    await wait_for(lambda: _metric_is(http, gateway, "consulgw_mirror_sent_total", 2, service=service, target=target))
    # Room again: the next one is mirrored.
    held.hold = None
    await fetch(http, f"{gateway.url}/a")
    await wait_for(lambda: held.hits == 3)


async def _metric_is(http: aiohttp.ClientSession, gateway: Gateway, name: str, value: float, **labels: str) -> bool:
    return await metric_value(http, gateway.admin_url, name, **labels) == value


async def test_mirroring_to_a_subset_by_percent(
    make_gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession
) -> None:
    gateway: Gateway = await make_gateway()
    service = unique("mirrored")
    stable, canary = await upstreams("stable-1"), await upstreams("canary-1")
    policy = {
        "subsets": SUBSETS,
        "split": {"default": "stable", "weights": {"stable": 1}},
        "mirror": {"to": [{"subset": "canary", "percent": 50}]},
    }
    await put_policy(consul, service, policy)
    await consul.register(service, stable.port, service_id=f"{service}-s", tags=["gw.route=/"], meta={"version": "v1"})
    await consul.register(service, canary.port, service_id=f"{service}-c", tags=["gw.route=/"], meta={"version": "v2"})
    await wait_for(lambda: routed(gateway, service, 2))
    await wait_policy(gateway, service, policy)
    replies = await fetch_many(http, f"{gateway.url}/a", [None] * 400)
    assert {r.upstream for r in replies} == {"stable-1"}  # the split sends everything to stable ...
    sent = await metric_value(
        http, gateway.admin_url, "consulgw_mirror_sent_total", service=service, target="subset:canary"
    )
    assert sent is not None
    assert 140 <= sent <= 260  # ... and about half of it is copied to the canary
    await wait_for(lambda: len(canary.received) == sent)
