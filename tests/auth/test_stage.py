"""The auth stage behind a real aiohttp server: API keys and Basic via consumers, JWT, identity headers."""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import aiohttp
import pytest

from consulgw.metrics import GatewayMetrics
from consulgw.pipeline.stages.auth import AuthStage
from consulgw.policy.consumers import api_key_digest, hash_password
from consulgw.policy.model import ApiKeyAuth, AuthPolicy, BasicAuth, Consumer, JwtAuth, PolicyBook
from tests.auth.keys import HS_SECRET, claims, sign
from tests.ratelimit.support import FakeClock, make_deps, serve_stages
from tests.support.pipeline import ClientFactory, pipeline_app

API_KEY = "k-3f9a0c1e6b7d4a2f9e8d7c6b5a4f3e2d"
PASSWORD = "s3cret pässword"


class Book:
    """A live PolicyBook holder: tests swap consumers and the stage sees it on the next request."""

    def __init__(self, *consumers: Consumer) -> None:
        self.book = PolicyBook()
        self.set(*consumers)

    def set(self, *consumers: Consumer) -> None:
        self.book = PolicyBook(
            consumers=MappingProxyType({c.name: c for c in consumers}),
            consumers_by_key=MappingProxyType({d: c for c in consumers for d in c.api_key_sha256}),
        )

    def __call__(self) -> PolicyBook:
        return self.book


@pytest.fixture(scope="module")
def alice() -> Consumer:
    return Consumer(
        name="alice",
        api_key_sha256=frozenset({api_key_digest(API_KEY)}),
        password_hash=hash_password(PASSWORD),
        scopes=frozenset({"orders:read", "orders:write"}),
    )


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


SPOOFED = {"X-Consumer-ID": "root", "X-User-ID": "root", "X-User-Scopes": "admin"}


async def call(
    policy: AuthPolicy, book: Callable[[], PolicyBook], requests: list[dict[str, str]], metrics: GatewayMetrics
) -> list[tuple[int, dict[str, str], dict[str, Any]]]:
    out = []
    async with aiohttp.ClientSession() as http:
        deps = make_deps(service="svc", http=http, clock=FakeClock(), book=book, metrics=metrics)
        async with serve_stages((AuthStage.from_policy(policy, deps),)) as url:
            for headers in requests:
                async with http.get(url, headers=headers) as resp:
                    out.append((resp.status, dict(resp.headers), await resp.json()))
    return out


def rejected(metrics: GatewayMetrics, reason: str) -> float:
    return float(metrics.auth_rejected.labels("svc", reason)._value.get())


async def test_api_key(alice: Consumer) -> None:
    metrics = GatewayMetrics()
    book = Book(alice)
    results = await call(
        ApiKeyAuth(),
        book,
        [{"X-API-Key": API_KEY, **SPOOFED}, {}, {"X-API-Key": "wrong-key"}, {"x-api-key": API_KEY}],
        metrics,
    )
    (ok, _ok_h, ok_body), (missing, missing_h, _), (bad, bad_h, bad_body), (folded, _, _) = results
    assert ok == 200
    assert folded == 200
    assert ok_body["consumer"] == "alice"
    assert ok_body["upstream"]["X-Consumer-ID"] == ["alice"]  # the spoofed value is gone, not appended
    assert ok_body["upstream"]["X-User-Scopes"] == ["orders:read orders:write"]
    assert "X-User-ID" not in ok_body["upstream"]
    assert (missing, bad) == (401, 401)
    assert missing_h["WWW-Authenticate"] == 'ApiKey header="X-API-Key"'
    assert bad_h["WWW-Authenticate"] == 'ApiKey header="X-API-Key"'
    assert "wrong-key" not in str(bad_body)
    assert rejected(metrics, "missing_credentials") == 1
    assert rejected(metrics, "unknown_consumer") == 1


