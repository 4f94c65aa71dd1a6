"""CORS, header transforms and body limits through a real gateway, seen from both the client and the upstream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from consulgw.policy.consumers import api_key_digest
from consulgw.server.gateway import Gateway

from .conftest import Consul, put_policy, routed, routed_service, unique, wait_for, wait_policy

APP = "https://app.example.com"
KEY = "page-key-0123456789abcdef0123456789"


async def test_cors_preflight_is_answered_by_the_gateway(
    make_gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession
) -> None:
    generous_hits: list[str] = []

    def routes(app: web.Application) -> None:
        async def generous(request: web.Request) -> web.Response:  # a backend with its own, wider CORS answer
            generous_hits.append(request.method)
            return web.json_response(
                {"ok": True},
                headers={"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": "X-Internal"},
            )

        app.router.add_get("/generous", generous)

    gateway: Gateway = await make_gateway()
    up = await upstreams("api", extra_routes=routes)
    service = unique("api")
    policy = {
        "cors": {
            "origins": [APP],
            "methods": ["GET", "POST"],
            "headers": ["Authorization", "Content-Type"],
            "expose_headers": ["X-Request-ID"],
            "credentials": True,
            "max_age": "10m",
        },
        "auth": {"type": "api_key"},  # preflights carry no credentials: CORS must answer before auth
    }
    await routed_service(gateway, consul, service, up.port, policy)
    url = f"{gateway.url}/items"

    preflight = {
        "Origin": APP,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    async with http.options(url, headers=preflight) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == APP
        assert resp.headers["Access-Control-Allow-Credentials"] == "true"
        assert set(resp.headers["Access-Control-Allow-Methods"].replace(" ", "").split(",")) == {"GET", "POST"}
        assert "content-type" in resp.headers["Access-Control-Allow-Headers"].lower()
        assert resp.headers["Access-Control-Max-Age"] == "600"
        assert "Origin" in resp.headers["Vary"]

    refused = [
        {**preflight, "Origin": "https://evil.example"},
        {**preflight, "Access-Control-Request-Method": "DELETE"},
        {**preflight, "Access-Control-Request-Headers": "x-secret"},
    ]
    for headers in refused:
        async with http.options(url, headers=headers) as resp:
            assert resp.status == 403, headers
            assert (await resp.json())["error"] == "forbidden"
            assert not [h for h in resp.headers if h.lower().startswith("access-control-allow-")]
    assert up.received == []  # the upstream never saw an OPTIONS

    # The actual request's 401 still carries the CORS answer, so the page can read it.
    async with http.post(url, headers={"Origin": APP}, data=b"{}") as resp:
        assert resp.status == 401
        assert resp.headers["Access-Control-Allow-Origin"] == APP
        assert resp.headers["Access-Control-Allow-Credentials"] == "true"
    assert up.received == []

    # The backend's own CORS headers never widen the policy: replaced for an allowed origin, dropped for others.
    await consul.kv_put("consulgw/consumers/page", json.dumps({"api_key_sha256": [api_key_digest(KEY)]}))
    await wait_for(lambda: "page" in gateway.view().book.consumers)  # type: ignore[union-attr]
    async with http.get(f"{gateway.url}/generous", headers={"Origin": APP, "X-API-Key": KEY}) as resp:
        assert resp.status == 200
        assert resp.headers.getall("Access-Control-Allow-Origin") == [APP]
        assert resp.headers.getall("Access-Control-Expose-Headers") == ["X-Request-ID"]
        assert "Origin" in resp.headers["Vary"]
    async with http.get(
        f"{gateway.url}/generous", headers={"Origin": "https://evil.example", "X-API-Key": KEY}
    ) as resp:
        assert resp.status == 200
        assert "Access-Control-Allow-Origin" not in resp.headers
        assert "Access-Control-Expose-Headers" not in resp.headers
    assert generous_hits == ["GET", "GET"]


async def test_cors_preflight_on_a_route_restricted_to_other_methods(
    make_gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession
) -> None:
    """A route that allows only POST still gets its preflight (an OPTIONS) answered by CORS, not 405."""
    gateway: Gateway = await make_gateway()
    up = await upstreams("api")
    service = unique("api")
    policy = {"cors": {"origins": [APP], "methods": ["POST"], "headers": ["Content-Type"]}}
    await put_policy(consul, service, policy)
    await consul.register(service, up.port, tags=["gw.route=/submit methods=POST"])
    await wait_for(lambda: routed(gateway, service, 1))
    await wait_policy(gateway, service, policy)

    preflight = {
        "Origin": APP,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    async with http.options(f"{gateway.url}/submit", headers=preflight) as resp:
        assert resp.status == 204, await resp.text()
        assert resp.headers["Access-Control-Allow-Origin"] == APP
        assert resp.headers["Access-Control-Allow-Methods"] == "POST"
    async with http.options(
        f"{gateway.url}/submit", headers={**preflight, "Access-Control-Request-Method": "GET"}
    ) as r:
        assert r.status in (403, 405)  # GET is neither routed nor allowed by the policy
        assert "Access-Control-Allow-Origin" not in r.headers
    async with http.options(f"{gateway.url}/submit") as resp:  # a plain OPTIONS is still subject to the route
        assert resp.status == 405
    assert up.received == []


async def test_header_transforms_on_request_and_response(
    make_gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession
) -> None:
    def routes(app: web.Application) -> None:
        async def decorated(request: web.Request) -> web.Response:
            resp = web.json_response({"headers": list(request.headers.items())})
            resp.headers["X-Powered-By"] = "upstream-framework"
            resp.headers["Server"] = "upstream/1.0"
            resp.headers["X-Frame-Options"] = "ALLOWALL"
            resp.headers["X-Trace"] = "upstream"
            return resp

        app.router.add_get("/decorated", decorated)

    gateway: Gateway = await make_gateway()
    up = await upstreams("api", extra_routes=routes)
    service = unique("api")
    policy = {
        "headers": {
            "request": {"remove": ["X-Debug"], "set": {"X-Env": "production"}, "add": {"X-Via": "consulgw"}},
            "response": {
                "remove": ["X-Powered-By", "Server"],
                "set": {"X-Frame-Options": "DENY"},
                "add": {"X-Trace": "gateway"},
            },
        }
    }
    await routed_service(gateway, consul, service, up.port, policy)
    sent = {"X-Debug": "1", "X-Env": "staging", "X-Via": "client-proxy", "X-Kept": "yes"}
    async with http.get(f"{gateway.url}/decorated", headers=sent) as resp:
        assert resp.status == 200
        seen = (await resp.json())["headers"]
        response_headers = resp.headers

    def values(name: str) -> list[str]:
        return [v for k, v in seen if k.lower() == name.lower()]

    assert values("X-Debug") == []  # remove
    assert values("X-Env") == ["production"]  # set replaces the client's value
    assert sorted(values("X-Via")) == ["client-proxy", "consulgw"]  # add appends
    assert values("X-Kept") == ["yes"]

    assert "X-Powered-By" not in response_headers  # remove
    assert "upstream/1.0" not in response_headers.getall("Server", [])
    assert response_headers.getall("X-Frame-Options") == ["DENY"]  # set replaces the upstream's value
    assert sorted(response_headers.getall("X-Trace")) == ["gateway", "upstream"]  # add appends


LIMIT = 1000

BODY_CASES = [
    pytest.param(False, LIMIT, 200, id="content-length-at-limit"),
    pytest.param(False, LIMIT + 1, 413, id="content-length-over"),
    pytest.param(False, 100 * LIMIT, 413, id="content-length-far-over"),
    pytest.param(True, 10, 200, id="chunked-small"),
    pytest.param(True, LIMIT, 200, id="chunked-at-limit"),
    pytest.param(True, LIMIT + 1, 413, id="chunked-over"),
    pytest.param(True, 100 * LIMIT, 413, id="chunked-far-over"),
]


@pytest.mark.parametrize(("chunked", "size", "expected"), BODY_CASES)
async def test_max_body_bytes(
    make_gateway: Any,
    consul: Consul,
    upstreams: Any,
    http: aiohttp.ClientSession,
    chunked: bool,
    size: int,
    expected: int,
) -> None:
    gateway: Gateway = await make_gateway()
    up = await upstreams("api")
    service = unique("api")
    await routed_service(gateway, consul, service, up.port, {"max_body_bytes": LIMIT})
    payload = b"x" * size

    async def stream() -> AsyncIterator[bytes]:
        """A streaming client: 300-byte chunks, each a moment after the previous one (and the end of the body)."""
        for start in range(0, size, 300):
            yield payload[start : start + 300]
            await asyncio.sleep(0.01)

    async with http.post(f"{gateway.url}/upload", data=stream() if chunked else payload) as resp:
        raw = await resp.read()
        status, answer = resp.status, json.loads(raw)
        encoding = resp.request_info.headers.get("Transfer-Encoding")
    assert (encoding == "chunked") is chunked
    assert status == expected, answer
    if expected == 200:
        assert answer["body_bytes"] == size
        assert len(up.received) == 1
    else:
        assert answer["error"] == "payload_too_large"
        assert str(LIMIT) in answer["message"]
        assert up.received == []  # nothing oversized reached the upstream
