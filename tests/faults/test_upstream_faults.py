"""Upstream instances failing on the wire: a reset before the answer and in the middle of its body, an answer that
is not HTTP, a stall before the head, a pooled keep-alive connection closed under the gateway, and a 101 Switching
Protocols (not a fault: it must not count as one).

Documented answers (docs/troubleshooting.md, "What an error answer means"): ``502 upstream_unreachable`` (the
instance closed the connection before answering), ``502 upstream_error`` (another failure: an invalid answer),
``504 upstream_timeout``, ``503 circuit_open``; a body broken off after the head leaves only one honest signal, the
client connection cut (docs/operations.md: ``upstream_body_interrupted``). Idempotent requests are retried on another
instance per the policy's ``retries``; ``attempts`` in the ``request_completed`` line says how many instances were
tried; every failed attempt counts in ``consulgw_upstream_errors_total{kind}`` and in the instance's breaker.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Mapping
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from consulgw.server.gateway import Gateway
from tests.gateway.conftest import Consul, routed
from tests.policy_e2e.conftest import metric_value, put_policy, wait_for, wait_policy
from tests.support.raw_http import OK, RawUpstream

from .conftest import GatewayFactory, error_body

BREAKER = {"failure_threshold": 2, "recovery_timeout": "500ms"}


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a crashing process or a middlebox does."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _serve(
    gateway: Gateway, consul: Consul, service: str, ports: list[int], policy: Mapping[str, Any] | None = None
) -> None:
    if policy is not None:
        await put_policy(consul, service, policy)
    for index, port in enumerate(ports):
        await consul.register(service, port, service_id=f"{service}-{index}", tags=[f"gw.route=/{service}"])
    await wait_for(lambda: routed(gateway, service, len(ports)))
    if policy is not None:
        await wait_policy(gateway, service, policy)


async def _errors(http: aiohttp.ClientSession, gateway: Gateway, service: str, kind: str) -> float:
    return (
        await metric_value(http, gateway.admin_url, "consulgw_upstream_errors_total", service=service, kind=kind) or 0
    )


async def _retries(http: aiohttp.ClientSession, gateway: Gateway, service: str) -> float:
    return await metric_value(http, gateway.admin_url, "consulgw_retries_total", service=service) or 0


def _completed(logs: list[dict[str, Any]], service: str) -> list[dict[str, Any]]:
    return [line for line in logs if line.get("event") == "request_completed" and line.get("service") == service]


async def _ok(up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
    while True:
        await up.read_request(reader)
        writer.write(OK)
        await writer.drain()


async def test_a_reset_before_the_answer_is_retried_on_another_instance_and_counted(
    start_gateway: GatewayFactory, consul: Consul, http: aiohttp.ClientSession, raw_upstream: Any
) -> None:
    healthy = {"on": True}

    async def resets(up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await up.read_request(reader)
        if healthy["on"]:
            writer.write(OK)
            await writer.drain()
            return
        _reset(writer)

    bad, good = await raw_upstream(resets), await raw_upstream(_ok)
    with capture_logs() as logs:
        gateway = await start_gateway()
        policy = {"retries": {"attempts": 1, "on": ["connect_failure"]}, "lb": "round_robin"}
        await _serve(gateway, consul, "resets", [bad.port, good.port], policy)
        healthy["on"] = False
        for _ in range(4):  # round robin: two of them go to the resetting instance first
            async with http.get(f"{gateway.url}/resets/x") as resp:
                assert resp.status == 200
                assert await resp.read() == b"ok"
        assert await _errors(http, gateway, "resets", "reset") == 2
        assert await _retries(http, gateway, "resets") == 2
        # A POST is not retried: the documented answer, counted once.
        bad_only = await raw_upstream(resets)
        await _serve(gateway, consul, "resetpost", [bad_only.port])
        async with http.post(f"{gateway.url}/resetpost/x", data=b"payload") as resp:
            assert resp.status == 502
            assert (await error_body(resp))["error"] == "upstream_unreachable"
        assert await _errors(http, gateway, "resetpost", "reset") == 1
    lines = _completed(logs, "resets")
    assert sorted(line["attempts"] for line in lines) == [1, 1, 2, 2]  # the retried ones tried two instances
    [post] = _completed(logs, "resetpost")
    assert post["attempts"] == 1  # one instance was tried, and failed
    assert post["error"] == "upstream_unreachable"
    # Recovery: the instance answers again, nothing restarted.
    healthy["on"] = True
    async with http.post(f"{gateway.url}/resetpost/x", data=b"payload") as resp:
        assert resp.status == 200


async def test_an_answer_that_is_not_http_is_a_502_and_the_next_request_succeeds(
    start_gateway: GatewayFactory, consul: Consul, http: aiohttp.ClientSession, raw_upstream: Any
) -> None:
    broken = {"on": True}

    async def garbage(up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while True:
            await up.read_request(reader)
            if broken["on"]:
                writer.write(b"HTTP/1.1 two hundred OK\r\nContent-Length: x\r\n\r\n<html>")
                await writer.drain()
                return
            writer.write(OK)
            await writer.drain()

    up = await raw_upstream(garbage)
    gateway = await start_gateway()
    await _serve(gateway, consul, "garbage", [up.port])
    async with http.get(f"{gateway.url}/garbage/x") as resp:
        assert resp.status == 502
        body = await error_body(resp)
        assert body["error"] == "upstream_error"
        assert "two hundred" not in body["message"]  # nothing of the upstream's bytes reaches the client
    assert await _errors(http, gateway, "garbage", "protocol") == 1
    broken["on"] = False
    async with http.get(f"{gateway.url}/garbage/x") as resp:
        assert resp.status == 200
        assert await resp.read() == b"ok"


async def test_a_stall_before_the_head_is_a_504_or_a_retry_elsewhere(
    start_gateway: GatewayFactory, consul: Consul, http: aiohttp.ClientSession, raw_upstream: Any
) -> None:
    stalling = {"on": True}

    async def stall(up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while True:
            await up.read_request(reader)
            if stalling["on"]:
                await asyncio.sleep(30)  # never answers in time; the gateway gives up on the connection
            writer.write(OK)
            await writer.drain()

    slow, good = await raw_upstream(stall), await raw_upstream(_ok)
    gateway = await start_gateway()
    await _serve(gateway, consul, "stalls", [slow.port], {"timeouts": {"read": "300ms"}})
    async with http.get(f"{gateway.url}/stalls/x") as resp:
        assert resp.status == 504
        assert (await error_body(resp))["error"] == "upstream_timeout"
    assert await _errors(http, gateway, "stalls", "timeout") == 1
    # With "timeout" among the retry conditions, an idempotent request goes on to another instance.
    policy = {"timeouts": {"read": "300ms"}, "retries": {"attempts": 1, "on": ["timeout"]}, "lb": "round_robin"}
    await _serve(gateway, consul, "stalls2", [slow.port, good.port], policy)
    for _ in range(2):
        async with http.get(f"{gateway.url}/stalls2/x") as resp:
            assert resp.status == 200
    assert await _errors(http, gateway, "stalls2", "timeout") == 1
    assert await _retries(http, gateway, "stalls2") == 1
    stalling["on"] = False
    async with http.get(f"{gateway.url}/stalls/x") as resp:
        assert resp.status == 200


async def test_a_pooled_connection_closed_by_the_upstream_is_no_error_of_the_instance(
    start_gateway: GatewayFactory, consul: Consul, http: aiohttp.ClientSession, raw_upstream: Any
) -> None:
    """The upstream answers the first request of each connection and closes it when the next one arrives (its idle
    timeout firing at that moment): the request is sent again on a fresh connection, once, and nothing counts it
    against the instance (no error metric, a breaker of threshold 1 stays closed)."""

    async def one_per_connection(
        up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int
    ) -> None:
        await up.read_request(reader)
        writer.write(OK)
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # the next request on this connection: dropped unanswered

    up = await raw_upstream(one_per_connection)
    gateway = await start_gateway()
    policy = {"circuit_breaker": {"failure_threshold": 1, "recovery_timeout": "1m"}}
    await _serve(gateway, consul, "pooled", [up.port], policy)
    for method in ("GET", "PUT", "DELETE", "GET"):
        async with http.request(method, f"{gateway.url}/pooled/x", data=b"x" if method == "PUT" else None) as resp:
            assert resp.status == 200
            assert await resp.read() == b"ok"
    assert len(up.requests) == 4  # each answered once
    assert up.connections == 4  # requests 2-4 each found their pooled connection closed and went on a fresh one
    for kind in ("reset", "error", "protocol"):
        assert await _errors(http, gateway, "pooled", kind) == 0
    assert await metric_value(http, gateway.admin_url, "consulgw_circuit_breaker_opened_total", service="pooled") in (
        None,
        0,
    )


async def test_a_body_broken_off_mid_stream_cuts_the_client_and_counts_against_the_instance(
    start_gateway: GatewayFactory, consul: Consul, http: aiohttp.ClientSession, raw_upstream: Any
) -> None:
    breaking = {"on": True}

    async def half(up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while True:
            await up.read_request(reader)
            if breaking["on"]:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n" + b"a" * 70_000)
                await writer.drain()
                await asyncio.sleep(0.05)
                _reset(writer)
                return
            writer.write(OK)
            await writer.drain()

    up = await raw_upstream(half)
    gateway = await start_gateway()
    await _serve(gateway, consul, "halves", [up.port], {"circuit_breaker": BREAKER})
    for _ in range(2):
        async with http.get(f"{gateway.url}/halves/x") as resp:
            assert resp.status == 200  # the head had gone out before the body broke
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
    assert await _errors(http, gateway, "halves", "reset") == 2
    # Two consecutive failures open the instance's breaker: the documented answer while it is open.
    async with http.get(f"{gateway.url}/halves/x") as resp:
        assert resp.status == 503
        assert (await error_body(resp))["error"] == "circuit_open"
    assert await metric_value(http, gateway.admin_url, "consulgw_circuit_breaker_opened_total", service="halves") == 1
    # Recovery: the instance is fixed; after recovery_timeout one probe goes through and closes the breaker.
    breaking["on"] = False

    async def served() -> bool:
        async with http.get(f"{gateway.url}/halves/x") as resp:
            return resp.status == 200 and await resp.read() == b"ok"

    await wait_for(served, timeout=10, interval=0.2)


async def test_a_101_switching_protocols_is_no_failure_of_the_instance(
    start_gateway: GatewayFactory, consul: Consul, http: aiohttp.ClientSession, raw_upstream: Any
) -> None:
    """A breaker with threshold 1 stays closed across upgrades: 101 then a tunnel that ends is a success."""

    async def upgrade_or_ok(
        up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int
    ) -> None:
        head = await up.read_request(reader)
        if b"upgrade: echo" in head.lower():
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
            await writer.drain()
            writer.write(await reader.readexactly(5))  # echo 5 bytes, then close
            await writer.drain()
            return
        writer.write(OK)
        await writer.drain()

    up = await raw_upstream(upgrade_or_ok)
    gateway = await start_gateway()
    await _serve(gateway, consul, "upgrades", [up.port], {"circuit_breaker": {"failure_threshold": 1}})
    for _ in range(3):
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(b"GET /upgrades/ws HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101 ")
        writer.write(b"hello")
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(5), 10) == b"hello"
        writer.close()
    async with http.get(f"{gateway.url}/upgrades/x") as resp:
        assert resp.status == 200  # a breaker that had counted the upgrades would answer 503 circuit_open
    assert await metric_value(http, gateway.admin_url, "consulgw_circuit_breaker_opened_total", service="upgrades") in (
        None,
        0,
    )
    for kind in ("reset", "error", "protocol"):
        assert await _errors(http, gateway, "upgrades", kind) == 0
