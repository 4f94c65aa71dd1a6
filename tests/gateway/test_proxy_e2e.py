"""End to end on 127.0.0.1: dev agent + real upstreams + the gateway. Register, then route; and the proxy rules."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from consulgw.server.gateway import Gateway
from tests.tracing.conftest import Receiver, otlp, tracing_to

from .conftest import Consul, Upstream, in_pool, routed, wait_for

__all__ = ["otlp"]  # the OTLP receiver fixture, for the tracing-on case


async def get_json(http: aiohttp.ClientSession, url: str | URL, **kwargs: Any) -> tuple[int, dict[str, Any], Any]:
    async with http.get(url, **kwargs) as resp:
        body = await resp.read()
        return resp.status, dict(resp.headers), json.loads(body) if body else None


async def test_register_then_route_strip_and_forwarded_headers(
    gateway: Gateway, consul: Consul, upstreams: Any, http: aiohttp.ClientSession
) -> None:
    up: Upstream = await upstreams("users-1")
    await consul.register("users", up.port, tags=["gw.route=/api/users strip=/api"])
    await wait_for(lambda: routed(gateway, "users", 1))

    status, headers, body = await get_json(http, f"{gateway.url}/api/users/7?x=1")
    assert status == 200
    assert body["upstream"] == "users-1"
    assert body["raw_path"] == "/users/7?x=1"
    sent = body["headers"]
    assert sent["X-Forwarded-For"] == "127.0.0.1"
    assert sent["X-Forwarded-Proto"] == "http"
    assert sent["X-Forwarded-Host"] == f"127.0.0.1:{gateway.port}"
    assert len(headers["X-Request-ID"]) >= 16
    assert sent["X-Request-ID"] == headers["X-Request-ID"]


@pytest.mark.parametrize("tracing", [pytest.param(False, id="tracing-off"), pytest.param(True, id="tracing-on")])
async def test_client_request_id_and_traceparent_pass_through(
    otlp: Receiver,
    gateway_factory: Callable[..., Awaitable[Gateway]],
    consul: Consul,
    upstreams: Any,
    http: aiohttp.ClientSession,
    tracing: bool,
) -> None:
    """Tracing off, the client's trace context goes upstream untouched. Tracing on (consulgw/tracing), the gateway
    takes part in the trace: exactly one traceparent upstream, the client's trace id, the gateway's span as parent;
    an untrusted client's tracestate stops at the gateway."""
    gateway = await gateway_factory(**({"tracing": tracing_to(otlp)} if tracing else {}))
    up: Upstream = await upstreams("a")
    await consul.register("svc", up.port, tags=["gw.route=/"])
    await wait_for(lambda: routed(gateway, "svc", 1))
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    status, headers, body = await get_json(
        http,
        f"{gateway.url}/x",
        headers={"X-Request-ID": "abc-123", "traceparent": trace, "tracestate": "vendor=opaque"},
    )
    assert status == 200
    assert headers["X-Request-ID"] == "abc-123"
    assert body["headers"]["X-Request-ID"] == "abc-123"
    sent = up.received[-1]["headers"]
    traceparents = [v for k, v in sent if k.lower() == "traceparent"]
    tracestates = [v for k, v in sent if k.lower() == "tracestate"]
    if not tracing:
        assert traceparents == [trace]
        assert tracestates == ["vendor=opaque"]
        return
    [replaced] = traceparents
    version, trace_id, parent_id, _flags = replaced.split("-")
    assert (version, trace_id) == ("00", "4bf92f3577b34da6a3ce929d0e0e4736")
    assert parent_id != "00f067aa0ba902b7"
    assert tracestates == []


