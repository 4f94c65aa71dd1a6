"""CORS, header-transform and body-limit stages on a real aiohttp server (tests/support/pipeline.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from multidict import CIMultiDict

from consulgw.errors import GatewayError, Unauthorized
from consulgw.pipeline.answer import Answer
from consulgw.pipeline.chain import Next
from consulgw.pipeline.context import Inbound, RequestContext
from consulgw.pipeline.stages.body_limit import BodyLimitStage, LimitedBody, limited_body
from consulgw.pipeline.stages.cors import CorsStage
from consulgw.pipeline.stages.headers import HeaderTransformStage
from consulgw.policy.model import CorsPolicy, HeaderPolicy
from consulgw.policy.parse import parse_policy
from tests.support.pipeline import CALLS, ClientFactory, pipeline_app


class Deny:
    """A later stage that refuses (like auth): CORS headers must still reach the page."""

    async def __call__(self, ctx: RequestContext, request: Inbound, call_next: Next) -> Answer:
        raise Unauthorized("token required", headers={"WWW-Authenticate": 'Bearer realm="users"'})


def cors(**doc: Any) -> CorsStage:
    policy = parse_policy({"cors": doc}, key="test").cors
    assert isinstance(policy, CorsPolicy)
    return CorsStage.from_policy(policy)


LIST_POLICY = {
    "origins": ["https://app.example.com", "https://*.example.org"],
    "methods": ["GET", "POST", "DELETE"],
    "headers": ["Content-Type", "Authorization"],
    "expose_headers": ["X-Request-ID", "RateLimit-Remaining"],
    "credentials": True,
    "max_age": "10m",
}


def allow_headers(response: Any) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower().startswith("access-control-allow")}


# ---------------------------------------------------------------------------------------------------------- CORS


async def test_preflight_from_allowed_origin_is_answered_by_the_gateway(aiohttp_client: ClientFactory) -> None:
    app = pipeline_app((cors(**LIST_POLICY),))
    client = await aiohttp_client(app)
    response = await client.options(
        "/users",
        headers={
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "DELETE",
            "Access-Control-Request-Headers": "content-type, authorization",
        },
    )
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert response.headers["Access-Control-Allow-Methods"] == "GET, POST, DELETE"
    assert response.headers["Access-Control-Allow-Headers"] == "Content-Type, Authorization"
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert response.headers["Access-Control-Max-Age"] == "600"
    assert "Origin" in response.headers["Vary"]
    assert app[CALLS] == []  # never forwarded


@pytest.mark.parametrize(
    ("origin", "method", "request_headers", "reason"),
    [
        pytest.param("https://evil.example", "GET", "", "origin not allowed", id="origin"),
        pytest.param("https://app.example.com.evil.example", "GET", "", "origin not allowed", id="suffix-trick"),
        pytest.param("https://app.example.com", "PATCH", "", "method not allowed", id="method"),
        pytest.param("https://app.example.com", "POST", "x-debug", "request header not allowed", id="header"),
    ],
)
async def test_refused_preflight_has_no_allow_headers(
    aiohttp_client: ClientFactory, origin: str, method: str, request_headers: str, reason: str
) -> None:
    app = pipeline_app((cors(**LIST_POLICY),))
    client = await aiohttp_client(app)
    headers = {"Origin": origin, "Access-Control-Request-Method": method}
    if request_headers:
        headers["Access-Control-Request-Headers"] = request_headers
    response = await client.options("/users", headers=headers)
    assert response.status == 403
    assert allow_headers(response) == {}
    assert reason in (await response.json())["message"]
    assert app[CALLS] == []


async def test_actual_request_from_allowed_origin(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(pipeline_app((cors(**LIST_POLICY),)))
    response = await client.get("/users", headers={"Origin": "https://app.example.com"})
    assert response.status == 200
    assert response.headers.getall("Access-Control-Allow-Origin") == ["https://app.example.com"]
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert response.headers["Access-Control-Expose-Headers"] == "X-Request-ID, RateLimit-Remaining"
    assert set(response.headers.getall("Vary")) == {"Accept-Encoding", "Origin"}


async def test_actual_request_from_other_origin_gets_no_permission(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(pipeline_app((cors(**LIST_POLICY),)))
    response = await client.get("/users", headers={"Origin": "https://evil.example"})
    assert response.status == 200  # CORS is enforced by the browser; the gateway withholds permission
    assert "Access-Control-Allow-Origin" not in response.headers  # the backend's "*" was removed
    assert "Origin" in response.headers.getall("Vary")


async def test_request_without_origin_passes_without_cors_headers(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(pipeline_app((cors(**LIST_POLICY),)))
    response = await client.get("/users")
    assert response.status == 200
    assert allow_headers(response) == {}
    assert "Origin" in response.headers.getall("Vary")


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        pytest.param("https://a.example.org", True, id="subdomain"),
        pytest.param("https://a.b.example.org", True, id="deep-subdomain"),
        pytest.param("https://A.Example.org", True, id="case"),
        pytest.param("https://a.example.org:443", True, id="default-port"),
        pytest.param("https://example.org", False, id="apex"),
        pytest.param("http://a.example.org", False, id="scheme"),
        pytest.param("https://a.example.org:8443", False, id="port"),
        pytest.param("https://evilexample.org", False, id="no-dot"),
        pytest.param("https://a.example.org.evil.net", False, id="suffix"),
        pytest.param("null", False, id="null"),
    ],
)
async def test_wildcard_subdomain_origins(aiohttp_client: ClientFactory, origin: str, allowed: bool) -> None:
    client = await aiohttp_client(pipeline_app((cors(**LIST_POLICY),)))
    response = await client.get("/users", headers={"Origin": origin})
    assert (response.headers.get("Access-Control-Allow-Origin") == origin) is allowed


async def test_any_origin_without_credentials(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(pipeline_app((cors(origins=["*"], methods=["*"], headers=["*"]),)))
    response = await client.get("/users", headers={"Origin": "https://anyone.example"})
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in response.headers
    assert response.headers.getall("Vary") == ["Accept-Encoding"]
    preflight = await client.options(
        "/users",
        headers={
            "Origin": "https://anyone.example",
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "X-Custom, Content-Type",
        },
    )
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert preflight.headers["Access-Control-Allow-Methods"] == "PATCH"  # "*" reflects what was asked
    assert preflight.headers["Access-Control-Allow-Headers"] == "X-Custom, Content-Type"


async def test_errors_of_later_stages_carry_cors_headers(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(pipeline_app((cors(**LIST_POLICY), Deny())))
    response = await client.get("/users", headers={"Origin": "https://app.example.com"})
    assert response.status == 401
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert response.headers["Vary"] == "Origin"
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="users"'
    preflight = await client.options(
        "/users", headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "GET"}
    )
    assert preflight.status == 204  # preflights are never authenticated


async def test_options_without_request_method_is_an_actual_request(aiohttp_client: ClientFactory) -> None:
    app = pipeline_app((cors(**LIST_POLICY),))
    client = await aiohttp_client(app)
    response = await client.options("/users", headers={"Origin": "https://app.example.com"})
    assert response.status == 200
    assert app[CALLS] == ["OPTIONS"]


# ------------------------------------------------------------------------------------------------ header transforms


def header_stage(doc: dict[str, Any]) -> HeaderTransformStage:
    policy = parse_policy({"headers": doc}, key="test").headers
    assert isinstance(policy, HeaderPolicy)
    return HeaderTransformStage.from_policy(policy)


async def test_header_transforms(aiohttp_client: ClientFactory) -> None:
    stage = header_stage(
        {
            "request": {"add": {"X-Via": "consulgw"}, "set": {"X-Env": "prod"}, "remove": ["X-Debug"]},
            "response": {"add": {"X-Frame-Options": "DENY"}, "set": {"Server": "consulgw"}, "remove": ["X-Backend"]},
        }
    )
    assert stage.active
    client = await aiohttp_client(pipeline_app((stage,)))
    response = await client.get(
        "/users", headers=[("X-Debug", "1"), ("X-Env", "dev"), ("X-Via", "client-proxy"), ("X-Keep", "k")]
    )
    assert response.status == 200
    upstream = CIMultiDict((k, v) for k, v in (await response.json())["upstream_headers"])
    assert "X-Debug" not in upstream
    assert upstream.getall("X-Env") == ["prod"]
    assert upstream.getall("X-Via") == ["client-proxy", "consulgw"]  # add appends
    assert upstream["X-Keep"] == "k"
    assert response.headers.getall("Server") == ["consulgw"]
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "X-Backend" not in response.headers


def test_empty_header_policy_is_inactive() -> None:
    assert not HeaderTransformStage.from_policy(HeaderPolicy()).active


# ------------------------------------------------------------------------------------------------------ body limit


async def chunks(total: int, size: int = 1000) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        part = min(size, total - sent)
        sent += part
        yield b"x" * part


@pytest.mark.parametrize(
    ("limit", "body", "chunked", "status"),
    [
        pytest.param(1000, 1000, False, 200, id="length-at-limit"),
        pytest.param(1000, 1001, False, 413, id="length-over-limit"),
        pytest.param(5000, 4000, True, 200, id="chunked-under-limit"),
        pytest.param(5000, 12000, True, 413, id="chunked-over-limit"),
        pytest.param(0, 0, False, 200, id="zero-limit-no-body"),
        pytest.param(0, 10, True, 413, id="zero-limit-chunked"),
    ],
)
async def test_body_limit(aiohttp_client: ClientFactory, limit: int, body: int, chunked: bool, status: int) -> None:
    app = pipeline_app((BodyLimitStage.from_policy(limit),), max_body_bytes=limit)
    client = await aiohttp_client(app)
    data: Any = chunks(body) if chunked else b"x" * body
    response = await client.post("/upload", data=data)
    assert response.status == status
    payload = await response.json()
    if status == 413:
        assert payload["error"] == "payload_too_large"
        assert f"limit of {limit} bytes" in payload["message"]
        if not chunked:
            assert app[CALLS] == []  # refused before the body was read or anything was forwarded
    else:
        assert payload["body"] == body


class Stream:
    def __init__(self, parts: list[bytes]) -> None:
        self.parts = parts

    async def readany(self) -> bytes:
        return self.parts.pop(0) if self.parts else b""


async def test_limited_body_stops_before_yielding_the_excess() -> None:
    body = LimitedBody(Stream([b"a" * 4, b"b" * 4, b"c" * 4]), 6)
    seen: list[bytes] = []

    async def drain() -> None:
        async for chunk in body:
            seen.append(chunk)

    with pytest.raises(GatewayError) as info:
        await drain()
    assert seen == [b"a" * 4]
    assert body.exceeded
    assert info.value.status == 413
    assert [c async for c in limited_body(Stream([b"abc"]), None)] == [b"abc"]
