"""Circuit breakers through a real gateway: open after N failures, refuse (or serve the fallback) without touching the
upstream, one half-open probe after recovery_timeout, and traffic moved to a healthy instance with no client error.

A breaker that is open must stay open while the test looks at it, and become due for a probe only when the test says
so. With a 1 s recovery_timeout on the real clock, a policy edit (the Consul watch may take a second) or a slow moment
on a shared machine lets a probe through in the middle of an "it is open" assertion. So the gateway runs on a
``SkewedClock``, the timeout is 30 s, and "wait past recovery_timeout" is ``clock.offset += 31``: deterministic, and
no duration is asserted.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from consulgw.server.gateway import Gateway

from .conftest import (
    Consul,
    SkewedClock,
    Switchable,
    admin_routes,
    metric_value,
    put_policy,
    routed,
    routed_service,
    unique,
    wait_for,
    wait_policy,
)

BREAKER = {"failure_threshold": 3, "recovery_timeout": "30s"}
PAST_RECOVERY = 31.0
FALLBACK = {"status": 200, "body": '{"degraded": true}', "headers": {"X-Fallback": "1"}}


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, str], Any]:
    async with http.get(url) as resp:
        raw = await resp.read()
        return resp.status, dict(resp.headers), json.loads(raw) if raw else None


async def _breaker_states(http: aiohttp.ClientSession, gateway: Gateway, service: str) -> dict[str, str]:
    body = await admin_routes(http, gateway.admin_url)
    return {i["id"]: i["breaker"] for i in body["services"][service]["instances"]}


async def _breakers_by_port(http: aiohttp.ClientSession, gateway: Gateway, service: str) -> dict[int, str]:
    body = await admin_routes(http, gateway.admin_url)
    return {i["port"]: i["breaker"] for i in body["services"][service]["instances"]}


async def test_breaker_opens_serves_fallback_probes_and_recovers(
    make_gateway: Any, consul: Consul, switchables: Any, http: aiohttp.ClientSession
) -> None:
    clock = SkewedClock()
    gateway: Gateway = await make_gateway(clock=clock)
    up: Switchable = await switchables("flaky")
    service = unique("flaky")
    policy: dict[str, Any] = {"circuit_breaker": dict(BREAKER), "retries": {"attempts": 0}}
    await routed_service(gateway, consul, service, up.port, policy)
    (instance,) = (await _breaker_states(http, gateway, service)).keys()
    url = f"{gateway.url}/"

    async def state_gauge() -> float | None:
        return await metric_value(
            http, gateway.admin_url, "consulgw_circuit_breaker_state", service=service, instance=instance
        )

    assert (await _get(http, url))[0] == 200
    assert await _breaker_states(http, gateway, service) == {instance: "closed"}

    # Three failures (the upstream's own 503s, relayed) open the breaker.
    up.status = 503
    for _ in range(3):
        status, _, body = await _get(http, url)
        assert (status, body.get("failing")) == (503, True)
    assert up.hits == 4
    assert await _breaker_states(http, gateway, service) == {instance: "open"}
    assert await state_gauge() == 2.0

    # Open, single instance: 503 circuit_open at once, the upstream is not called.
    for _ in range(5):
        status, _, body = await _get(http, url)
        assert (status, body["error"]) == (503, "circuit_open")
    assert up.hits == 4

    # With a fallback in the policy, the fallback answer is served instead (the breaker stays open across the edit).
    policy["circuit_breaker"]["fallback"] = FALLBACK
    await put_policy(consul, service, policy)
    await wait_policy(gateway, service, policy)
    status, headers, body = await _get(http, url)
    assert (status, body, headers.get("X-Fallback")) == (200, {"degraded": True}, "1")
    assert headers["Content-Type"].startswith("application/json")
    assert up.hits == 4
    assert await _breaker_states(http, gateway, service) == {instance: "open"}

    # Upstream healthy again; past recovery_timeout one probe goes through and closes the breaker.
    up.status = 200
    clock.offset += PAST_RECOVERY
    status, headers, body = await _get(http, url)
    assert (status, body, headers.get("X-Fallback")) == (200, {"upstream": "flaky"}, None)
    assert up.hits == 5  # exactly one probe
    assert await _breaker_states(http, gateway, service) == {instance: "closed"}
    assert await state_gauge() == 0.0
    for _ in range(3):
        assert (await _get(http, url))[0] == 200
    assert up.hits == 8

    # Open it again; this time the half-open probe fails and the breaker re-opens at once (not after 3 more).
    up.status = 503
    for _ in range(3):
        assert (await _get(http, url))[0] == 503
    assert await _breaker_states(http, gateway, service) == {instance: "open"}
    assert up.hits == 11
    clock.offset += PAST_RECOVERY
    status, headers, body = await _get(http, url)
    assert (status, body.get("failing"), headers.get("X-Fallback")) == (503, True, None)  # the probe's own answer
    assert up.hits == 12
    assert await _breaker_states(http, gateway, service) == {instance: "open"}
    assert await state_gauge() == 2.0
    status, headers, _ = await _get(http, url)
    assert headers.get("X-Fallback") == "1"
    assert up.hits == 12


async def test_open_breaker_moves_traffic_to_the_other_instance_without_client_errors(
    make_gateway: Any, consul: Consul, switchables: Any, http: aiohttp.ClientSession
) -> None:
    gateway: Gateway = await make_gateway()
    sick: Switchable = await switchables("sick")
    well: Switchable = await switchables("well")
    service = unique("pair")
    # A long recovery_timeout: no half-open probe may land on the sick instance during the assertions below.
    policy = {"circuit_breaker": {"failure_threshold": 3, "recovery_timeout": "60s"}, "retries": {"attempts": 0}}
    await put_policy(consul, service, policy)
    await consul.register(service, sick.port, tags=["gw.route=/"])
    await consul.register(service, well.port, tags=["gw.route=/"])
    await wait_for(lambda: routed(gateway, service, 2))
    await wait_policy(gateway, service, policy)
    url = f"{gateway.url}/"

    sick.status = 503
    client_errors = 0
    for _ in range(40):  # round robin: the sick instance fails 3 times, then its breaker opens
        status, _, _ = await _get(http, url)
        client_errors += status != 200
        if (await _breakers_by_port(http, gateway, service))[sick.port] == "open":
            break
    assert client_errors == 3  # the three failures that opened it (no retries in this policy)
    assert sick.hits == 3
    assert await _breakers_by_port(http, gateway, service) == {sick.port: "open", well.port: "closed"}

    well_before = well.hits
    answers = await asyncio.gather(*(_get(http, url) for _ in range(30)))
    assert [status for status, _, _ in answers] == [200] * 30  # zero client errors
    assert {body["upstream"] for _, _, body in answers} == {"well"}
    assert well.hits - well_before == 30
    assert sick.hits == 3


async def test_half_open_lets_exactly_one_probe_through_while_it_is_in_flight(
    make_gateway: Any, consul: Consul, switchables: Any, http: aiohttp.ClientSession
) -> None:
    clock = SkewedClock()
    gateway: Gateway = await make_gateway(clock=clock)
    up: Switchable = await switchables("flaky")
    service = unique("flaky")
    policy = {"circuit_breaker": {**BREAKER, "fallback": FALLBACK}, "retries": {"attempts": 0}}
    await routed_service(gateway, consul, service, up.port, policy)
    url = f"{gateway.url}/"

    up.status = 503
    for _ in range(3):
        assert (await _get(http, url))[0] == 503
    assert list((await _breaker_states(http, gateway, service)).values()) == ["open"]

    # Healthy again, but the upstream holds every request: the probe stays in flight as long as the test wants.
    up.status = 200
    up.hold = asyncio.Event()
    clock.offset += PAST_RECOVERY
    probe = asyncio.create_task(_get(http, url))
    await wait_for(lambda: up.hits == 4)
    assert list((await _breaker_states(http, gateway, service)).values()) == ["half_open"]

    # While the probe is out, everyone else gets the fallback; the upstream sees nobody else.
    answers = await asyncio.gather(*(_get(http, url) for _ in range(10)))
    assert all(headers.get("X-Fallback") == "1" for _, headers, _ in answers)
    assert up.hits == 4

    up.hold.set()
    up.hold = None
    status, headers, body = await probe
    assert (status, body, headers.get("X-Fallback")) == (200, {"upstream": "flaky"}, None)
    assert list((await _breaker_states(http, gateway, service)).values()) == ["closed"]
    assert (await _get(http, url))[2] == {"upstream": "flaky"}
    assert up.hits == 5