async def test_path_and_query_are_forwarded_byte_exact(
    gateway: Gateway, consul: Consul, upstreams: Any, http: aiohttp.ClientSession
) -> None:
    up = await upstreams("a")
    await consul.register("svc", up.port, tags=["gw.route=/"])
    await wait_for(lambda: routed(gateway, "svc", 1))
    raw = "/a%2Fb/c%20d;p=1?q=%2B%20+&empty=&x=%E2%9C%93&dup=1&dup=2"
    status, _, body = await get_json(http, URL(f"{gateway.url}{raw}", encoded=True))
    assert status == 200
    assert body["raw_path"] == raw


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        pytest.param("GET", "/nothing-here", 404, "no_route", id="no-route"),
        pytest.param("DELETE", "/ro/x", 405, "method_not_allowed", id="method-not-allowed"),
    ],
)
async def test_routing_errors_are_json(
    gateway: Gateway,
    consul: Consul,
    upstreams: Any,
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    status: int,
    code: str,
) -> None:
    up = await upstreams("a")
    await consul.register("ro", up.port, tags=["gw.route=/ro methods=GET,POST"])
    await wait_for(lambda: routed(gateway, "ro", 1))
    async with http.request(method, f"{gateway.url}{path}") as resp:
        body = await resp.json()
        assert resp.status == status
        assert body["error"] == code
        assert body["request_id"] == resp.headers["X-Request-ID"]
        assert "Traceback" not in json.dumps(body)
        if status == 405:
            assert set(resp.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "POST"}


async def test_health_deregistration_and_maintenance_take_instances_out(
    gateway: Gateway, consul: Consul, upstreams: Any, http: aiohttp.ClientSession
) -> None:
    a, b = await upstreams("a"), await upstreams("b")
    sid_a = await consul.register("svc", a.port, tags=["gw.route=/"])
    sid_b = await consul.register("svc", b.port, tags=["gw.route=/"])
    await wait_for(lambda: routed(gateway, "svc", 2))

    async def hits(n: int = 20) -> set[str]:
        seen = set()
        for _ in range(n):
            status, _, body = await get_json(http, f"{gateway.url}/")
            assert status == 200
            seen.add(body["upstream"])
        return seen

    assert await hits() == {"a", "b"}
    await consul.check(sid_a, "critical")  # failing check
    await wait_for(lambda: in_pool(gateway, "svc") == {sid_b})
    assert await hits() == {"b"}
    await consul.check(sid_a, "passing")
    await consul.maintenance(sid_b, True)  # maintenance
    await wait_for(lambda: in_pool(gateway, "svc") == {sid_a})
    assert await hits() == {"a"}
    await consul.maintenance(sid_b, False)
    await consul.deregister(sid_a)  # deregistration
    await wait_for(lambda: in_pool(gateway, "svc") == {sid_b})
    assert await hits() == {"b"}
    await consul.check(sid_b, "critical")
    await wait_for(lambda: in_pool(gateway, "svc") == set())
    async with http.get(f"{gateway.url}/") as resp:
        assert resp.status == 503
        assert (await resp.json())["error"] == "no_healthy_upstream"
    await consul.deregister(sid_b)
    await wait_for(lambda: _no_service(gateway, "svc"))
    async with http.get(f"{gateway.url}/") as resp:
        assert resp.status == 404


def _no_service(gateway: Gateway, service: str) -> bool:
    view = gateway.view()
    return view is not None and service not in view.services


async def test_warning_weight_zero_excludes_and_warning_weight_counts(
    gateway: Gateway, consul: Consul, upstreams: Any
) -> None:
    a, b = await upstreams("a"), await upstreams("b")
    sid_a = await consul.register("svc", a.port, tags=["gw.route=/"], weights=(3, 0))
    sid_b = await consul.register("svc", b.port, tags=["gw.route=/"], weights=(3, 1))
    await wait_for(lambda: routed(gateway, "svc", 2))
    await consul.check(sid_a, "warning")
    await consul.check(sid_b, "warning")

    def weights() -> dict[str, int]:
        view = gateway.view()
        assert view is not None
        return {i.service_id: i.weight for i in view.services["svc"].snapshot.instances}

    await wait_for(lambda: weights() == {sid_a: 0, sid_b: 1})
    assert in_pool(gateway, "svc") == {sid_b}


async def test_hop_by_hop_and_identity_headers_are_stripped(
    gateway: Gateway, consul: Consul, upstreams: Any, http: aiohttp.ClientSession
) -> None:
    up = await upstreams("a")
    await consul.register("svc", up.port, tags=["gw.route=/"])
    await wait_for(lambda: routed(gateway, "svc", 1))
    status, _, body = await get_json(
        http,
        f"{gateway.url}/",
        headers={
            "Connection": "keep-alive, X-Secret-Hop",
            "X-Secret-Hop": "1",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "X-Consumer-ID": "admin",
            "X-User-ID": "root",
            "X-User-Scopes": "everything",
            "X-Custom": "kept",
        },
    )
    assert status == 200
    sent = {k.lower() for k in body["headers"]}
    for name in (
        "x-secret-hop",
        "keep-alive",
        "te",
        "proxy-authorization",
        "x-consumer-id",
        "x-user-id",
        "x-user-scopes",
    ):
        assert name not in sent, name
    assert body["headers"]["X-Custom"] == "kept"


