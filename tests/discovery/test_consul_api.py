"""ConsulClient against a scripted HTTP server on a real socket: wire format, headers, error translation."""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from consulgw.discovery.consul_api import ConsulClient
from consulgw.errors import DiscoveryError
from consulgw.model.snapshot import Health
from consulgw.settings import ConsulSettings, Secret

TOKEN = "s3cr3t-0f-the-acl-token"
Handler = Callable[[web.Request], Any]  # returns a response, or a coroutine of one


@dataclass
class Scripted:
    """A one-route-per-path server; records every request it sees."""

    url: str = ""
    routes: dict[tuple[str, str], Handler] = field(default_factory=dict)
    seen: list[web.Request] = field(default_factory=list)

    def on(self, method: str, path: str, handler: Handler) -> None:
        self.routes[(method, path)] = handler


def consul_json(value: Any, *, index: int = 42, status: int = 200, **headers: str) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(value).encode(),
        content_type="application/json",
        headers={"X-Consul-Index": str(index), "X-Consul-KnownLeader": "true", "X-Consul-LastContact": "0", **headers},
    )


@pytest.fixture
async def server() -> AsyncIterator[Scripted]:
    scripted = Scripted()

    async def dispatch(request: web.Request) -> web.StreamResponse:
        scripted.seen.append(request)
        handler = scripted.routes.get((request.method, request.raw_path.split("?", 1)[0]))
        if handler is None:
            return web.Response(status=599, text=f"unscripted {request.method} {request.raw_path}")
        response = handler(request)
        if inspect.isawaitable(response):
            response = await response
        assert isinstance(response, web.StreamResponse)
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", dispatch)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    scripted.url = f"http://127.0.0.1:{port}"
    yield scripted
    await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        yield s


def client_for(url: str, session: aiohttp.ClientSession, **settings: Any) -> ConsulClient:
    return ConsulClient(ConsulSettings(address=url, **settings), session)


async def test_catalog_services_blocking_parameters_and_token_header(
    server: Scripted, session: aiohttp.ClientSession
) -> None:
    server.on("GET", "/v1/catalog/services", lambda r: consul_json({"consul": [], "web": ["gw", "v1"]}, index=17))
    client = client_for(server.url, session, token=Secret(value=TOKEN), datacenter="dc1")
    result = await client.catalog_services(index=12, wait=2.0)
    assert dict(result.value) == {"consul": (), "web": ("gw", "v1")}
    assert (result.index, result.known_leader, result.last_contact) == (17, True, 0.0)
    request = server.seen[-1]
    assert request.query["index"] == "12"
    assert request.query["wait"] == "2000ms"
    assert request.query["dc"] == "dc1"
    assert request.headers["X-Consul-Token"] == TOKEN
    assert TOKEN not in str(request.url)


async def test_index_zero_is_not_sent_and_no_token_header_without_token(
    server: Scripted, session: aiohttp.ClientSession
) -> None:
    server.on("GET", "/v1/catalog/services", lambda r: consul_json({}, index=1))
    await client_for(server.url, session).catalog_services(index=0, wait=300)
    request = server.seen[-1]
    assert "index" not in request.query
    assert "wait" not in request.query
    assert "dc" not in request.query
    assert "X-Consul-Token" not in request.headers


async def test_streaming_backend_headers_are_optional(server: Scripted, session: aiohttp.ClientSession) -> None:
    server.on(
        "GET",
        "/v1/health/service/web",
        lambda r: web.Response(body=b"[]", headers={"X-Consul-Index": "9", "X-Consul-Query-Backend": "streaming"}),
    )
    result = await client_for(server.url, session).health_service("web", index=3, wait=1)
    assert (result.value, result.index, result.known_leader, result.last_contact) == ((), 9, None, None)


def health_entry(service_id: str, status: str) -> dict[str, Any]:
    return {
        "Node": {"Node": "n1", "Address": "127.0.0.1"},
        "Service": {"ID": service_id, "Service": "web api", "Tags": ["gw"], "Address": "", "Port": 8080, "Meta": None},
        "Checks": [
            {"CheckID": "serfHealth", "Status": "passing", "ServiceID": ""},
            {"CheckID": f"service:{service_id}", "Status": status, "ServiceID": service_id},
        ],
    }


async def test_health_service_reads_all_instances_not_only_passing(
    server: Scripted, session: aiohttp.ClientSession
) -> None:
    entries = [health_entry("a", "passing"), health_entry("b", "warning"), health_entry("c", "critical")]
    server.on("GET", "/v1/health/service/web%20api", lambda r: consul_json(entries, index=5))
    result = await client_for(server.url, session).health_service("web api", index=0, wait=1)
    assert [(i.id, i.health) for i in result.value] == [
        ("n1/a", Health.PASSING),
        ("n1/b", Health.WARNING),
        ("n1/c", Health.CRITICAL),
    ]
    assert "passing" not in server.seen[-1].query


