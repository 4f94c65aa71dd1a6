"""The upstream transport and the response phase, end to end: real gateway, dev agent, raw-socket upstreams.

- A keep-alive connection the upstream closed is never a client error (idle close noticed, and the race of a close
  just as a request is written retried once on a fresh connection for an idempotent request).
- A client that reads nothing does not hold the upstream: the answer is spooled (memory, then a temporary file) and
  the upstream connection is free as soon as the upstream finished; the gateway's memory stays bounded.
- Ambiguous request framing is refused with 400 and nothing reaches the upstream.
- An ``Upgrade`` to any protocol, answered 101, becomes a byte tunnel both ways.
- CORS, rate-limit and request-id headers follow one rule on an upstream answer, a 502, a 429 and a fallback.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import aiohttp
import pytest

from consulgw.server.gateway import Gateway
from tests.support.processes import gateway_process
from tests.support.raw_http import OK, RawUpstream, raw_exchange

from .conftest import Consul, routed, wait_for

# -- keep-alive connections the upstream closed ----------------------------------------------------------------------


async def test_a_connection_the_upstream_closed_while_idle_is_never_used(
    gateway: Gateway, consul: Consul, http: aiohttp.ClientSession, raw_upstream: Any
) -> None:
    """The upstream answers keep-alive, then closes each connection 50 ms later (its idle timeout)."""

    async def answer_then_close(
        up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int
    ) -> None:
        await up.read_request(reader)
        writer.write(OK)
        await writer.drain()
        await asyncio.sleep(0.05)

    up = await raw_upstream(answer_then_close)
    await consul.register("idleclose", up.port, tags=["gw.route=/idle"])
    await wait_for(lambda: routed(gateway, "idleclose", 1))
    for method in ("GET", "POST", "GET", "POST"):
        async with http.request(method, f"{gateway.url}/idle/x", data=b"body" if method == "POST" else None) as resp:
            assert resp.status == 200, await resp.text()
        await asyncio.sleep(0.2)  # the upstream has closed the pooled connection by now
    assert up.connections == 4


async def test_a_close_racing_the_next_request_is_retried_once_on_a_fresh_connection(
    gateway: Gateway, consul: Consul, http: aiohttp.ClientSession, raw_upstream: Any
) -> None:
    """The upstream answers the first request of a connection and closes the connection on the second one without
    answering: what a server does when its idle timeout fires just as a request arrives."""

    async def one_per_connection(
        up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int
    ) -> None:
        await up.read_request(reader)
        writer.write(OK)
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # the next request on this connection: dropped unanswered

    up = await raw_upstream(one_per_connection)
    await consul.register("racy", up.port, tags=["gw.route=/racy"])
    await wait_for(lambda: routed(gateway, "racy", 1))
    for _ in range(5):
        async with http.get(f"{gateway.url}/racy/x") as resp:
            assert resp.status == 200
            assert await resp.read() == b"ok"
    assert len(up.requests) == 5  # every request was answered on a fresh connection after its stale one failed


# -- a client that reads nothing ---------------------------------------------------------------------------------------


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


@pytest.mark.slow
async def test_a_client_that_reads_nothing_does_not_hold_the_upstream(
    dev_agent: Any, consul: Consul, http: aiohttp.ClientSession, raw_upstream: Any
) -> None:
    size = 40 * 1024 * 1024
    block = b"\x5a" * (1024 * 1024)

    async def big(up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while True:
            head = await up.read_request(reader)
            if b"/small" in head:
                writer.write(OK)
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
                for _ in range(size // len(block)):
                    writer.write(block)
                    await writer.drain()
            await writer.drain()
            up.finished += 1

    up = await raw_upstream(big)
    await consul.register("big", up.port, tags=["gw.route=/"])
    async with gateway_process(dev_agent.url) as gw:
        await wait_for(lambda: _ready(http, gw.admin_url), timeout=20)
        await wait_for(lambda: _routed_in(http, gw.admin_url, "big"), timeout=20)
        async with http.get(f"{gw.url}/small") as resp:  # warm up imports and pools
            assert resp.status == 200
        baseline = _rss_kib(gw.proc.pid)
        # Three clients ask for 40 MiB each and never read a byte.
        stalled = []
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", gw.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
            stalled.append(sock)
        try:
            # The upstream finishes all three answers although nobody reads them: they wait in the gateway's spool.
            await wait_for(lambda: up.finished >= 4, timeout=60)
            growth_mib = (_rss_kib(gw.proc.pid) - baseline) / 1024
            print(f"gateway peak RSS grew {growth_mib:.1f} MiB while holding 3 x 40 MiB for clients that read nothing")
            assert growth_mib < 32
            # A normal client is served meanwhile, over the connection the upstream finished with.
            async with http.get(f"{gw.url}/small") as resp:
                assert resp.status == 200
        finally:
            for sock in stalled:
                sock.close()


async def _ready(http: aiohttp.ClientSession, admin: str) -> bool:
    try:
        async with http.get(f"{admin}/-/ready") as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False


async def _routed_in(http: aiohttp.ClientSession, admin: str, service: str) -> bool:
    async with http.get(f"{admin}/-/routes") as resp:
        return service in await resp.text()


# -- ambiguous framing -------------------------------------------------------------------------------------------------

AMBIGUOUS = [
    pytest.param(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n", id="cl-and-te"),
    pytest.param(b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!", id="differing-content-lengths"),
    pytest.param(b"Content-Length: 5, 6\r\n", b"hello!", id="content-length-list"),
    pytest.param(b"Transfer-Encoding: gzip\r\n", b"hello", id="te-without-chunked"),
    pytest.param(b"Transfer-Encoding: chunked, gzip\r\n", b"5\r\nhello\r\n0\r\n\r\n", id="chunked-not-last"),
    pytest.param(b"Transfer-Encoding: xchunked\r\n", b"5\r\nhello\r\n0\r\n\r\n", id="unknown-coding"),
    pytest.param(b"Transfer-Encoding : chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n", id="space-before-colon"),
    pytest.param(b"Transfer-Encoding: chunked\r\n", b"5;\x00\r\nhello\r\n0\r\n\r\n", id="bad-chunk-extension"),
    pytest.param(b"Content-Length: +5\r\n", b"hello", id="signed-length"),
]


@pytest.mark.parametrize(("fields", "body"), AMBIGUOUS)
async def test_ambiguous_framing_is_refused_and_never_forwarded(
    gateway: Gateway, consul: Consul, raw_upstream: Any, fields: bytes, body: bytes
) -> None:
    async def record(up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while True:
            await up.read_request(reader)
            writer.write(OK)
            await writer.drain()

    up = await raw_upstream(record)
    await consul.register("framing", up.port, tags=["gw.route=/"])
    await wait_for(lambda: routed(gateway, "framing", 1))
    answer = await raw_exchange(gateway.port, b"POST /upload HTTP/1.1\r\nHost: t\r\n" + fields + b"\r\n" + body)
    assert answer.split(b" ", 2)[1] == b"400", answer[:200]  # aiohttp answers HTTP/1.0 when it cannot parse
    await asyncio.sleep(0.2)
    assert up.requests == []
    assert up.connections == 0


# -- upgrades ----------------------------------------------------------------------------------------------------------


async def test_an_upgrade_to_any_protocol_becomes_a_byte_tunnel(
    gateway: Gateway, consul: Consul, raw_upstream: Any
) -> None:
    async def echo_protocol(
        up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int
    ) -> None:
        head = await up.read_request(reader)
        assert b"upgrade: echo/1" in head.lower()
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo/1\r\nConnection: Upgrade\r\n\r\nhello:")
        await writer.drain()
        while data := await reader.read(65536):
            writer.write(data.upper())
            await writer.drain()

    up = await raw_upstream(echo_protocol)
    await consul.register("echo", up.port, tags=["gw.route=/"])
    await wait_for(lambda: routed(gateway, "echo", 1))
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    try:
        writer.write(b"GET /tunnel HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo/1\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101")
        assert b"upgrade: echo/1" in head.lower()
        assert await asyncio.wait_for(reader.readexactly(6), 10) == b"hello:"  # sent with the 101, not lost
        for word in (b"abc", b"x" * 100_000):
            writer.write(word)
            assert await asyncio.wait_for(reader.readexactly(len(word)), 10) == word.upper()
        writer.write_eof()  # half-close: the upstream sees EOF and closes, the tunnel ends
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        writer.close()


# -- one response rule for every answer ----------------------------------------------------------------------------------

ORIGIN = "https://app.example.com"
RULED = ("Access-Control-Allow-Origin", "Access-Control-Allow-Credentials", "Vary", "RateLimit-Limit", "X-Request-ID")


async def test_cors_rate_limit_and_request_id_headers_are_the_same_on_every_kind_of_answer(
    gateway: Gateway, consul: Consul, http: aiohttp.ClientSession, raw_upstream: Any
) -> None:
    async def answer(up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while True:
            await up.read_request(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: *\r\nContent-Length: 2\r\n\r\nok"
            )  # a backend's own CORS answer, which the policy overrides
            await writer.drain()

    up = await raw_upstream(answer)
    policy = {
        "cors": {"origins": [ORIGIN], "credentials": True},
        "rate_limit": {"requests": 3, "per": "1m"},
        "circuit_breaker": {
            "failure_threshold": 1,
            "recovery_timeout": "10m",
            "fallback": {"status": 503, "body": '{"degraded": true}'},
        },
    }
    await consul.kv_put("consulgw/services/ruled", json.dumps(policy))
    await consul.register("ruled", up.port, tags=["gw.route=/"])
    await wait_for(lambda: routed(gateway, "ruled", 1))
    await wait_for(lambda: _has_policy(gateway, "ruled"))

    async def fetch() -> tuple[int, dict[str, str]]:
        async with http.get(f"{gateway.url}/x", headers={"Origin": ORIGIN}) as resp:
            await resp.read()
            return resp.status, {name: resp.headers.get(name, "") for name in (*RULED, "RateLimit-Remaining")}

    status, upstream_answer = await fetch()
    assert status == 200
    await up.stop()  # the instance is gone: the next request fails (502) and opens its breaker
    status, bad_gateway = await fetch()
    assert status == 502
    status, fallback = await fetch()
    assert status == 503  # the breaker is open: the policy's fallback answers
    status, limited = await fetch()
    assert status == 429  # the third request of the minute was the last one admitted
    answers = {"upstream": upstream_answer, "502": bad_gateway, "fallback": fallback, "429": limited}
    for kind, headers in answers.items():
        assert headers["Access-Control-Allow-Origin"] == ORIGIN, kind
        assert headers["Access-Control-Allow-Credentials"] == "true", kind
        assert "Origin" in headers["Vary"], kind
        assert headers["RateLimit-Limit"] == "3", kind
        assert headers["X-Request-ID"], kind
    assert [answers[k]["RateLimit-Remaining"] for k in ("upstream", "502", "fallback", "429")] == ["2", "1", "0", "0"]


def _has_policy(gateway: Gateway, service: str) -> bool:
    view = gateway.view()
    return view is not None and service in view.services and view.services[service].policy.cors is not None
