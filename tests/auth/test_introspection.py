"""Introspection (RFC 7662) in the auth stage behind a real aiohttp server, against a real local IdP (tests/auth/idp.py):
verdicts and claim checks, identity headers, failures answered 503 (never 401), the caches (memory LRU,
single-flight, Redis shared by gateways), discovery, and secrets that never leak."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from structlog.testing import capture_logs

from consulgw.auth.introspection import REDIS_PREFIX, Introspector, bearer_token
from consulgw.logs import redact_secrets
from consulgw.metrics import GatewayMetrics
from consulgw.pipeline.stages.auth import AuthStage
from consulgw.policy.model import IntrospectionAuth
from tests.auth.idp import CLIENT_ID, CLIENT_SECRET, Idp
from tests.auth.keys import NOW
from tests.ratelimit.support import FakeClock, make_deps, serve_stages

ISSUER = "https://idp.example.test/"
REDIS_URL = "redis://127.0.0.1:6379/0"
SPOOFED = {"X-User-ID": "root", "X-Consumer-ID": "mallory", "X-User-Scopes": "admin", "X-User-Email": "x@evil.test"}


def active(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "sub": "user-42",
        "client_id": "web-app",
        "scope": "orders:read orders:write",
        "exp": NOW + 300,
        "iat": NOW - 10,
        "iss": ISSUER,
        "aud": "orders-api",
        "email": "ada@example.test",
        "token_type": "Bearer",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def policy_for(idp: Idp, **overrides: Any) -> IntrospectionAuth:
    fields: dict[str, Any] = {
        "endpoint": idp.endpoint,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "claims_to_headers": (("X-User-Email", "email"),),
    }
    fields.update(overrides)
    return IntrospectionAuth(**fields)


def new_token() -> str:
    return f"tok-{uuid.uuid4().hex}"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def upstream(self) -> dict[str, list[str]]:
        seen: dict[str, list[str]] = self.body["upstream"]
        return seen


class Client:
    def __init__(self, http: aiohttp.ClientSession, url: str, metrics: GatewayMetrics) -> None:
        self.http = http
        self.url = url
        self.metrics = metrics

    async def get(self, token: str | None = None, **headers: str) -> Answer:
        sent = dict(headers)
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        async with self.http.get(self.url, headers=sent) as resp:
            return Answer(resp.status, dict(resp.headers), await resp.json())

    def rejected(self, reason: str) -> float:
        return float(self.metrics.auth_rejected.labels("svc", reason)._value.get())


@asynccontextmanager
async def stage(
    policy: IntrospectionAuth, *, clock: FakeClock | None = None, redis: Redis | None = None
) -> AsyncIterator[Client]:
    metrics = GatewayMetrics()
    async with aiohttp.ClientSession() as http:
        deps = make_deps(service="svc", http=http, clock=clock or FakeClock(), redis=redis, metrics=metrics)
        async with serve_stages((AuthStage.from_policy(policy, deps),)) as url:
            yield Client(http, url, metrics)


# -- verdicts and claim checks ------------------------------------------------------------------------------------

CLAIM_CASES = [
    pytest.param(active(), {}, 200, None, id="active"),
    pytest.param(None, {}, 401, "inactive_token", id="inactive"),
    pytest.param(active(exp=NOW - 1), {}, 401, "expired", id="expired"),
    pytest.param(active(exp=NOW - 10), {"leeway": 30.0}, 200, None, id="expired-within-leeway"),
    pytest.param(active(nbf=NOW + 600), {}, 401, "not_yet_valid", id="not-yet-valid"),
    pytest.param(active(exp="soon"), {}, 401, "invalid_claims", id="exp-not-a-number"),
    pytest.param(active(), {"issuer": ISSUER}, 200, None, id="issuer"),
    pytest.param(active(iss="https://evil.example/"), {"issuer": ISSUER}, 401, "invalid_claims", id="wrong-issuer"),
    pytest.param(active(iss=None), {"issuer": ISSUER}, 401, "invalid_claims", id="issuer-required-when-set"),
    pytest.param(active(iss=None, aud=None), {}, 200, None, id="iss-aud-optional-when-not-set"),
    pytest.param(active(), {"audience": ("orders-api",)}, 200, None, id="audience"),
    pytest.param(active(aud=["billing", "orders-api"]), {"audience": ("orders-api",)}, 200, None, id="audience-list"),
    pytest.param(active(aud="billing-api"), {"audience": ("orders-api",)}, 401, "invalid_claims", id="wrong-audience"),
    pytest.param(active(aud=None), {"audience": ("orders-api",)}, 401, "invalid_claims", id="audience-required"),
    pytest.param(active(), {"required_scopes": frozenset({"orders:read"})}, 200, None, id="scope"),
    pytest.param(active(scope="orders:write"), {"required_scopes": frozenset({"orders:read"})}, 403,
                 "insufficient_scope", id="missing-scope"),
    pytest.param(active(scope=5), {}, 401, "invalid_claims", id="malformed-scope"),
    pytest.param(active(sub="a\r\nX-Admin: 1"), {}, 401, "invalid_claims", id="sub-with-crlf"),
    pytest.param(active(sub=None, client_id=None), {}, 401, "invalid_claims", id="no-subject-no-client"),
]  # fmt: skip


@pytest.mark.parametrize(("claims", "overrides", "expected", "reason"), CLAIM_CASES)
async def test_claims_table(
    oauth_idp: Idp, claims: dict[str, Any] | None, overrides: dict[str, Any], expected: int, reason: str | None
) -> None:
    token = new_token()
    if claims is not None:
        oauth_idp.tokens[token] = claims
    async with stage(policy_for(oauth_idp, **overrides)) as client:
        answer = await client.get(token, **SPOOFED)
        assert answer.status == expected, answer.body
        if expected == 200:
            assert answer.upstream["X-User-ID"] == ["user-42"]  # the client's copies are gone, not appended
            assert answer.upstream["X-Consumer-ID"] == ["web-app"]
            assert answer.upstream["X-User-Scopes"] == ["orders:read orders:write"]
            assert answer.upstream["X-User-Email"] == ["ada@example.test"]
            assert answer.body["consumer"] == "user-42"
            return
        assert answer.body["error"] == ("forbidden" if expected == 403 else "unauthorized")
        challenge = answer.headers["WWW-Authenticate"]
        assert challenge.startswith('Bearer realm="consulgw", error=')
        assert ('error="insufficient_scope"' if expected == 403 else 'error="invalid_token"') in challenge
        assert token not in json.dumps(answer.body)
        assert token not in challenge
        assert client.rejected(str(reason)) == 1


async def test_identity_variants(oauth_idp: Idp) -> None:
    """client-credentials tokens (no sub) identify the client; ``username`` stands in for a missing ``sub``."""
    machine, human = new_token(), new_token()
    oauth_idp.tokens[machine] = active(sub=None, scope=None, email=None)
    oauth_idp.tokens[human] = active(sub=None, username="ada", client_id=None, email=7)
    async with stage(policy_for(oauth_idp)) as client:
        answer = await client.get(machine, **SPOOFED)
        assert answer.status == 200
        assert answer.upstream["X-Consumer-ID"] == ["web-app"]
        assert answer.body["consumer"] == "web-app"
        for absent in ("X-User-ID", "X-User-Scopes", "X-User-Email"):  # removed, and nothing to put back
            assert absent not in answer.upstream
        answer = await client.get(human)
        assert answer.upstream["X-User-ID"] == ["ada"]
        assert "X-Consumer-ID" not in answer.upstream
        assert answer.upstream["X-User-Email"] == ["7"]  # numbers are forwarded as JSON writes them


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("a\r\nX-Injected: 1", id="crlf"),
        pytest.param("é@example.test", id="not-ascii"),
        pytest.param("a" * 1025, id="too-long"),
        pytest.param({"nested": "object"}, id="object"),
        pytest.param(["a", "b"], id="list"),
        pytest.param(None, id="missing"),
    ],
)
async def test_claims_to_headers_skips_values_it_cannot_forward_unchanged(oauth_idp: Idp, value: object) -> None:
    token = new_token()
    oauth_idp.tokens[token] = active(email=value)
    async with stage(policy_for(oauth_idp)) as client:
        answer = await client.get(token, **SPOOFED)
    assert answer.status == 200
    assert "X-User-Email" not in answer.upstream  # the spoofed copy is removed and nothing replaces it
    assert answer.upstream["X-User-ID"] == ["user-42"]


async def test_no_token_and_malformed_tokens_never_reach_the_idp(oauth_idp: Idp) -> None:
    async with stage(policy_for(oauth_idp)) as client:
        answer = await client.get()
        assert answer.status == 401
        assert answer.headers["WWW-Authenticate"] == 'Bearer realm="consulgw"'  # RFC 6750 3.1: no error code
        for value in ("Basic dXNlcjpwYXNz", "Bearer two words", "Bearer", "Bearer tok\u00e9n"):
            async with client.http.get(client.url, headers={"Authorization": value}) as resp:
                assert resp.status == 401, value
                assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
        assert client.rejected("missing_credentials") == 1
        assert client.rejected("malformed_credentials") == 4
    assert oauth_idp.total_calls == 0


@pytest.mark.parametrize(
    ("value", "bare", "expected"),
    [
        pytest.param("Bearer abc.DEF-_~+/==", False, "abc.DEF-_~+/==", id="b64token"),
        pytest.param("bearer  abc ", False, "abc", id="scheme-case-and-spaces"),
        pytest.param("abc", False, None, id="bare-in-authorization"),
        pytest.param("abc", True, "abc", id="bare-in-custom-header"),
        pytest.param("Bearer a=b", False, None, id="padding-inside"),
        pytest.param(None, False, "", id="absent"),
        pytest.param("  ", False, "", id="blank"),
        pytest.param("Bearer " + "a" * 16385, False, None, id="too-long"),
    ],
)
def test_bearer_token(value: str | None, bare: bool, expected: str | None) -> None:
    assert bearer_token(value, bare_allowed=bare) == expected


# -- client authentication and the request to the IdP -------------------------------------------------------------


@pytest.mark.parametrize("method", ["basic", "post"])
async def test_client_authentication(oauth_idp: Idp, method: str) -> None:
    oauth_idp.auth_methods = (method,)
    token = new_token()
    oauth_idp.tokens[token] = active()
    async with stage(policy_for(oauth_idp, client_auth=method)) as client:
        assert (await client.get(token)).status == 200
    assert oauth_idp.auth_used == [method]
    assert oauth_idp.requests[0]["token"] == token
    assert oauth_idp.requests[0]["token_type_hint"] == "access_token"


async def test_token_type_hint_can_be_left_out_and_custom_header(oauth_idp: Idp) -> None:
    token = new_token()
    oauth_idp.tokens[token] = active()
    async with stage(policy_for(oauth_idp, token_type_hint=None, header="X-Access-Token")) as client:
        assert (await client.get(**{"X-Access-Token": token})).status == 200  # a bare token in a custom header
        assert (await client.get(**{"X-Access-Token": f"Bearer {token}"})).status == 200
    assert "token_type_hint" not in oauth_idp.requests[0]


# -- the IdP in trouble: 503, never 401, never cached -------------------------------------------------------------

OUTAGES = [
    pytest.param({"status": 500}, id="http-500"),
    pytest.param({"status": 502}, id="http-502"),
    pytest.param({"status": 400}, id="http-400"),
    pytest.param({"raw": "<html>maintenance</html>"}, id="not-json"),
    pytest.param({"raw": '{"sub": "user-42"}'}, id="no-active"),
    pytest.param({"raw": '{"active": "true"}'}, id="active-not-boolean"),
    pytest.param({"raw": "[true]"}, id="not-an-object"),
    pytest.param({"delay": 3.0}, id="slow-beyond-timeout"),
    pytest.param({"client_secret": "rotated-at-the-idp"}, id="client-rejected"),
    pytest.param({"closed": True}, id="idp-down"),
]


@pytest.mark.parametrize("outage", OUTAGES)
async def test_idp_trouble_is_503_not_401_and_not_cached(
    oauth_idp: Idp, free_port: Any, outage: dict[str, Any]
) -> None:
    token = new_token()
    oauth_idp.tokens[token] = active()
    endpoint = f"http://127.0.0.1:{free_port()}/introspect" if outage.get("closed") else oauth_idp.endpoint
    for name, value in outage.items():
        if name != "closed":
            setattr(oauth_idp, name, value)
    with capture_logs() as logs:
        async with stage(policy_for(oauth_idp, endpoint=endpoint, timeout=0.3)) as client:
            answer = await client.get(token)
            assert answer.status == 503, answer.body
            assert answer.body["error"] == "auth_unavailable"
            assert "WWW-Authenticate" not in answer.headers
            assert answer.headers["Retry-After"] == "1"
            assert client.rejected("auth_unavailable") == 1
            # The IdP recovers: the failure was not cached, the next request asks again and passes.
            oauth_idp.status, oauth_idp.raw, oauth_idp.delay, oauth_idp.client_secret = 200, None, 0.0, CLIENT_SECRET
            if not outage.get("closed"):
                assert (await client.get(token)).status == 200
    failures = [entry for entry in logs if entry["event"] == "introspection_failed"]
    assert failures, logs
    assert all(token not in repr(entry) for entry in logs)
    assert all(CLIENT_SECRET not in repr(entry) for entry in logs)


# -- caches -------------------------------------------------------------------------------------------------------


async def test_one_idp_call_for_many_requests_with_one_token(oauth_idp: Idp) -> None:
    token = new_token()
    oauth_idp.tokens[token] = active()
    oauth_idp.delay = 0.2  # the first answer takes a while: 50 concurrent requests share the one call
    async with stage(policy_for(oauth_idp)) as client:
        answers = await asyncio.gather(*(client.get(token) for _ in range(50)))
        assert {a.status for a in answers} == {200}
        for _ in range(50):
            assert (await client.get(token)).status == 200
    assert oauth_idp.calls[token] == 1


async def test_positive_cache_lasts_cache_ttl_then_revocation_shows(oauth_idp: Idp) -> None:
    clock = FakeClock()
    token = new_token()
    oauth_idp.tokens[token] = active(exp=NOW + 3600)
    async with stage(policy_for(oauth_idp, cache_ttl=60.0), clock=clock) as client:
        assert (await client.get(token)).status == 200
        oauth_idp.revoke(token)
        clock.advance(59.0)
        assert (await client.get(token)).status == 200  # cache_ttl is the revocation delay
        clock.advance(1.0)
        answer = await client.get(token)
        assert answer.status == 401
        assert client.rejected("inactive_token") == 1
    assert oauth_idp.calls[token] == 2


async def test_positive_cache_ends_at_exp(oauth_idp: Idp) -> None:
    clock = FakeClock()
    token = new_token()
    oauth_idp.tokens[token] = active(exp=NOW + 5)
    async with stage(policy_for(oauth_idp, cache_ttl=60.0, leeway=30.0), clock=clock) as client:
        assert (await client.get(token)).status == 200
        clock.advance(4.0)
        assert (await client.get(token)).status == 200
        assert oauth_idp.calls[token] == 1
        clock.advance(2.0)  # past exp: the entry is gone (the leeway still accepts the token's answer)
        assert (await client.get(token)).status == 200
        assert oauth_idp.calls[token] == 2


async def test_negative_cache(oauth_idp: Idp) -> None:
    clock = FakeClock()
    token = new_token()
    async with stage(policy_for(oauth_idp, negative_cache_ttl=10.0), clock=clock) as client:
        assert (await client.get(token)).status == 401
        oauth_idp.tokens[token] = active()  # becomes valid at the IdP (say, clock skew at issuance)
        clock.advance(9.0)
        assert (await client.get(token)).status == 401
        assert oauth_idp.calls[token] == 1
        clock.advance(1.0)
        assert (await client.get(token)).status == 200
        assert oauth_idp.calls[token] == 2


async def test_zero_ttls_ask_every_time(oauth_idp: Idp) -> None:
    good, bad = new_token(), new_token()
    oauth_idp.tokens[good] = active()
    async with stage(policy_for(oauth_idp, cache_ttl=0.0, negative_cache_ttl=0.0)) as client:
        for _ in range(3):
            assert (await client.get(good)).status == 200
            assert (await client.get(bad)).status == 401
    assert (oauth_idp.calls[good], oauth_idp.calls[bad]) == (3, 3)


async def test_memory_cache_is_bounded_lru(oauth_idp: Idp) -> None:
    a, b, c = new_token(), new_token(), new_token()
    for token in (a, b, c):
        oauth_idp.tokens[token] = active()
    async with stage(policy_for(oauth_idp, cache_max_entries=2)) as client:
        for token in (a, b, a, c):  # a is used again before c arrives: b is the least recently used
            assert (await client.get(token)).status == 200
        for token in (a, c, b):
            assert (await client.get(token)).status == 200
    assert (oauth_idp.calls[a], oauth_idp.calls[b], oauth_idp.calls[c]) == (1, 2, 1)


async def test_a_client_that_disconnects_does_not_cancel_the_shared_call(oauth_idp: Idp) -> None:
    token = new_token()
    oauth_idp.tokens[token] = active()
    oauth_idp.delay = 0.5
    async with stage(policy_for(oauth_idp)) as client:
        impatient = asyncio.create_task(client.get(token))
        await asyncio.sleep(0.2)
        patient = asyncio.create_task(client.get(token))
        await asyncio.sleep(0.1)
        impatient.cancel()
        assert (await patient).status == 200
    assert oauth_idp.calls[token] == 1


# -- Redis: shared by gateways, never a reason to fail -----------------------------------------------------------


@pytest.fixture
async def redis_client() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL, socket_timeout=1.0, socket_connect_timeout=1.0)
    try:
        yield client
    finally:
        await client.aclose()


async def test_redis_cache_is_shared_by_gateways(oauth_idp: Idp, redis_client: Redis) -> None:
    clock = FakeClock()
    token = new_token()
    oauth_idp.tokens[token] = active()
    policy = policy_for(oauth_idp, cache="redis", cache_ttl=30.0)
    other = Redis.from_url(REDIS_URL, socket_timeout=1.0)  # another gateway process has its own connections
    try:
        async with (
            stage(policy, clock=clock, redis=redis_client) as first,
            stage(policy, clock=clock, redis=other) as second,
        ):
            assert (await first.get(token)).status == 200
            answer = await second.get(token, **SPOOFED)
            assert answer.status == 200
            assert answer.upstream["X-User-ID"] == ["user-42"]
            assert answer.upstream["X-User-Email"] == ["ada@example.test"]
            assert oauth_idp.calls[token] == 1
            # The key is an HMAC of the token under the policy's derived key: the same for every gateway.
            key = REDIS_PREFIX + Introspector(policy, http=first.http, clock=clock, service="x").cache_key(token)
            value = await redis_client.get(key)
            assert value is not None
            assert token.encode() not in key.encode()
            assert token.encode() not in value
            assert CLIENT_SECRET.encode() not in value
            assert b'"sub":"user-42"' in value
            ttl = await redis_client.pttl(key)
            assert 0 < ttl <= 30_000
    finally:
        await other.aclose()


async def test_a_forged_redis_entry_is_ignored(oauth_idp: Idp, redis_client: Redis) -> None:
    clock = FakeClock()
    token = new_token()
    oauth_idp.tokens[token] = active()
    policy = policy_for(oauth_idp, cache="redis")
    async with stage(policy, clock=clock, redis=redis_client) as first:
        assert (await first.get(token)).status == 200
    async with aiohttp.ClientSession() as http:
        key = REDIS_PREFIX + Introspector(policy, http=http, clock=clock, service="x").cache_key(token)
    value = await redis_client.get(key)
    assert value is not None
    assert b'"sub":"user-42"' in value
    await redis_client.set(key, value.replace(b'"sub":"user-42"', b'"sub":"admin!!"'), px=60_000)
    async with stage(policy, clock=clock, redis=redis_client) as second:
        answer = await second.get(token)
    assert answer.status == 200
    assert answer.upstream["X-User-ID"] == ["user-42"]
    assert oauth_idp.calls[token] == 2  # the forged value failed its signature: the IdP was asked


async def test_redis_down_falls_back_to_the_idp(oauth_idp: Idp, free_port: Any) -> None:
    dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.2, socket_connect_timeout=0.2)
    token = new_token()
    oauth_idp.tokens[token] = active()
    try:
        with capture_logs() as logs:
            async with stage(policy_for(oauth_idp, cache="redis"), redis=dead) as client:
                for _ in range(5):
                    assert (await client.get(token)).status == 200
    finally:
        await dead.aclose()
    assert oauth_idp.calls[token] == 1  # the memory cache still works in front of the broken Redis
    events = [entry["event"] for entry in logs]
    assert events.count("introspection_cache_unavailable") == 1  # logged once, not per request


async def test_redis_cache_without_a_redis_url_uses_memory(oauth_idp: Idp) -> None:
    token = new_token()
    oauth_idp.tokens[token] = active()
    with capture_logs() as logs:
        async with stage(policy_for(oauth_idp, cache="redis"), redis=None) as client:
            for _ in range(3):
                assert (await client.get(token)).status == 200
    assert oauth_idp.calls[token] == 1
    assert [e["event"] for e in logs].count("introspection_cache_backend_missing") == 1


# -- discovery ----------------------------------------------------------------------------------------------------


async def test_endpoint_from_discovery_and_last_good_kept(oauth_idp: Idp) -> None:
    clock = FakeClock()
    first, later = new_token(), new_token()
    oauth_idp.tokens[first] = active()
    oauth_idp.tokens[later] = active(exp=NOW + 7200)
    async with stage(policy_for(oauth_idp, endpoint=None, discovery=oauth_idp.discovery_url), clock=clock) as client:
        assert (await client.get(first)).status == 200
        assert oauth_idp.metadata_fetches == 1
        oauth_idp.metadata_status = 500
        clock.advance(3600.0)  # the metadata is stale; the refresh fails; the last good one stays
        assert (await client.get(later)).status == 200
        assert oauth_idp.metadata_fetches == 2
    assert oauth_idp.calls[later] == 1


@pytest.mark.parametrize(
    ("metadata", "logged"),
    [
        pytest.param({"issuer": "ISSUER", "jwks_uri": "JWKS"}, "may not support token introspection", id="no-endpoint"),
        pytest.param({"issuer": "https://evil.example", "introspection_endpoint": "ENDPOINT"}, "section 4.3",
                     id="wrong-issuer"),
        pytest.param({"issuer": "ISSUER", "introspection_endpoint": "file:///etc/passwd"}, "not an http(s) URL",
                     id="bad-endpoint"),
    ],
)  # fmt: skip
async def test_unusable_discovery_is_503(oauth_idp: Idp, metadata: dict[str, str], logged: str) -> None:
    names = {"ISSUER": oauth_idp.issuer, "JWKS": oauth_idp.jwks_url, "ENDPOINT": oauth_idp.endpoint}
    oauth_idp.metadata = {k: names.get(v, v) for k, v in metadata.items()}
    token = new_token()
    oauth_idp.tokens[token] = active()
    with capture_logs() as logs:
        async with stage(policy_for(oauth_idp, endpoint=None, discovery=oauth_idp.discovery_url)) as client:
            answer = await client.get(token)
    assert answer.status == 503
    assert answer.body["error"] == "auth_unavailable"
    assert oauth_idp.total_calls == 0
    [failed] = [e for e in logs if e["event"] == "oidc_discovery_failed"]
    assert logged in failed["error"]


# -- secrets ------------------------------------------------------------------------------------------------------


def test_policy_repr_hides_the_client_secret(oauth_idp: Idp) -> None:
    assert CLIENT_SECRET not in repr(policy_for(oauth_idp))
    assert CLIENT_SECRET not in str(policy_for(oauth_idp))
    # and a log field that ever carried it would be masked by the log processor
    event = redact_secrets(None, "warning", {"event": "x", "client_secret": CLIENT_SECRET, "auth": {"token": "t"}})
    assert CLIENT_SECRET not in repr(event)
    assert event["auth"] == {"token": "[redacted]"}


async def test_tokens_and_secrets_never_reach_logs(oauth_idp: Idp) -> None:
    token = new_token()
    oauth_idp.tokens[token] = active()
    with capture_logs() as logs:
        async with stage(policy_for(oauth_idp, timeout=0.3)) as client:
            assert (await client.get(token)).status == 200
            oauth_idp.status = 500
            assert (await client.get(new_token())).status == 503
    assert logs
    for entry in logs:
        assert token not in repr(entry)
        assert CLIENT_SECRET not in repr(entry)


# -- hypothesis: whatever the IdP answers, the client gets 200/401/403/503, never a 500 ---------------------------

_CLAIM_NAMES = ["active", "sub", "username", "client_id", "scope", "scp", "scopes", "exp", "nbf", "iat", "iss", "aud",
                "email", "token_type"]  # fmt: skip
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    st.sampled_from([NOW + 60, NOW - 60, "orders:read", ISSUER, "orders-api", 10**400]),
)
_json = st.recursive(
    _scalars, lambda kids: st.one_of(st.lists(kids, max_size=3), st.dictionaries(st.text(max_size=6), kids, max_size=3))
)
_documents = st.one_of(
    st.dictionaries(st.sampled_from(_CLAIM_NAMES), _json, max_size=8).map(json.dumps),
    st.dictionaries(st.sampled_from(_CLAIM_NAMES), _json, max_size=8).map(lambda d: json.dumps({**d, "active": True})),
    _json.map(json.dumps),
    st.text(max_size=40),
)


async def test_arbitrary_introspection_answers_never_make_a_500(oauth_idp: Idp) -> None:
    policy = policy_for(
        oauth_idp,
        cache_ttl=0.0,
        negative_cache_ttl=0.0,
        issuer=ISSUER,
        audience=("orders-api",),
        required_scopes=frozenset({"orders:read"}),
    )
    loop = asyncio.get_running_loop()
    seen: set[int] = set()
    async with stage(policy) as client:

        async def probe(document: str) -> None:
            oauth_idp.raw = document
            async with client.http.get(client.url, headers={"Authorization": "Bearer abc"}) as resp:
                assert resp.status in (200, 401, 403, 503), (document, resp.status, await resp.text())
                body = await resp.json()
                if resp.status != 200:
                    assert body["error"] in ("unauthorized", "forbidden", "auth_unavailable")
                seen.add(resp.status)

        @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(_documents)
        def prop(document: str) -> None:
            asyncio.run_coroutine_threadsafe(probe(document), loop).result(timeout=30)

        await asyncio.to_thread(prop)
    assert {401, 503} <= seen