async def test_kv_list_decodes_values_and_404_is_empty_with_index(
    server: Scripted, session: aiohttp.ClientSession
) -> None:
    entries = [
        {"Key": "gw/a", "Value": base64.b64encode(b"{}").decode(), "Flags": 0, "ModifyIndex": 7},
        {"Key": "gw/b", "Value": None, "Flags": 0, "ModifyIndex": 8},
    ]
    server.on("GET", "/v1/kv/gw/", lambda r: consul_json(entries, index=8))
    client = client_for(server.url, session)
    result = await client.kv_list("gw/", index=4, wait=1)
    assert dict(result.value) == {"gw/a": b"{}", "gw/b": b""}
    assert result.index == 8
    assert "recurse" in server.seen[-1].query
    server.on("GET", "/v1/kv/gw/", lambda r: web.Response(status=404, headers={"X-Consul-Index": "30"}))
    empty = await client.kv_list("gw/", index=8, wait=1)
    assert (dict(empty.value), empty.index) == ({}, 30)


async def test_kv_get_put_delete(server: Scripted, session: aiohttp.ClientSession) -> None:
    store: dict[str, bytes] = {}

    def put(request: web.Request) -> web.Response:
        if request.query.get("cas") == "0" and "a/b c" in store:
            return consul_json(False)
        return consul_json(True)

    server.on("PUT", "/v1/kv/a/b%20c", put)
    server.on("DELETE", "/v1/kv/a/b%20c", lambda r: consul_json(True))
    server.on(
        "GET", "/v1/kv/a/b%20c", lambda r: consul_json([{"Key": "a/b c", "Value": "aGk=", "ModifyIndex": 55}], index=55)
    )
    client = client_for(server.url, session, token=Secret(value=TOKEN))
    assert await client.kv_put("a/b c", b"hi") is True
    assert "cas" not in server.seen[-1].query
    store["a/b c"] = b"hi"
    assert await client.kv_put("a/b c", b"hi", cas=0) is False
    assert server.seen[-1].query["cas"] == "0"
    got = await client.kv_get("a/b c")
    assert (got.value, got.index) == (b"hi", 55)
    assert await client.kv_delete("a/b c") is True
    assert all(r.headers.get("X-Consul-Token") == TOKEN for r in server.seen)
    server.on("GET", "/v1/kv/a/b%20c", lambda r: web.Response(status=404, headers={"X-Consul-Index": "60"}))
    missing = await client.kv_get("a/b c")
    assert (missing.value, missing.index) == (None, 60)


@pytest.mark.parametrize(
    ("response", "message"),
    [
        pytest.param(
            lambda r: web.Response(status=500, text="No path to datacenter"),
            r"/v1/catalog/services: HTTP 500: No path to datacenter",
            id="http-500",
        ),
        pytest.param(
            lambda r: web.Response(status=403, text="ACL not found"), r"HTTP 403: ACL not found", id="acl-denied"
        ),
        pytest.param(
            lambda r: web.Response(body=b"{not json", headers={"X-Consul-Index": "3"}),
            r"response is not JSON",
            id="bad-json",
        ),
        pytest.param(
            lambda r: web.Response(body=b"[]", headers={"X-Consul-Index": "3"}),
            r"expected a JSON object, got list",
            id="wrong-shape",
        ),
        pytest.param(lambda r: web.Response(body=b"{}"), r"missing or invalid X-Consul-Index", id="no-index"),
        pytest.param(
            lambda r: web.Response(status=301, headers={"Location": "http://elsewhere.invalid/"}),
            r"HTTP 301",
            id="redirect-not-followed",
        ),
    ],
)
async def test_errors_become_discovery_errors_without_the_token(
    server: Scripted, session: aiohttp.ClientSession, response: Handler, message: str
) -> None:
    server.on("GET", "/v1/catalog/services", response)
    client = client_for(server.url, session, token=Secret(value=TOKEN))
    with pytest.raises(DiscoveryError, match=message) as info:
        await client.catalog_services(index=1, wait=1)
    assert TOKEN not in str(info.value)
    assert TOKEN not in repr(client)


async def test_malformed_health_entry_names_endpoint_and_field(
    server: Scripted, session: aiohttp.ClientSession
) -> None:
    bad = health_entry("a", "passing")
    bad["Service"]["Port"] = "eighty"
    server.on("GET", "/v1/health/service/web", lambda r: consul_json([bad]))
    with pytest.raises(DiscoveryError, match=r"/v1/health/service/web: health entry n1/a: Service\.Port is 'eighty'"):
        await client_for(server.url, session).health_service("web", index=0, wait=1)


