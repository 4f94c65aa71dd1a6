"""Traces end to end: a real gateway exporting over OTLP/HTTP to a local receiver, real upstreams, real sockets.

The receiver (conftest.py) decodes what the SDK's exporter sends, so these tests see the spans a collector would.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import structlog
from structlog.testing import capture_logs

from consulgw.server.gateway import Gateway
from consulgw.settings import Secret
from tests.auth.idp import CLIENT_ID, CLIENT_SECRET, Idp
from tests.gateway.conftest import Consul, Upstream, routed, wait_for

from .conftest import ReceivedSpan, Receiver, tracing_to

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_PARENT = "00f067aa0ba902b7"
REDIS_URL = "redis://127.0.0.1:6379/0"


def traceparents(upstream: Upstream, index: int = -1) -> list[str]:
    """Every traceparent field the upstream received in request ``index``."""
    return [v for k, v in upstream.received[index]["headers"] if k.lower() == "traceparent"]


def received(upstream: Upstream, name: str, index: int = -1) -> list[str]:
    return [v for k, v in upstream.received[index]["headers"] if k.lower() == name]


def parse_traceparent(value: str) -> tuple[str, str, bool]:
    """(trace id, parent id, sampled) of a version 00 traceparent (other flag bits, e.g. W3C level 2's random
    trace id flag, are ignored as the specification says)."""
    version, trace_id, parent_id, flags = value.split("-")
    assert version == "00"
    return trace_id, parent_id, bool(int(flags, 16) & 1)


async def serve(gateway: Gateway, consul: Consul, upstream: Upstream, service: str = "svc", route: str = "/") -> None:
    await consul.register(service, upstream.port, tags=[f"gw.route={route}"])
    await wait_for(lambda: routed(gateway, service, 1))


async def test_a_proxied_request_is_one_server_span_and_one_client_span(
    otlp: Receiver,
    traced_gateway: Callable[..., Awaitable[Gateway]],
    consul: Consul,
    upstreams: Any,
    http: aiohttp.ClientSession,
) -> None:
    gateway = await traced_gateway()
    up: Upstream = await upstreams("users-1")
    await consul.register("users", up.port, tags=["gw.route=/api/users strip=/api"])
    await wait_for(lambda: routed(gateway, "users", 1))

    async with http.get(f"{gateway.url}/api/users/7?x=1&access_token=s3cr3t", headers={"User-Agent": "t/1"}) as resp:
        assert resp.status == 200
    await wait_for(lambda: len(otlp.spans) >= 2)

    [server] = otlp.kind("server")
    [client] = otlp.kind("client")
    assert server.name == "GET /api/users"  # the route, never the raw path
    assert server.parent_span_id == ""
    assert (client.trace_id, client.parent_span_id) == (server.trace_id, server.span_id)
    assert server.attributes == server.attributes | {
        "http.request.method": "GET",
        "http.route": "/api/users",
        "url.path": "/api/users/7",
        "url.query": "x=1&access_token=REDACTED",
        "url.scheme": "http",
        "server.address": "127.0.0.1",
        "server.port": gateway.port,
        "client.address": "127.0.0.1",
        "user_agent.original": "t/1",
        "http.response.status_code": 200,
        "consulgw.service": "users",
        "consulgw.route": "*/api/users",
        "consulgw.request_id": resp.headers["X-Request-ID"],
        "consulgw.attempts": 1,
    }
    assert not server.error
    assert "error.type" not in server.attributes
    assert client.name == "GET"
    assert client.attributes == client.attributes | {
        "http.request.method": "GET",
        "server.address": "127.0.0.1",
        "server.port": up.port,
        "url.full": f"http://127.0.0.1:{up.port}/users/7?x=1&access_token=REDACTED",
        "http.response.status_code": 200,
        "consulgw.service": "users",
    }
    assert "http.request.resend_count" not in client.attributes
    assert server.resource["service.name"] == "consulgw"
    assert "s3cr3t" not in json.dumps([s.attributes for s in otlp.spans])
    # The upstream saw one traceparent: the CLIENT span's.
    [sent] = traceparents(up)
    assert parse_traceparent(sent) == (client.trace_id, client.span_id, True)


async def test_a_retried_request_has_a_client_span_per_attempt(
    otlp: Receiver,
    traced_gateway: Callable[..., Awaitable[Gateway]],
    consul: Consul,
    upstreams: Any,
    http: aiohttp.ClientSession,
    free_port: Callable[[], int],
) -> None:
    gateway = await traced_gateway()
    up: Upstream = await upstreams("live")
    await consul.register("svc", up.port, service_id="live", tags=["gw.route=/"])
    await consul.register("svc", free_port(), service_id="dead", tags=["gw.route=/"])  # nothing listens there
    await wait_for(lambda: routed(gateway, "svc", 2))

    def retried() -> list[ReceivedSpan]:
        return [s for s in otlp.kind("server") if len(otlp.kind("client", s.trace_id)) == 2]

    # Round-robin: within two requests one tries the dead instance first and is retried on the live one.
    for _ in range(2):
        async with http.get(f"{gateway.url}/r") as resp:
            assert resp.status == 200
    await wait_for(lambda: bool(retried()))

    [server] = retried()
    first, second = sorted(
        otlp.kind("client", server.trace_id), key=lambda s: s.attributes.get("http.request.resend_count", 0)
    )
    assert first.parent_span_id == second.parent_span_id == server.span_id
    assert first.error
    assert first.attributes["error.type"] == "connect"
    assert "http.request.resend_count" not in first.attributes
    assert second.attributes["http.request.resend_count"] == 1
    assert second.attributes["http.response.status_code"] == 200
    assert not second.error
    assert server.attributes["consulgw.attempts"] == 2
    # The live instance got that request once, carrying the second attempt's traceparent.
    sent = [tp for index in range(len(up.received)) for tp in traceparents(up, index) if server.trace_id in tp]
    assert [parse_traceparent(tp) for tp in sent] == [(server.trace_id, second.span_id, True)]


async def test_the_clients_trace_is_continued_with_exactly_one_traceparent_upstream(
    otlp: Receiver,
    traced_gateway: Callable[..., Awaitable[Gateway]],
    consul: Consul,
    upstreams: Any,
    http: aiohttp.ClientSession,
) -> None:
    gateway = await traced_gateway()
    up: Upstream = await upstreams("a")
    await serve(gateway, consul, up)
    headers = [
        ("traceparent", f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01"),
        ("tracestate", "vendor=opaque"),
        ("X-B3-TraceId", "80f198ee56343ba864fe8b2a57d3eff7"),
        ("baggage", "tenant=acme"),
    ]
    async with http.get(f"{gateway.url}/x", headers=headers) as resp:
        assert resp.status == 200
    [sent] = traceparents(up)
    trace_id, parent_id, sampled = parse_traceparent(sent)
    assert (trace_id, sampled) == (CLIENT_TRACE, True)
    assert received(up, "tracestate") == []  # an untrusted client's vendor state stops here
    assert received(up, "x-b3-traceid") == []
    assert received(up, "baggage") == ["tenant=acme"]  # not trace context: passed on untouched
    await wait_for(lambda: len(otlp.of_trace(CLIENT_TRACE)) == 2)
    [server] = otlp.kind("server", CLIENT_TRACE)
    [client] = otlp.kind("client", CLIENT_TRACE)
    assert server.parent_span_id == CLIENT_PARENT  # the gateway's span hangs under the client's
    assert client.parent_span_id == server.span_id
    assert parent_id == client.span_id  # the parent id was replaced (HAProxy #3353)

    # Two traceparent fields are an invalid context (W3C): a new trace, and still one traceparent upstream.
    doubled = [
        ("traceparent", f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01"),
        ("traceparent", f"00-{'1' * 32}-{'2' * 16}-01"),
    ]
    async with http.get(f"{gateway.url}/y", headers=doubled) as resp:
        assert resp.status == 200
    [sent] = traceparents(up)
    assert parse_traceparent(sent)[0] not in (CLIENT_TRACE, "1" * 32)


@pytest.mark.parametrize(
    ("trusted", "sampled"),
    [
        pytest.param("", False, id="untrusted-client-cannot-force-sampling"),
        pytest.param("127.0.0.1/32", True, id="trusted-proxy-decides-for-the-trace"),
    ],
)
async def test_an_incoming_sampled_flag_counts_only_from_trusted_proxies(
    otlp: Receiver,  # first: set up before the gateways, so it is still there when they flush at teardown
    gateway_factory: Callable[..., Awaitable[Gateway]],
    consul: Consul,
    upstreams: Any,
    http: aiohttp.ClientSession,
    trusted: str,
    sampled: bool,
) -> None:
    # The gateway samples nothing by itself: only a believed parent can ask for a trace.
    gateway = await gateway_factory(tracing=tracing_to(otlp, ratio=0.0), trusted_proxies=trusted)
    up: Upstream = await upstreams("a")
    await serve(gateway, consul, up)
    async with http.get(f"{gateway.url}/x", headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01"}) as resp:
        assert resp.status == 200
    [sent] = traceparents(up)
    assert parse_traceparent(sent)[::2] == (CLIENT_TRACE, sampled)  # the trace id is continued either way
    await gateway.stop()  # flushes every ended span: after this, what the receiver lacks was never sampled
    assert {s.kind for s in otlp.of_trace(CLIENT_TRACE)} == ({"server", "client"} if sampled else set())


async def test_a_services_sample_ratio_and_captured_headers(
    otlp: Receiver,  # first: set up before the gateways, so it is still there when they flush at teardown
    gateway_factory: Callable[..., Awaitable[Gateway]],
    consul: Consul,
    upstreams: Any,
    http: aiohttp.ClientSession,
) -> None:
    gateway = await gateway_factory(tracing=tracing_to(otlp, ratio=0.0))
    up: Upstream = await upstreams("a")
    policy = {
        "tracing": {"sample_ratio": 1.0, "capture_headers": {"request": ["X-Tenant-ID"], "response": ["X-Upstream"]}}
    }
    await consul.kv_put("consulgw/services/loud", json.dumps(policy))
    await serve(gateway, consul, up, "loud", "/loud")
    await serve(gateway, consul, up, "quiet", "/quiet")
    await wait_for(lambda: (v := gateway.view()) is not None and v.services["loud"].policy.tracing.sample_ratio == 1.0)
    for path in ("/quiet/1", "/loud/1"):
        async with http.get(f"{gateway.url}{path}", headers={"X-Tenant-ID": "acme"}) as resp:
            assert resp.status == 200
    await gateway.stop()
    [server] = otlp.kind("server")  # the quiet service's request was not sampled (process ratio 0)
    assert server.name == "GET /loud"
    assert server.attributes["http.request.header.x-tenant-id"] == ["acme"]
    assert server.attributes["http.response.header.x-upstream"] == ["a"]


async def test_the_log_line_carries_the_trace_id_sampled_or_not(
    otlp: Receiver,  # first: set up before the gateways, so it is still there when they flush at teardown
    gateway_factory: Callable[..., Awaitable[Gateway]],
    consul: Consul,
    upstreams: Any,
    http: aiohttp.ClientSession,
) -> None:
    up: Upstream = await upstreams("a")
    with capture_logs() as logs:
        gateway = await gateway_factory(tracing=tracing_to(otlp, ratio=0.0))
        await serve(gateway, consul, up)
        traced = f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-00"
        for path, headers in (("/x", {"traceparent": traced}), ("/y", {})):
            async with http.get(f"{gateway.url}{path}", headers=headers) as resp:
                assert resp.status == 200
        structlog.get_logger().info("marker")
    lines = {line["path"]: line for line in logs if line["event"] == "request_completed" and "route" in line}
    assert lines["/x"]["trace_id"] == CLIENT_TRACE  # not sampled (ratio 0), still logged (APISIX #7903)
    trace_id, span_id, _ = parse_traceparent(traceparents(up, 0)[0])
    assert trace_id == CLIENT_TRACE
    assert len(lines["/x"]["span_id"]) == 16
    assert lines["/x"]["span_id"] != span_id  # the SERVER span's id; the upstream got the CLIENT span's
    assert len(lines["/y"]["trace_id"]) == 32
    assert lines["/y"]["trace_id"] != CLIENT_TRACE
    assert parse_traceparent(traceparents(up, 1)[0])[0] == lines["/y"]["trace_id"]


async def test_tracing_off_leaves_trace_headers_and_log_lines_alone(
    gateway_factory: Callable[..., Awaitable[Gateway]],
    consul: Consul,
    upstreams: Any,
    http: aiohttp.ClientSession,
) -> None:
    up: Upstream = await upstreams("a")
    with capture_logs() as logs:
        gateway = await gateway_factory()
        await serve(gateway, consul, up)
        headers = [("traceparent", f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01"), ("tracestate", "vendor=opaque")]
        async with http.get(f"{gateway.url}/x", headers=headers) as resp:
            assert resp.status == 200
    assert traceparents(up) == [f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01"]
    assert received(up, "tracestate") == ["vendor=opaque"]
    [line] = [line for line in logs if line["event"] == "request_completed" and "route" in line]
    assert "trace_id" not in line
    assert "span_id" not in line


async def test_a_request_without_a_route_is_a_server_span_named_by_its_method(
    otlp: Receiver, traced_gateway: Callable[..., Awaitable[Gateway]], http: aiohttp.ClientSession
) -> None:
    gateway = await traced_gateway()
    async with http.request("PROPFIND", f"{gateway.url}/nowhere/42") as resp:
        assert resp.status == 404
    await wait_for(lambda: len(otlp.spans) == 1)
    [server] = otlp.spans
    assert server.name == "HTTP"  # an unknown method is _OTHER; no route, so no path in the name
    assert server.attributes["http.request.method"] == "_OTHER"
    assert server.attributes["http.request.method_original"] == "PROPFIND"
    assert server.attributes["http.response.status_code"] == 404
    assert server.attributes["consulgw.error"] == "no_route"
    assert "http.route" not in server.attributes
    assert "error.type" not in server.attributes
    assert not server.error  # a 4xx is the client's business


async def test_a_gateway_error_is_an_error_span(
    otlp: Receiver,
    traced_gateway: Callable[..., Awaitable[Gateway]],
    consul: Consul,
    http: aiohttp.ClientSession,
    free_port: Callable[[], int],
) -> None:
    gateway = await traced_gateway()
    await consul.register("down", free_port(), tags=["gw.route=/down"])
    await wait_for(lambda: routed(gateway, "down", 1))
    async with http.get(f"{gateway.url}/down") as resp:
        assert resp.status == 502
    await wait_for(lambda: len(otlp.spans) == 2)  # no other instance to retry on
    [server] = otlp.kind("server")
    assert server.error
    assert server.attributes["error.type"] == "upstream_unreachable"
    [client] = otlp.kind("client")
    assert client.error
    assert client.attributes["error.type"] == "connect"


async def test_identity_provider_and_redis_calls_are_client_spans_of_the_request(
    otlp: Receiver,
    traced_gateway: Callable[..., Awaitable[Gateway]],
    consul: Consul,
    upstreams: Any,
    http: aiohttp.ClientSession,
) -> None:
    idp = Idp()
    await idp.start()
    try:
        token = f"tok-{uuid.uuid4().hex}"
        idp.tokens[token] = {"sub": "ada", "client_id": "web"}
        service = f"traced-{uuid.uuid4().hex[:8]}"  # Redis is shared: keys of our own
        policy = {
            "auth": {
                "type": "introspection",
                "endpoint": idp.endpoint,
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "cache": "redis",
            },
            "rate_limit": {"requests": 1000, "per": "1s", "backend": "redis"},
        }
        gateway = await traced_gateway(redis_url=Secret(value=REDIS_URL))
        up: Upstream = await upstreams("a")
        await consul.kv_put(f"consulgw/services/{service}", json.dumps(policy))
        await serve(gateway, consul, up, service, "/api")
        await wait_for(lambda: (v := gateway.view()) is not None and v.services[service].policy.auth is not None)
        async with http.get(f"{gateway.url}/api/me", headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200, await resp.text()
        await gateway.stop()
    finally:
        await idp.stop()
    [server] = otlp.kind("server")
    children = {
        (s.name, s.attributes.get("consulgw.call") or s.attributes.get("db.system.name"))
        for s in otlp.kind("client", server.trace_id)
        if s.parent_span_id == server.span_id
    }
    assert children == {
        ("POST", "introspection"),
        ("GET", "redis"),  # the shared verdict cache: a miss
        ("SET", "redis"),  # ... then filled
        ("EVALSHA", "redis"),  # the rate-limit decision
        ("GET", None),  # the upstream attempt
    }
    [introspection] = otlp.named("POST")
    assert introspection.attributes["url.full"] == idp.endpoint
    assert introspection.attributes["http.response.status_code"] == 200
    [evalsha] = otlp.named("EVALSHA")
    assert evalsha.attributes["server.address"] == "127.0.0.1"
    assert evalsha.attributes["server.port"] == 6379
    assert token not in json.dumps([s.attributes for s in otlp.spans])


async def test_spans_are_flushed_when_the_gateway_stops(
    otlp: Receiver,  # first: set up before the gateways, so it is still there when they flush at teardown
    gateway_factory: Callable[..., Awaitable[Gateway]],
    consul: Consul,
    upstreams: Any,
    http: aiohttp.ClientSession,
) -> None:
    gateway = await gateway_factory(tracing=tracing_to(otlp, schedule_delay=3600.0))  # no export before stopping
    up: Upstream = await upstreams("a")
    await serve(gateway, consul, up)
    async with http.get(f"{gateway.url}/x") as resp:
        assert resp.status == 200
    assert otlp.spans == []
    await gateway.stop()
    assert {s.kind for s in otlp.spans} == {"server", "client"}


def dropped(gateway: Gateway, reason: str) -> float:
    value = gateway.metrics.registry.get_sample_value("consulgw_trace_spans_dropped_total", {"reason": reason})
    assert value is not None
    return value


async def test_a_stuck_collector_neither_slows_requests_nor_holds_shutdown_and_drops_are_counted(
    otlp: Receiver,  # first: set up before the gateways, so it is still there when they flush at teardown
    gateway_factory: Callable[..., Awaitable[Gateway]],
    consul: Consul,
    upstreams: Any,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The exporter runs on the BatchSpanProcessor's thread: a collector that never answers blocks that thread,
    never the event loop. Its queue (4 spans here) fills up; the rest is dropped and counted."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "60")  # the SDK's own variable: an export may hang 60 s
    otlp.hold = asyncio.Event()
    settings = tracing_to(otlp, max_queue_size=4, max_export_batch_size=1, shutdown_timeout=0.5)
    gateway = await gateway_factory(tracing=settings)
    up: Upstream = await upstreams("a")
    await serve(gateway, consul, up)
    try:
        for index in range(20):  # each would wait for the stuck export if it ran on the event loop
            async with http.get(f"{gateway.url}/{index}", timeout=aiohttp.ClientTimeout(total=10)) as resp:
                assert resp.status == 200
        await wait_for(lambda: otlp.requests >= 1)  # the export is on the wire, held by the collector
        assert dropped(gateway, "queue_full") >= 20  # 40 spans, 4 queued, a few taken by the stuck exports
        await asyncio.wait_for(gateway.stop(), 10)  # shutdown_timeout bounds the last flush, not the stuck export
    finally:
        otlp.hold.set()


async def test_spans_a_failing_collector_loses_are_counted(
    otlp: Receiver,
    traced_gateway: Callable[..., Awaitable[Gateway]],
    consul: Consul,
    upstreams: Any,
    http: aiohttp.ClientSession,
) -> None:
    otlp.status = 400  # refused: not retried
    gateway = await traced_gateway()
    up: Upstream = await upstreams("a")
    await serve(gateway, consul, up)
    async with http.get(f"{gateway.url}/x") as resp:
        assert resp.status == 200
    await wait_for(lambda: dropped(gateway, "export_failed") == 2)
    assert dropped(gateway, "queue_full") == 0
    async with http.get(f"{gateway.admin_url}/metrics") as resp:
        assert 'consulgw_trace_spans_dropped_total{reason="export_failed"} 2.0' in await resp.text()


async def test_a_new_traces_sampling_is_decided_on_its_own_trace_id(
    otlp: Receiver,
    gateway_factory: Callable[..., Awaitable[Gateway]],
    consul: Consul,
    upstreams: Any,
    http: aiohttp.ClientSession,
) -> None:
    """Ratio 0.5: a new trace is sampled exactly when the low 64 bits of its trace id are under 2^63 (the SDK's
    TraceIdRatioBased rule, so gateways agree), and the exported span carries that very trace id."""
    up: Upstream = await upstreams("a")
    with capture_logs() as logs:
        gateway = await gateway_factory(tracing=tracing_to(otlp, ratio=0.5, parent_based=False))
        await serve(gateway, consul, up)
        for index in range(40):
            async with http.get(f"{gateway.url}/{index}") as resp:
                assert resp.status == 200
        await gateway.stop()
    logged = [line["trace_id"] for line in logs if line["event"] == "request_completed" and "route" in line]
    assert len(logged) == 40
    under = {trace_id for trace_id in logged if int(trace_id, 16) & ((1 << 64) - 1) < 1 << 63}
    assert 0 < len(under) < 40  # 40 draws at one half: both outcomes (a 1 in 5e11 chance of failing)
    assert {s.trace_id for s in otlp.kind("server")} == under
