"""JWKS fetched from a real IdP stand-in (aiohttp on 127.0.0.1): rotation, refresh rate limit, IdP outages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from consulgw.auth.jwks import JwksCache
from consulgw.auth.jwt import JwtVerifier
from consulgw.errors import Unauthorized
from consulgw.policy.model import JwtAuth
from tests.auth.keys import Keys, claims, sign
from tests.ratelimit.support import FakeClock


class Idp:
    """A JWKS endpoint whose key set, status and latency the test controls; counts fetches."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.status = 200
        self.body: str | None = None
        self.delay = 0.0
        self.fetches = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.fetches += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200:
            return web.Response(status=self.status, text="down")
        if self.body is not None:
            return web.Response(text=self.body, content_type="application/json")
        return web.json_response({"keys": self.keys})


@pytest.fixture
async def idp() -> AsyncIterator[Idp]:
    server = Idp()
    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}/.well-known/jwks.json"
    try:
        yield server
    finally:
        await runner.cleanup()


def verifier_for(idp: Idp, http: aiohttp.ClientSession, clock: FakeClock, **cache: Any) -> JwtVerifier:
    policy = JwtAuth(algorithms=("RS256", "ES256", "EdDSA"), jwks_url=idp.url)
    return JwtVerifier(policy, jwks=JwksCache(http=http, clock=clock, **cache), clock=clock)


async def test_rotation_is_picked_up_on_unknown_kid(idp: Idp, keys: Keys, http: aiohttp.ClientSession) -> None:
    clock = FakeClock()
    idp.keys = [keys.jwk(keys.rsa, "k1")]
    verifier = verifier_for(idp, http, clock, refresh_interval=10.0)
    assert (await verifier.verify(f"Bearer {sign(keys.rsa, 'RS256', claims(), kid='k1')}")).name == "user-42"
    assert idp.fetches == 1
    idp.keys = [keys.jwk(keys.rsa, "k1"), keys.jwk(keys.ec, "k2")]  # the IdP rotates in a new key
    clock.advance(10.0)
    assert (await verifier.verify(f"Bearer {sign(keys.ec, 'ES256', claims(), kid='k2')}")).name == "user-42"
    assert idp.fetches == 2
    await verifier.verify(f"Bearer {sign(keys.rsa, 'RS256', claims(), kid='k1')}")  # cached: no fetch
    assert idp.fetches == 2


async def test_unknown_kids_cannot_hammer_the_idp(idp: Idp, keys: Keys, http: aiohttp.ClientSession) -> None:
    clock = FakeClock()
    idp.keys = [keys.jwk(keys.rsa, "k1")]
    verifier = verifier_for(idp, http, clock, refresh_interval=10.0)
    await verifier.verify(f"Bearer {sign(keys.rsa, 'RS256', claims(), kid='k1')}")
    forged = [f"Bearer {sign(keys.rsa2, 'RS256', claims(), kid=f'random-{i}')}" for i in range(50)]
    for token in forged:
        with pytest.raises(Unauthorized, match="no key"):
            await verifier.verify(token)
        clock.advance(0.1)  # 5 seconds of attack in total
    assert idp.fetches == 1
    clock.advance(5.0)
    with pytest.raises(Unauthorized):
        await verifier.verify(forged[0])
    assert idp.fetches == 2  # one refresh per interval, whatever the attacker sends


async def test_concurrent_cold_start_fetches_once(idp: Idp, keys: Keys, http: aiohttp.ClientSession) -> None:
    clock = FakeClock()
    idp.keys = [keys.jwk(keys.ed, "ed")]
    idp.delay = 0.1
    verifier = verifier_for(idp, http, clock)
    token = f"Bearer {sign(keys.ed, 'EdDSA', claims(), kid='ed')}"
    identities = await asyncio.gather(*(verifier.verify(token) for _ in range(20)))
    assert {i.name for i in identities} == {"user-42"}
    assert idp.fetches == 1


@pytest.mark.parametrize(
    "outage",
    [
        pytest.param("status", id="http-500"),
        pytest.param("timeout", id="timeout"),
        pytest.param("not-json", id="not-json"),
        pytest.param("no-usable-key", id="no-usable-key"),
    ],
)
async def test_idp_down_keeps_cached_keys(outage: str, idp: Idp, keys: Keys, http: aiohttp.ClientSession) -> None:
    clock = FakeClock()
    idp.keys = [keys.jwk(keys.rsa, "k1")]
    verifier = verifier_for(idp, http, clock, refresh_interval=1.0, max_age=60.0, timeout=0.2)
    token = f"Bearer {sign(keys.rsa, 'RS256', claims(exp=1_700_000_000 + 3600), kid='k1')}"
    await verifier.verify(token)
    if outage == "status":
        idp.status = 500
    elif outage == "timeout":
        idp.delay = 1.0
    elif outage == "not-json":
        idp.body = "<html>maintenance</html>"
    else:
        idp.keys = [{"kty": "nonsense"}]
    clock.advance(120.0)  # the cached set is stale: the next use tries to refresh
    assert (await verifier.verify(token)).name == "user-42"  # the refresh failed; the stale key still verifies
    assert idp.fetches == 2


async def test_cold_idp_down_rejects_then_recovers(idp: Idp, keys: Keys, http: aiohttp.ClientSession) -> None:
    clock = FakeClock()
    idp.status = 503
    idp.keys = [keys.jwk(keys.rsa, "k1")]
    verifier = verifier_for(idp, http, clock, refresh_interval=2.0)
    token = f"Bearer {sign(keys.rsa, 'RS256', claims(), kid='k1')}"
    with pytest.raises(Unauthorized, match="no key"):
        await verifier.verify(token)
    idp.status = 200
    clock.advance(2.0)
    assert (await verifier.verify(token)).name == "user-42"


async def test_unusable_keys_are_skipped(idp: Idp, keys: Keys, http: aiohttp.ClientSession) -> None:
    clock = FakeClock()
    idp.keys = [
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},  # symmetric: never from a JWKS
        keys.jwk(keys.rsa, "enc", use="enc"),  # an encryption key
        {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
        keys.jwk(keys.rsa, "pinned", alg="RS512"),  # pinned to another algorithm
        keys.jwk(keys.rsa, "good"),
    ]
    verifier = verifier_for(idp, http, clock)
    for kid in ("hmac", "enc", "broken", "pinned"):
        with pytest.raises(Unauthorized):
            await verifier.verify(f"Bearer {sign(keys.rsa, 'RS256', claims(), kid=kid)}")
    assert (await verifier.verify(f"Bearer {sign(keys.rsa, 'RS256', claims(), kid='good')}")).name == "user-42"
    # Without a kid, the one key that fits the algorithm is used.
    assert (await verifier.verify(f"Bearer {sign(keys.rsa, 'RS256', claims())}")).name == "user-42"