async def test_bad_base64_value(server: Scripted, session: aiohttp.ClientSession) -> None:
    server.on("GET", "/v1/kv/gw/", lambda r: consul_json([{"Key": "gw/x", "Value": "!!"}]))
    with pytest.raises(DiscoveryError, match=r"Value of 'gw/x' is not valid base64"):
        await client_for(server.url, session).kv_list("gw/", index=0, wait=1)


async def test_connection_refused_is_a_discovery_error(session: aiohttp.ClientSession) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = client_for(f"http://127.0.0.1:{port}", session, token=Secret(value=TOKEN))
    with pytest.raises(DiscoveryError, match=r"GET /v1/catalog/services: ClientConnectorError") as info:
        await client.catalog_services(index=0, wait=1)
    assert TOKEN not in str(info.value)
    assert isinstance(info.value.__cause__, aiohttp.ClientError)


async def test_read_timeout_is_a_discovery_error(server: Scripted, session: aiohttp.ClientSession) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1)
        return consul_json({})

    server.on("GET", "/v1/catalog/services", slow)
    client = ConsulClient(ConsulSettings(address=server.url), session, request_timeout=0.2)
    with pytest.raises(DiscoveryError, match=r"timed out"):
        await client.catalog_services(index=5, wait=0.01)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        pytest.param(lambda c: c.catalog_services(index=-1), "index must be >= 0", id="negative-index"),
        pytest.param(lambda c: c.catalog_services(index=1, wait=0), "wait must be > 0", id="zero-wait"),
        pytest.param(lambda c: c.kv_get("/abs"), "must not start with '/'", id="absolute-key"),
        pytest.param(lambda c: c.health_service(""), "needs a service name", id="empty-service"),
    ],
)
async def test_programming_errors_are_value_errors(
    session: aiohttp.ClientSession, call: Callable[[ConsulClient], Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        await call(client_for("http://127.0.0.1:1", session))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(b'{"Key": "gw/a"}', r"expected a JSON array of KV entries, got dict", id="object"),
        pytest.param(b'[{"Key": "gw/a", "Value": null}', r"response is not JSON", id="truncated"),
        pytest.param(b'[{"Key": "gw/a", "Value": null}] []', r"response is not JSON \(extra data", id="trailing"),
        pytest.param(b'[{"Key": "gw/a"} {"Key": "gw/b"}]', r"response is not JSON \(bad array", id="no-comma"),
        pytest.param(b'[{"Key": "gw/a", "Value": null},]', r"response is not JSON", id="trailing-comma"),
        pytest.param(b"\xff[]", r"response is not JSON", id="not-utf8"),
    ],
)
async def test_kv_list_refuses_what_is_not_a_json_array(
    server: Scripted, session: aiohttp.ClientSession, body: bytes, message: str
) -> None:
    server.on("GET", "/v1/kv/gw/", lambda r: web.Response(body=body, headers={"X-Consul-Index": "3"}))
    with pytest.raises(DiscoveryError, match=message):
        await client_for(server.url, session).kv_list("gw/", index=0, wait=1)


@pytest.mark.parametrize("indent", [None, 2, "\t"])
@pytest.mark.parametrize("count", [0, 1, 2500])
async def test_kv_list_reads_every_entry_of_an_answer_however_it_is_laid_out(
    server: Scripted, session: aiohttp.ClientSession, indent: int | str | None, count: int
) -> None:
    """Answers are decoded entry by entry (yielding to the loop in between): the same entries as a whole-body parse,
    for compact and pretty-printed (`consul agent -dev`) JSON."""
    entries = [
        {"Key": f"gw/k{n}", "Value": base64.b64encode(f"v{n}".encode()).decode(), "Flags": 0} for n in range(count)
    ]
    body = json.dumps(entries, indent=indent).encode()
    server.on("GET", "/v1/kv/gw/", lambda r: web.Response(body=body, headers={"X-Consul-Index": "3"}))
    result = await client_for(server.url, session).kv_list("gw/", index=0, wait=1)
    assert dict(result.value) == {f"gw/k{n}": f"v{n}".encode() for n in range(count)}


async def test_kv_list_relative_keys_drop_the_prefix_and_its_folder_key(
    server: Scripted, session: aiohttp.ClientSession
) -> None:
    entries = [
        {"Key": "gw/", "Value": None},
        {"Key": "gw/services/a", "Value": base64.b64encode(b"{}").decode()},
        {"Key": "gwx/elsewhere", "Value": None},
    ]
    server.on("GET", "/v1/kv/gw/", lambda r: consul_json(entries, index=9))
    result = await client_for(server.url, session).kv_list("gw/", index=0, wait=1, relative=True)
    assert dict(result.value) == {"services/a": b"{}"}