async def test_forwarded_for_is_only_believed_from_trusted_proxies(
    gateway_factory: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession
) -> None:
    up = await upstreams("a")
    await consul.register("svc", up.port, tags=["gw.route=/"])
    untrusted = await gateway_factory()
    trusted = await gateway_factory(trusted_proxies="127.0.0.0/8")
    await wait_for(lambda: routed(untrusted, "svc", 1))
    await wait_for(lambda: routed(trusted, "svc", 1))
    spoof = {
        "X-Forwarded-For": "203.0.113.9",
        "X-Forwarded-Proto": "https",
        "Forwarded": "for=203.0.113.9",
        "X-Real-IP": "203.0.113.9",
    }
    _, _, body = await get_json(http, f"{untrusted.url}/", headers=spoof)
    assert body["headers"]["X-Forwarded-For"] == "127.0.0.1"
    assert body["headers"]["X-Forwarded-Proto"] == "http"
    assert "Forwarded" not in body["headers"]
    assert "X-Real-IP" not in body["headers"]
    _, _, body = await get_json(http, f"{trusted.url}/", headers=spoof)
    assert body["headers"]["X-Forwarded-For"] == "203.0.113.9, 127.0.0.1"
    assert body["headers"]["X-Forwarded-Proto"] == "https"
    assert body["headers"]["Forwarded"] == "for=203.0.113.9"
    assert body["headers"]["X-Real-IP"] == "203.0.113.9"


