"""Traces end to end: a real gateway exporting over OTLP/HTTP to a local receiver, real upstreams, real sockets."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from consulgw.server.gateway import Gateway
from tests.gateway.conftest import Consul, Upstream, routed, wait_for

from .conftest import Receiver

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_PARENT = "00f067aa0ba902b7"


def traceparents(upstream: Upstream, index: int = -1) -> list[str]:
    """Every traceparent field the upstream received in request ``index``."""
    return [v for k, v in upstream.received[index]["headers"] if k.lower() == "traceparent"]


def parse_traceparent(value: str) -> tuple[str, str, bool]:
    """(trace id, parent id, sampled) of a version 00 traceparent (other flag bits, e.g. W3C level 2's random
    trace id flag, are ignored as the specification says)."""
    version, trace_id, parent_id, flags = value.split("-")
    assert version == "00"
    return trace_id, parent_id, bool(int(flags, 16) & 1)


async def test_a_proxied_request_is_one_server_span_and_one_client_span(
    traced_gateway: Callable[..., Awaitable[Gateway]],
    otlp: Receiver,
    consul: Consul,
    upstreams: Any,
    http: aiohttp.ClientSession,
) -> None:
    gateway = await traced_gateway()
    up: Upstream = await upstreams("users-1")
    await consul.register("users", up.port, tags=["gw.route=/api/users strip=/api"])
    await wait_for(lambda: routed(gateway, "users", 1))

    async with http.get(f"{gateway.url}/api/users/7?x=1") as resp:
        assert resp.status == 200
    await wait_for(lambda: len(otlp.spans) >= 2)

    [server] = otlp.kind("server")
    [client] = otlp.kind("client")
    assert server.name == "GET /api/users"
    assert server.parent_span_id == ""
    assert client.trace_id == server.trace_id
    assert client.parent_span_id == server.span_id
    assert server.attributes["http.route"] == "/api/users"
    assert server.attributes["url.path"] == "/api/users/7"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["consulgw.service"] == "users"
    assert client.name == "GET"
    assert client.attributes["server.port"] == up.port
    assert client.attributes["url.full"] == f"http://127.0.0.1:{up.port}/users/7?x=1"
    assert "http.request.resend_count" not in client.attributes
    assert server.resource["service.name"] == "consulgw"
    # The upstream saw one traceparent, the CLIENT span's.
    [sent] = traceparents(up)
    assert parse_traceparent(sent) == (client.trace_id, client.span_id, True)