async def test_api_key_revocation_applies_live(alice: Consumer) -> None:
    book = Book(alice)
    metrics = GatewayMetrics()
    async with aiohttp.ClientSession() as http:
        deps = make_deps(service="svc", http=http, clock=FakeClock(), book=book, metrics=metrics)
        async with serve_stages((AuthStage.from_policy(ApiKeyAuth(header="X-Key"), deps),)) as url:
            async with http.get(url, headers={"X-Key": API_KEY}) as resp:
                assert resp.status == 200
            book.set()  # the consumer is deleted from KV
            async with http.get(url, headers={"X-Key": API_KEY}) as resp:
                assert resp.status == 401
                assert resp.headers["WWW-Authenticate"] == 'ApiKey header="X-Key"'


async def test_basic(alice: Consumer) -> None:
    metrics = GatewayMetrics()
    results = await call(
        BasicAuth(realm='ops "area"'),
        Book(alice),
        [
            {"Authorization": basic("alice", PASSWORD), **SPOOFED},
            {"Authorization": basic("alice", PASSWORD)},  # second time: from the verified cache
            {"Authorization": basic("alice", "nope")},
            {"Authorization": basic("mallory", PASSWORD)},
            {"Authorization": "Basic !!notbase64!!"},
            {},
        ],
        metrics,
    )
    statuses = [s for s, _, _ in results]
    assert statuses == [200, 200, 401, 401, 401, 401]
    assert results[0][2]["upstream"]["X-Consumer-ID"] == ["alice"]
    challenge = results[2][1]["WWW-Authenticate"]
    assert challenge == 'Basic realm="ops \\"area\\"", charset="UTF-8"'
    assert results[2][2]["message"] == results[3][2]["message"] == "invalid username or password"
    assert PASSWORD not in str(results)
    for reason in ("wrong_password", "unknown_consumer", "malformed_credentials", "missing_credentials"):
        assert rejected(metrics, reason) == 1, reason


async def test_jwt_sets_user_headers() -> None:
    metrics = GatewayMetrics()
    policy = JwtAuth(algorithms=("HS256",), secret=HS_SECRET, required_scopes=frozenset({"read"}))
    good = sign(HS_SECRET, "HS256", claims(scope="write read"))
    no_scope = sign(HS_SECRET, "HS256", claims(scope="write"))
    results = await call(
        policy,
        PolicyBook,
        [
            {"Authorization": f"Bearer {good}", **SPOOFED},
            {"Authorization": f"Bearer {no_scope}"},
            {"Authorization": f"Bearer {good}x"},
        ],
        metrics,
    )
    (ok, _, body), (forbidden, fh, fbody), (bad, bh, _) = results
    assert ok == 200
    assert body["consumer"] == "user-42"
    assert body["upstream"]["X-User-ID"] == ["user-42"]
    assert body["upstream"]["X-User-Scopes"] == ["read write"]
    assert "X-Consumer-ID" not in body["upstream"]
    assert forbidden == 403
    assert fbody["error"] == "forbidden"
    assert fh["WWW-Authenticate"] == 'Bearer realm="consulgw", error="insufficient_scope", scope="read"'
    assert bad == 401
    assert bh["WWW-Authenticate"].startswith('Bearer realm="consulgw", error="invalid_token"')
    assert rejected(metrics, "insufficient_scope") == 1
    assert rejected(metrics, "invalid_signature") == 1


# -- required_scopes for consumers, hide_credentials for every type -----------------------------------------------