async def test_response_details_pass_through(
    gateway: Gateway, consul: Consul, upstreams: Any, http: aiohttp.ClientSession
) -> None:
    """Multiple Set-Cookie, HEAD with Content-Length, 204, 304, chunked streaming and gzip bytes untouched."""

    def routes(app: web.Application) -> None:
        async def cookies(_: web.Request) -> web.Response:
            resp = web.Response(text="ok")
            resp.headers.add("Set-Cookie", "a=1; Path=/")
            resp.headers.add("Set-Cookie", "b=2; Path=/; HttpOnly")
            return resp

        async def sized(_: web.Request) -> web.Response:
            return web.Response(body=b"x" * 1234)

        async def empty(_: web.Request) -> web.Response:
            return web.Response(status=204)

        async def cached(request: web.Request) -> web.Response:
            if request.headers.get("If-None-Match") == '"v1"':
                return web.Response(status=304, headers={"ETag": '"v1"'})
            return web.Response(text="fresh", headers={"ETag": '"v1"'})

        async def chunked(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse()
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for i in range(5):
                await resp.write(f"part{i};".encode())
                await asyncio.sleep(0.01)
            await resp.write_eof()
            return resp

        async def gz(_: web.Request) -> web.Response:
            import gzip

            return web.Response(
                body=gzip.compress(b"hello " * 100),
                headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"},
            )

        app.router.add_get("/cookies", cookies)
        app.router.add_route("*", "/sized", sized)
        app.router.add_get("/empty", empty)
        app.router.add_get("/cached", cached)
        app.router.add_get("/chunked", chunked)
        app.router.add_get("/gz", gz)

    up = await upstreams("a", extra_routes=routes)
    await consul.register("svc", up.port, tags=["gw.route=/"])
    await wait_for(lambda: routed(gateway, "svc", 1))
    base = gateway.url
    async with http.get(f"{base}/cookies") as resp:
        assert resp.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/; HttpOnly"]
    async with http.head(f"{base}/sized") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == "1234"
        assert await resp.read() == b""
    async with http.get(f"{base}/empty") as resp:
        assert resp.status == 204
        assert await resp.read() == b""
    async with http.get(f"{base}/cached", headers={"If-None-Match": '"v1"'}) as resp:
        assert resp.status == 304
        assert resp.headers["ETag"] == '"v1"'
    async with http.get(f"{base}/chunked") as resp:
        assert resp.headers.get("Transfer-Encoding") == "chunked"
        assert await resp.read() == b"part0;part1;part2;part3;part4;"
    async with http.get(f"{base}/gz", headers={"Accept-Encoding": "gzip"}) as resp:
        import gzip

        raw = await resp.read()
        assert resp.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(raw) == b"hello " * 100


async def test_expect_100_continue(gateway: Gateway, consul: Consul, upstreams: Any) -> None:
    up = await upstreams("a")
    await consul.register("svc", up.port, tags=["gw.route=/"])
    await wait_for(lambda: routed(gateway, "svc", 1))
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(
        b"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    )
    await writer.drain()
    interim = await asyncio.wait_for(reader.readline(), 5)
    assert interim.startswith(b"HTTP/1.1 100")
    await reader.readline()  # blank line after the interim response
    writer.write(b"hello")
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert response.startswith(b"HTTP/1.1 200")
    assert b'"body_bytes": 5' in response


async def test_connect_failure_is_retried_on_another_instance(
    gateway: Gateway, consul: Consul, upstreams: Any, http: aiohttp.ClientSession, unused_tcp_port: int
) -> None:
    live = await upstreams("live")
    await consul.register("svc", live.port, tags=["gw.route=/"])
    await consul.register("svc", unused_tcp_port, tags=["gw.route=/"])  # registered, passing, but nothing listens
    await wait_for(lambda: routed(gateway, "svc", 2))
    for _ in range(20):
        status, _, body = await get_json(http, f"{gateway.url}/")
        assert status == 200
        assert body["upstream"] == "live"
    # A POST is not idempotent: when it lands on the dead instance the client gets a clear 502.
    statuses = set()
    for _ in range(20):
        async with http.post(f"{gateway.url}/", data=b"x") as resp:
            statuses.add(resp.status)
            if resp.status == 502:
                assert (await resp.json())["error"] == "upstream_unreachable"
    assert statuses <= {200, 502}
    assert 502 in statuses


async def test_all_instances_unreachable_gives_502(
    gateway: Gateway, consul: Consul, http: aiohttp.ClientSession, unused_tcp_port: int
) -> None:
    await consul.register("svc", unused_tcp_port, tags=["gw.route=/"])
    await wait_for(lambda: routed(gateway, "svc", 1))
    async with http.get(f"{gateway.url}/") as resp:
        assert resp.status == 502
        body = await resp.json()
        assert body["error"] == "upstream_unreachable"
        assert str(unused_tcp_port) in body["message"]


async def test_read_timeout_from_policy_gives_504(
    gateway: Gateway, consul: Consul, upstreams: Any, http: aiohttp.ClientSession
) -> None:
    slow = await upstreams("slow", delay=2.0)
    await consul.register("svc", slow.port, tags=["gw.route=/"])
    await consul.kv_put(
        "consulgw/services/svc", json.dumps({"timeouts": {"read": "200ms"}, "retries": {"attempts": 0}})
    )
    await wait_for(lambda: routed(gateway, "svc", 1))
    await wait_for(lambda: _policy_read_timeout(gateway, "svc") == 0.2)
    async with http.get(f"{gateway.url}/") as resp:
        assert resp.status == 504
        assert (await resp.json())["error"] == "upstream_timeout"


def _policy_read_timeout(gateway: Gateway, service: str) -> float | None:
    view = gateway.view()
    if view is None or service not in view.services:
        return None
    return view.services[service].policy.timeouts.read


async def test_proxy_invents_no_server_or_content_type(
    gateway: Gateway, consul: Consul, http: aiohttp.ClientSession
) -> None:
    """An upstream answering without Server and Content-Type: the client gets neither (aiohttp would add both)."""

    async def bare(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(bare, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await consul.register("bare", port, tags=["gw.route=/bare"])
        await wait_for(lambda: routed(gateway, "bare", 1))
        async with http.get(f"{gateway.url}/bare") as resp:
            assert resp.status == 200
            assert await resp.read() == b"plain"
            assert "Server" not in resp.headers
            assert "Content-Type" not in resp.headers
            assert resp.headers["X-Request-ID"]
    finally:
        server.close()
        await server.wait_closed()
