"""OIDC discovery (``consulgw.auth.discovery``) against the local IdP: issuers from URLs, the section 4.3 check,
refresh like the JWKS, last good kept; and JWT verification whose key set and issuer come from the metadata."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from structlog.testing import capture_logs

from consulgw.auth.discovery import DiscoveryCache, expected_issuer, same_issuer
from consulgw.auth.jwks import JwksCache
from consulgw.auth.jwt import JwtVerifier
from consulgw.auth.outcome import Identity, Rejection
from consulgw.policy.model import JwtAuth
from tests.auth.idp import Idp
from tests.auth.keys import Keys, claims, sign
from tests.ratelimit.support import FakeClock


@pytest.mark.parametrize(
    ("url", "issuer"),
    [
        pytest.param("https://idp.example/.well-known/openid-configuration", "https://idp.example", id="oidc"),
        pytest.param("https://idp.example/realms/a/.well-known/openid-configuration", "https://idp.example/realms/a",
                     id="oidc-with-path"),
        pytest.param("https://idp.example/.well-known/oauth-authorization-server/tenant", "https://idp.example/tenant",
                     id="rfc8414"),
        pytest.param("https://idp.example/.well-known/openid-configuration/tenant", "https://idp.example/tenant",
                     id="rfc8414-oidc-compat"),
        pytest.param("https://idp.example:8443/.well-known/openid-configuration", "https://idp.example:8443",
                     id="port"),
        pytest.param("https://idp.example/metadata.json", None, id="not-well-known"),
        pytest.param("https://idp.example/.well-known/openid-configuration?x=1", None, id="query"),
    ],
)  # fmt: skip
def test_expected_issuer(url: str, issuer: str | None) -> None:
    assert expected_issuer(url) == issuer


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("https://idp.example", "https://idp.example/", True),
        ("https://idp.example/", "https://idp.example/", True),
        ("https://idp.example", "https://idp.example/other", False),
        ("https://idp.example", "https://IDP.example", False),
        ("", "", False),
    ],
)
def test_same_issuer(a: str, b: str, same: bool) -> None:
    assert same_issuer(a, b) is same


async def test_refresh_rate_limit_and_last_good(oauth_idp: Idp) -> None:
    clock = FakeClock()
    async with aiohttp.ClientSession() as http:
        cache = DiscoveryCache(http=http, clock=clock, refresh_interval=10.0, max_age=600.0)
        get = lambda: cache.metadata(oauth_idp.discovery_url, issuer=oauth_idp.issuer, need="jwks_uri")  # noqa: E731
        first = await get()
        assert first is not None
        assert first.jwks_uri == oauth_idp.jwks_url
        assert first.introspection_endpoint == oauth_idp.endpoint
        await asyncio.gather(*(get() for _ in range(10)))
        assert oauth_idp.metadata_fetches == 1  # fresh: no fetch
        oauth_idp.metadata = {"issuer": oauth_idp.issuer, "jwks_uri": f"{oauth_idp.base}/rotated.json"}
        clock.advance(600.0)
        assert (await get()) == first.__class__(issuer=oauth_idp.issuer, jwks_uri=f"{oauth_idp.base}/rotated.json")
        assert oauth_idp.metadata_fetches == 2
        oauth_idp.metadata_status = 503
        clock.advance(600.0)
        with capture_logs() as logs:
            kept = await get()
            for _ in range(5):
                await get()  # stale and failing: one attempt per refresh interval, not one per call
        assert kept is not None
        assert kept.jwks_uri == f"{oauth_idp.base}/rotated.json"
        assert oauth_idp.metadata_fetches == 3
        assert [e["event"] for e in logs] == ["oidc_discovery_failed"]


async def test_nothing_until_a_good_document_then_it_loads(oauth_idp: Idp) -> None:
    clock = FakeClock()
    oauth_idp.metadata = {"issuer": "https://impostor.example", "jwks_uri": "https://impostor.example/keys"}
    async with aiohttp.ClientSession() as http:
        cache = DiscoveryCache(http=http, clock=clock, refresh_interval=10.0)
        assert await cache.metadata(oauth_idp.discovery_url, issuer=oauth_idp.issuer, need="jwks_uri") is None
        oauth_idp.metadata = None
        assert await cache.metadata(oauth_idp.discovery_url, issuer=oauth_idp.issuer, need="jwks_uri") is None
        clock.advance(10.0)
        loaded = await cache.metadata(oauth_idp.discovery_url, issuer=oauth_idp.issuer, need="jwks_uri")
        assert loaded is not None
        assert loaded.issuer == oauth_idp.issuer


# -- JWT with discovery -------------------------------------------------------------------------------------------


def verifier(oauth_idp: Idp, http: aiohttp.ClientSession, clock: FakeClock) -> JwtVerifier:
    return JwtVerifier(
        JwtAuth(algorithms=("RS256",), discovery=oauth_idp.discovery_url),
        jwks=JwksCache(http=http, clock=clock),
        clock=clock,
        discovery=DiscoveryCache(http=http, clock=clock),
    )


async def test_jwt_keys_and_issuer_from_discovery(oauth_idp: Idp, keys: Keys) -> None:
    clock = FakeClock()
    oauth_idp.keys = [keys.jwk(keys.rsa, "k1")]
    # The provider states its issuer with a trailing slash; the discovery URL has none. Tokens carry the stated one.
    oauth_idp.metadata = {"issuer": oauth_idp.issuer + "/", "jwks_uri": oauth_idp.jwks_url}
    async with aiohttp.ClientSession() as http:
        check = verifier(oauth_idp, http, clock).check
        good = await check(f"Bearer {sign(keys.rsa, 'RS256', claims(iss=oauth_idp.issuer + '/'), kid='k1')}")
        assert isinstance(good, Identity)
        assert good.name == "user-42"
        for bad_claims in (claims(iss="https://evil.example/"), claims()):  # wrong issuer; no issuer at all
            refused = await check(f"Bearer {sign(keys.rsa, 'RS256', bad_claims, kid='k1')}")
            assert isinstance(refused, Rejection)
            assert refused.reason == "invalid_claims"
        stranger = await check(f"Bearer {sign(keys.rsa2, 'RS256', claims(iss=oauth_idp.issuer + '/'), kid='k1')}")
        assert isinstance(stranger, Rejection)
        assert stranger.reason == "invalid_signature"
    assert (oauth_idp.metadata_fetches, oauth_idp.jwks_fetches) == (1, 1)


async def test_jwt_without_metadata_is_503_not_401(oauth_idp: Idp, keys: Keys) -> None:
    clock = FakeClock()
    oauth_idp.metadata_status = 500
    async with aiohttp.ClientSession() as http:
        outcome = await verifier(oauth_idp, http, clock).check(
            f"Bearer {sign(keys.rsa, 'RS256', claims(iss=oauth_idp.issuer), kid='k1')}"
        )
    assert isinstance(outcome, Rejection)
    assert outcome.reason == "auth_unavailable"
    assert outcome.error().status == 503


async def test_jwt_discovery_document_for_another_issuer_is_refused(oauth_idp: Idp, keys: Keys) -> None:
    clock = FakeClock()
    oauth_idp.keys = [keys.jwk(keys.rsa, "k1")]
    oauth_idp.metadata = {"issuer": "https://impostor.example", "jwks_uri": oauth_idp.jwks_url}
    with capture_logs() as logs:
        async with aiohttp.ClientSession() as http:
            outcome = await verifier(oauth_idp, http, clock).check(
                f"Bearer {sign(keys.rsa, 'RS256', claims(iss='https://impostor.example'), kid='k1')}"
            )
    assert isinstance(outcome, Rejection)
    assert outcome.reason == "auth_unavailable"
    assert oauth_idp.jwks_fetches == 0  # a key set named by an impostor's document is never even fetched
    [failed] = [e for e in logs if e["event"] == "oidc_discovery_failed"]
    assert "section 4.3" in failed["error"]