@pytest.mark.parametrize("kind", ["api_key", "basic"])
async def test_consumer_scopes_against_required_scopes(alice: Consumer, kind: str) -> None:
    metrics = GatewayMetrics()
    credential = {"X-API-Key": API_KEY} if kind == "api_key" else {"Authorization": basic("alice", PASSWORD)}
    results = []
    for required in ({"orders:read"}, {"orders:read", "orders:admin"}):
        policy: AuthPolicy = (
            ApiKeyAuth(required_scopes=frozenset(required))
            if kind == "api_key"
            else BasicAuth(required_scopes=frozenset(required))
        )
        results += await call(policy, Book(alice), [credential], metrics)
    (ok, _, ok_body), (forbidden, headers, body) = results
    assert ok == 200
    assert ok_body["upstream"]["X-Consumer-ID"] == ["alice"]
    assert forbidden == 403
    assert body == {
        "error": "forbidden",
        "message": "the credential lacks a required scope (needs: orders:admin orders:read)",
        "request_id": "req-1",
    }
    assert "WWW-Authenticate" not in headers  # another password or key would not help: no challenge
    assert rejected(metrics, "insufficient_scope") == 1


HIDE_CASES = [
    pytest.param(ApiKeyAuth(hide_credentials=True), {"X-API-Key": API_KEY}, "X-API-Key", id="api_key"),
    pytest.param(BasicAuth(hide_credentials=True), {"Authorization": basic("alice", PASSWORD)}, "Authorization",
                 id="basic"),
    pytest.param(JwtAuth(algorithms=("HS256",), secret=HS_SECRET, hide_credentials=True),
                 {"Authorization": f"Bearer {sign(HS_SECRET, 'HS256', claims())}"}, "Authorization", id="jwt"),
    pytest.param(JwtAuth(algorithms=("HS256",), secret=HS_SECRET, header="X-Token", hide_credentials=True),
                 {"X-Token": sign(HS_SECRET, "HS256", claims())}, "X-Token", id="jwt-custom-header"),
]  # fmt: skip


@pytest.mark.parametrize(("policy", "credential", "header"), HIDE_CASES)
async def test_hide_credentials_strips_the_credential_header(
    alice: Consumer, aiohttp_client: ClientFactory, policy: AuthPolicy, credential: dict[str, str], header: str
) -> None:
    async with aiohttp.ClientSession() as http:
        for hide in (True, False):
            shown = dataclasses.replace(policy, hide_credentials=hide)
            deps = make_deps(service="svc", http=http, clock=FakeClock(), book=Book(alice))
            client = await aiohttp_client(pipeline_app((AuthStage.from_policy(shown, deps),)))
            resp = await client.get("/", headers={**credential, "X-Other": "kept"})
            assert resp.status == 200
            sent = {k.lower(): v for k, v in (await resp.json())["upstream_headers"]}
            assert sent["x-other"] == "kept"
            if hide:
                assert header.lower() not in sent
            else:
                assert sent[header.lower()] == credential[header]  # forwarded unchanged by default


@pytest.mark.parametrize(
    ("policy", "name"),
    [
        pytest.param(JwtAuth(algorithms=("HS256",), secret=HS_SECRET), "Authorization", id="jwt"),
        pytest.param(JwtAuth(algorithms=("HS256",), secret=HS_SECRET, header="X-Token"), "X-Token", id="jwt-header"),
        pytest.param(ApiKeyAuth(), "X-API-Key", id="api-key"),
        pytest.param(BasicAuth(), "Authorization", id="basic"),
    ],
)
async def test_two_credentials_are_refused_before_any_check(policy: AuthPolicy, name: str, alice: Consumer) -> None:
    """Issue 13 finding 6: the first credential was verified while both went upstream."""
    metrics = GatewayMetrics()
    twice = [(name, API_KEY), (name, "second")]
    underscore = [(name, API_KEY), (name.replace("-", "_"), "second")]  # Authorization: the same as twice
    async with aiohttp.ClientSession() as http:
        deps = make_deps(service="svc", http=http, clock=FakeClock(), book=Book(alice), metrics=metrics)
        async with serve_stages((AuthStage.from_policy(policy, deps),)) as url:
            for headers in (twice, underscore):
                async with http.get(url, headers=headers) as resp:
                    assert (resp.status, (await resp.json())["error"]) == (400, "ambiguous_credentials"), headers
