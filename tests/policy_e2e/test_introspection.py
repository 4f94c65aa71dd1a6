"""Introspection and OIDC discovery through a real gateway (dev agent, KV policy, real upstream) against a real
local identity provider (tests/auth/idp.py: RFC 7662 endpoint with client authentication, discovery document,
JWKS): verdicts, 503 when the IdP cannot answer, the caches (one call for 50 requests, negative entries,
revocation after cache_ttl, Redis shared by two gateways), discovery, hide_credentials, secrets."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from structlog.testing import capture_logs

from consulgw.server.gateway import Gateway
from consulgw.settings import Secret
from tests.auth.idp import CLIENT_ID, CLIENT_SECRET, Idp

from .conftest import Consul, SkewedClock, admin_routes, metric_value, routed_service, unique

SHARED_REDIS = "redis://127.0.0.1:6379/0"


@pytest.fixture
async def idp() -> AsyncIterator[Idp]:
    server = Idp()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def token_claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "user-42",
        "client_id": "web-app",
        "scope": "orders:read orders:write",
        "exp": now + 3600,
        "iat": now - 5,
        "aud": "orders-api",
        "email": "ada@example.test",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def new_token() -> str:
    return f"opaque-{uuid.uuid4().hex}"


def introspection_policy(idp: Idp, **extra: Any) -> dict[str, Any]:
    auth: dict[str, Any] = {
        "type": "introspection",
        "endpoint": idp.endpoint,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "audience": "orders-api",
        "required_scopes": ["orders:read"],
        "claims_to_headers": {"X-User-Email": "email"},
        **extra,
    }
    return {"auth": auth}


def sent(upstream: Any, name: str) -> list[str]:
    """Values of one header in the last request the upstream received."""
    return [v for k, v in upstream.received[-1]["headers"] if k.lower() == name.lower()]


async def call(http: aiohttp.ClientSession, gateway: Gateway, token: str | None, **headers: str) -> tuple[int, Any]:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with http.get(f"{gateway.url}/orders", headers=headers) as resp:
        raw = await resp.read()
        return resp.status, (json.loads(raw), dict(resp.headers))


CASES = [
    pytest.param(token_claims(), 200, None, id="active"),
    pytest.param(None, 401, "inactive_token", id="inactive"),
    pytest.param(token_claims(exp=int(time.time()) - 120), 401, "expired", id="expired"),
    pytest.param(token_claims(aud="billing-api"), 401, "invalid_claims", id="wrong-audience"),
    pytest.param(token_claims(scope="orders:write"), 403, "insufficient_scope", id="missing-scope"),
]


@pytest.mark.parametrize(("claims", "expected", "reason"), CASES)
async def test_introspection_verdicts(
    make_gateway: Any,
    consul: Consul,
    upstreams: Any,
    http: aiohttp.ClientSession,
    idp: Idp,
    claims: dict[str, Any] | None,
    expected: int,
    reason: str | None,
) -> None:
    gateway: Gateway = await make_gateway()
    up = await upstreams("orders")
    service = unique("orders")
    await routed_service(gateway, consul, service, up.port, introspection_policy(idp))
    token = new_token()
    if claims is not None:
        idp.tokens[token] = claims
    status, (body, headers) = await call(http, gateway, token, **{"X-User-ID": "root", "X-User-Email": "x@evil"})
    assert status == expected, body
    if expected == 200:
        assert sent(up, "X-User-ID") == ["user-42"]
        assert sent(up, "X-Consumer-ID") == ["web-app"]
        assert sent(up, "X-User-Scopes") == ["orders:read orders:write"]
        assert sent(up, "X-User-Email") == ["ada@example.test"]
        assert sent(up, "Authorization") == [f"Bearer {token}"]  # forwarded unless hide_credentials
        return
    assert up.received == []
    assert body["error"] == ("forbidden" if expected == 403 else "unauthorized")
    assert set(body) == {"error", "message", "request_id"}
    assert headers["WWW-Authenticate"].startswith('Bearer realm="consulgw", error=')
    assert token not in json.dumps(body)
    rejected = await metric_value(
        http, gateway.admin_url, "consulgw_auth_rejected_total", service=service, reason=str(reason)
    )
    assert rejected == 1.0


async def test_no_token_is_401_without_asking_the_idp(
    make_gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession, idp: Idp
) -> None:
    gateway: Gateway = await make_gateway()
    up = await upstreams("orders")
    await routed_service(gateway, consul, unique("orders"), up.port, introspection_policy(idp))
    status, (_, headers) = await call(http, gateway, None)
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Bearer realm="consulgw"'
    assert idp.total_calls == 0


@pytest.mark.parametrize("trouble", ["down", "slow", "http-500", "not-json"])
async def test_idp_trouble_is_503_never_401(
    make_gateway: Any,
    consul: Consul,
    upstreams: Any,
    http: aiohttp.ClientSession,
    idp: Idp,
    free_port: Any,
    trouble: str,
) -> None:
    gateway: Gateway = await make_gateway()
    up = await upstreams("orders")
    service = unique("orders")
    endpoint = f"http://127.0.0.1:{free_port()}/introspect" if trouble == "down" else idp.endpoint
    await routed_service(
        gateway, consul, service, up.port, introspection_policy(idp, endpoint=endpoint, timeout="300ms")
    )
    token = new_token()
    idp.tokens[token] = token_claims()
    idp.delay = 3.0 if trouble == "slow" else 0.0
    idp.status = 500 if trouble == "http-500" else 200
    idp.raw = "<html>down for maintenance</html>" if trouble == "not-json" else None
    status, (body, headers) = await call(http, gateway, token)
    assert status == 503, body
    assert body["error"] == "auth_unavailable"
    assert "WWW-Authenticate" not in headers
    assert up.received == []
    unavailable = await metric_value(
        http, gateway.admin_url, "consulgw_auth_rejected_total", service=service, reason="auth_unavailable"
    )
    assert unavailable == 1.0


async def test_fifty_requests_with_one_token_make_one_idp_call(
    make_gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession, idp: Idp
) -> None:
    gateway: Gateway = await make_gateway()
    up = await upstreams("orders")
    await routed_service(gateway, consul, unique("orders"), up.port, introspection_policy(idp))
    token = new_token()
    idp.tokens[token] = token_claims()
    idp.delay = 0.2  # the first call is slow, so the concurrent ones really overlap it
    results = await asyncio.gather(*(call(http, gateway, token) for _ in range(25)))
    results += [await call(http, gateway, token) for _ in range(25)]
    assert [status for status, _ in results] == [200] * 50
    assert idp.calls[token] == 1
    assert len(up.received) == 50


async def test_negative_cache_and_revocation_after_cache_ttl(
    make_gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession, idp: Idp
) -> None:
    clock = SkewedClock()
    gateway: Gateway = await make_gateway(clock=clock)
    up = await upstreams("orders")
    policy = introspection_policy(idp, cache_ttl="30s", negative_cache_ttl="10s")
    await routed_service(gateway, consul, unique("orders"), up.port, policy)

    unknown = new_token()
    for _ in range(5):
        assert (await call(http, gateway, unknown))[0] == 401
    assert idp.calls[unknown] == 1  # the inactive verdict is cached for negative_cache_ttl
    clock.offset += 11
    assert (await call(http, gateway, unknown))[0] == 401
    assert idp.calls[unknown] == 2

    token = new_token()
    idp.tokens[token] = token_claims()
    assert (await call(http, gateway, token))[0] == 200
    idp.revoke(token)
    clock.offset += 20
    assert (await call(http, gateway, token))[0] == 200  # within cache_ttl: the revocation is not seen yet
    clock.offset += 11
    assert (await call(http, gateway, token))[0] == 401  # cache_ttl passed: the IdP says inactive
    assert idp.calls[token] == 2


async def test_introspection_endpoint_from_discovery(
    make_gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession, idp: Idp
) -> None:
    gateway: Gateway = await make_gateway()
    up = await upstreams("orders")
    policy = introspection_policy(idp, hide_credentials=True)
    del policy["auth"]["endpoint"]
    policy["auth"]["discovery"] = idp.discovery_url
    policy["auth"]["client_auth"] = "post"
    await routed_service(gateway, consul, unique("orders"), up.port, policy)
    token = new_token()
    idp.tokens[token] = token_claims()
    for _ in range(3):
        status, (body, _) = await call(http, gateway, token, **{"X-Other": "kept"})
        assert status == 200, body
    assert idp.metadata_fetches == 1
    assert idp.auth_used == ["post"]
    assert sent(up, "X-User-ID") == ["user-42"]
    assert sent(up, "Authorization") == []  # hide_credentials: the token never reaches the upstream
    assert sent(up, "X-Other") == ["kept"]


async def test_jwt_with_discovery_and_hide_credentials(
    make_gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession, idp: Idp
) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    idp.keys = [{**RSAAlgorithm.to_jwk(private.public_key(), as_dict=True), "kid": "k1", "use": "sig"}]
    gateway: Gateway = await make_gateway()
    up = await upstreams("orders")
    policy = {
        "auth": {
            "type": "jwt",
            "algorithms": ["RS256"],
            "discovery": idp.discovery_url,
            "audience": "orders-api",
            "hide_credentials": True,
        }
    }
    await routed_service(gateway, consul, unique("orders"), up.port, policy)
    good = jwt.encode(token_claims(iss=idp.issuer), private, algorithm="RS256", headers={"kid": "k1"})
    foreign = jwt.encode(token_claims(iss="https://evil.example"), private, algorithm="RS256", headers={"kid": "k1"})
    status, (body, _) = await call(http, gateway, good)
    assert status == 200, body
    assert sent(up, "X-User-ID") == ["user-42"]
    assert sent(up, "Authorization") == []
    status, (body, _) = await call(http, gateway, foreign)
    assert status == 401
    assert body["message"] == "invalid token: wrong issuer"  # the issuer came from the discovery document
    assert (idp.metadata_fetches, idp.jwks_fetches) == (1, 1)


async def test_redis_cache_is_seen_by_a_second_gateway(
    make_gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession, idp: Idp
) -> None:
    first: Gateway = await make_gateway(redis_url=Secret(value=SHARED_REDIS))
    second: Gateway = await make_gateway(redis_url=Secret(value=SHARED_REDIS))
    up = await upstreams("orders")
    service = unique("orders")
    policy = introspection_policy(idp, cache="redis")
    await routed_service(first, consul, service, up.port, policy)
    await routed_service(second, consul, service, up.port, policy)
    token = new_token()
    idp.tokens[token] = token_claims()
    assert (await call(http, first, token))[0] == 200
    status, (body, _) = await call(http, second, token)
    assert status == 200, body
    assert idp.calls[token] == 1  # the second gateway found the first one's verdict in Redis
    assert sent(up, "X-User-ID") == ["user-42"]
    assert sent(up, "X-User-Email") == ["ada@example.test"]


async def test_client_secret_is_not_in_routes_metrics_or_logs(
    make_gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession, idp: Idp
) -> None:
    with capture_logs() as logs:
        gateway: Gateway = await make_gateway()
        up = await upstreams("orders")
        service = unique("orders")
        await routed_service(gateway, consul, service, up.port, introspection_policy(idp, timeout="300ms"))
        token = new_token()
        idp.tokens[token] = token_claims()
        assert (await call(http, gateway, token))[0] == 200
        idp.status = 500
        assert (await call(http, gateway, new_token()))[0] == 503
        routes = await admin_routes(http, gateway.admin_url)
        async with http.get(f"{gateway.admin_url}/metrics") as resp:
            metrics = await resp.text()
    assert routes["services"][service]["policy"]["auth"] == {"type": "introspection"}
    for text in (json.dumps(routes), metrics, repr(logs)):
        assert CLIENT_SECRET not in text
        assert token not in text
    assert any(entry["event"] == "introspection_failed" for entry in logs)
