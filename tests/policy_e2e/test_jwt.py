"""JWT auth through a real gateway: every way a token can be wrong, JWKS rotation, and random Authorization values."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jwt.algorithms import RSAAlgorithm

from consulgw.server.gateway import Gateway

from .conftest import Consul, JwksServer, SkewedClock, metric_value, routed_service, unique

ISSUER = "https://login.example.test/"
AUDIENCE = "users-api"


@dataclass(frozen=True)
class Signer:
    private: rsa.RSAPrivateKey
    kid: str

    @property
    def pem(self) -> str:
        return (
            self.private.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    @property
    def jwk(self) -> dict[str, Any]:
        return {**RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True), "kid": self.kid, "use": "sig"}

    def sign(self, claims: dict[str, Any], *, kid: str | None = "", alg: str = "RS256") -> str:
        headers = {"kid": self.kid if kid == "" else kid} if kid is not None else None
        return jwt.encode(claims, self.private, algorithm=alg, headers=headers)


@pytest.fixture(scope="session")
def signers() -> dict[str, Signer]:
    return {
        name: Signer(rsa.generate_private_key(public_exponent=65537, key_size=2048), kid=f"kid-{name}")
        for name in ("a", "b", "stranger")
    }


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "user-42",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": now + 3600,
        "iat": now - 5,
        "scope": "users:write users:read",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge_hs256(secret: bytes, payload: dict[str, Any], kid: str) -> str:
    """HS256 signed by hand with ``secret`` (PyJWT refuses a PEM as an HMAC secret; an attacker does not)."""
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = b64url(json.dumps(payload).encode())
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(mac)}"


def unsigned(payload: dict[str, Any]) -> str:
    return f"{b64url(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{b64url(json.dumps(payload).encode())}."


def tampered(token: str) -> str:
    """Same header and signature, payload changed to another subject."""
    head, _, sig = token.split(".")
    return f"{head}.{b64url(json.dumps(claims(sub='admin')).encode())}.{sig}"


def pem_policy(signer: Signer) -> dict[str, Any]:
    return {
        "auth": {
            "type": "jwt",
            "algorithms": ["RS256"],
            "public_key": signer.pem,
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "required_scopes": ["users:read"],
        }
    }


def jwks_policy(url: str) -> dict[str, Any]:
    return {"auth": {"type": "jwt", "algorithms": ["RS256"], "jwks_url": url, "issuer": ISSUER, "audience": AUDIENCE}}


Token = Callable[[dict[str, Signer]], str | None]

CASES = [
    pytest.param("pem", lambda s: s["a"].sign(claims()), 200, None, id="valid"),
    pytest.param("jwks", lambda s: s["a"].sign(claims()), 200, None, id="valid-via-jwks"),
    pytest.param("pem", lambda s: None, 401, "missing_credentials", id="no-token"),
    pytest.param("pem", lambda s: s["a"].sign(claims(exp=int(time.time()) - 60, iat=int(time.time()) - 120)), 401,
                 "expired", id="expired"),
    pytest.param("pem", lambda s: s["a"].sign(claims(nbf=int(time.time()) + 600)), 401, "not_yet_valid",
                 id="not-yet-valid"),
    pytest.param("pem", lambda s: s["a"].sign(claims(iss="https://evil.example/")), 401, "invalid_claims",
                 id="wrong-issuer"),
    pytest.param("pem", lambda s: s["a"].sign(claims(aud="billing-api")), 401, "invalid_claims", id="wrong-audience"),
    pytest.param("pem", lambda s: tampered(s["a"].sign(claims())), 401, "invalid_signature", id="tampered-signature"),
    pytest.param("pem", lambda s: s["stranger"].sign(claims()), 401, "invalid_signature", id="signed-by-another-key"),
    pytest.param("pem", lambda s: unsigned(claims()), 401, "disallowed_algorithm", id="alg-none"),
    pytest.param("pem", lambda s: forge_hs256(s["a"].pem.encode(), claims(), s["a"].kid), 401, "disallowed_algorithm",
                 id="hs-rs-confusion"),
    pytest.param("jwks", lambda s: s["stranger"].sign(claims()), 401, "unknown_key", id="unknown-kid"),
    pytest.param("pem", lambda s: s["a"].sign(claims(scope="users:write")), 403, "insufficient_scope",
                 id="missing-scope"),
]  # fmt: skip


@pytest.mark.parametrize(("policy_kind", "token", "expected", "reason"), CASES)
async def test_jwt_table(
    make_gateway: Any,
    consul: Consul,
    upstreams: Any,
    http: aiohttp.ClientSession,
    jwks_server: JwksServer,
    signers: dict[str, Signer],
    policy_kind: str,
    token: Token,
    expected: int,
    reason: str | None,
) -> None:
    gateway: Gateway = await make_gateway()
    up = await upstreams("users")
    jwks_server.keys = [signers["a"].jwk]
    policy = pem_policy(signers["a"]) if policy_kind == "pem" else jwks_policy(jwks_server.url)
    service = unique("users")
    await routed_service(gateway, consul, service, up.port, policy)

    value = token(signers)
    headers = {"X-User-ID": "root", "X-User-Scopes": "admin", "X-Consumer-ID": "mallory"}
    if value is not None:
        headers["Authorization"] = f"Bearer {value}"
    async with http.get(f"{gateway.url}/me", headers=headers) as resp:
        raw = await resp.read()
        status, response_headers = resp.status, resp.headers.copy()
    assert status == expected, raw

    if expected == 200:
        (seen,) = up.received
        sent = seen["headers"]
        assert [v for k, v in sent if k.lower() == "x-user-id"] == ["user-42"]  # the client's "root" is gone
        assert [v for k, v in sent if k.lower() == "x-user-scopes"] == ["users:read users:write"]
        assert not [v for k, v in sent if k.lower() == "x-consumer-id"]
        return
    assert up.received == []  # a refused request never reaches the upstream
    body = json.loads(raw)
    assert set(body) == {"error", "message", "request_id"}
    assert body["error"] == ("forbidden" if expected == 403 else "unauthorized")
    challenge = response_headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="consulgw"')
    if expected == 403:
        assert 'error="insufficient_scope"' in challenge
    elif value is not None:
        assert 'error="invalid_token"' in challenge
    assert response_headers["Content-Type"].startswith("application/json")
    # The refusal is for the reason the case is about (not, say, every token failing as malformed).
    rejected = await metric_value(
        http, gateway.admin_url, "consulgw_auth_rejected_total", service=service, reason=str(reason)
    )
    assert rejected == 1.0
    if value is not None:
        for part in value.split("."):  # neither the token nor any of its segments is echoed back
            if len(part) >= 8:
                assert part not in raw.decode(), "the token is echoed in the error body"
                assert all(part not in v for v in response_headers.values())


async def test_jwks_rotation_is_picked_up_on_unknown_kid(
    make_gateway: Any,
    consul: Consul,
    upstreams: Any,
    http: aiohttp.ClientSession,
    jwks_server: JwksServer,
    signers: dict[str, Signer],
) -> None:
    """Key A published -> token(A) 200; the set rotates to B -> token(B, new kid) 200 once a refresh is allowed.

    The cache refreshes on an unknown kid at most once per refresh interval (consulgw/auth/jwks.py). Rather than
    sleeping through it, the gateway runs on a SkewedClock that the test moves forward one second at a time while
    token B is refused, so no duration is asserted and the test does not wait ten real seconds.
    """
    clock = SkewedClock()
    gateway: Gateway = await make_gateway(clock=clock)
    up = await upstreams("users")
    jwks_server.keys = [signers["a"].jwk]
    service = unique("users")
    await routed_service(gateway, consul, service, up.port, jwks_policy(jwks_server.url))

    async def status_with(token: str) -> int:
        async with http.get(f"{gateway.url}/", headers={"Authorization": f"Bearer {token}"}) as resp:
            await resp.read()
            return resp.status

    assert await status_with(signers["a"].sign(claims())) == 200
    assert jwks_server.fetches == 1

    jwks_server.keys = [signers["b"].jwk]  # the IdP rotates: A is withdrawn, B (new kid) published
    token_b = signers["b"].sign(claims())
    for _ in range(120):
        status = await status_with(token_b)
        if status == 200:
            break
        assert status == 401
        clock.offset += 1.0  # one more second for the refresh rate limit
    assert status == 200, "a token signed with the rotated-in key was never accepted"
    assert jwks_server.fetches == 2  # refreshed exactly once for the rotation, not once per refused request
    assert [v for k, v in up.received[-1]["headers"] if k.lower() == "x-user-id"] == ["user-42"]
    # A is no longer in the published set, so its tokens are refused now.
    assert await status_with(signers["a"].sign(claims())) == 401


# -- hypothesis ---------------------------------------------------------------------------------------------------

_B64URL = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", max_size=60)
_JSON_SEGMENT = st.dictionaries(
    st.sampled_from(["alg", "kid", "typ", "crit", "b64", "sub", "exp", "scope", "iss", "aud", "nbf"]),
    st.one_of(st.none(), st.integers(), st.text(max_size=10), st.sampled_from(["RS256", "HS256", "none", "ES256"])),
    max_size=5,
).map(lambda d: b64url(json.dumps(d).encode()))
# Any text a client can put in a header: printable ASCII mostly, plus any non-control Unicode (sent as UTF-8).
_HEADER_TEXT = st.text(
    st.one_of(st.characters(min_codepoint=0x20, max_codepoint=0x7E), st.characters(exclude_categories=("Cc", "Cs"))),
    max_size=80,
)
authorization_values = st.one_of(
    _HEADER_TEXT,
    st.builds(lambda s: "Bearer " + s, _HEADER_TEXT),
    st.builds(
        lambda scheme, parts: f"{scheme} {'.'.join(parts)}",
        st.sampled_from(["Bearer", "bearer", "BEARER", "Basic", "Token"]),
        st.lists(st.one_of(_B64URL, _JSON_SEGMENT), min_size=1, max_size=4),
    ),
    st.builds(lambda head, body, sig: f"Bearer {head}.{body}.{sig}", _JSON_SEGMENT, _JSON_SEGMENT, _B64URL),
)


async def test_arbitrary_authorization_values_get_401_or_403_json_never_500(
    make_gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession, signers: dict[str, Signer]
) -> None:
    gateway: Gateway = await make_gateway()
    up = await upstreams("users")
    service = unique("users")
    await routed_service(gateway, consul, service, up.port, pem_policy(signers["a"]))
    loop = asyncio.get_running_loop()
    seen: list[int] = []

    async def probe(value: str) -> None:
        async with http.get(f"{gateway.url}/", headers={"Authorization": value}) as resp:
            raw = await resp.read()
            assert resp.status in (401, 403), (value, resp.status, raw)
            body = json.loads(raw)
            assert body["error"] in ("unauthorized", "forbidden")
            assert "WWW-Authenticate" in resp.headers
            seen.append(resp.status)

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(authorization_values)
    def prop(value: str) -> None:
        asyncio.run_coroutine_threadsafe(probe(value), loop).result(timeout=30)

    await asyncio.to_thread(prop)
    assert len(seen) >= 60
    assert up.received == []
    async with http.get(f"{gateway.url}/", headers={"Authorization": f"Bearer {signers['a'].sign(claims())}"}) as resp:
        assert resp.status == 200  # the gateway is still fine afterwards
