"""JWT verification: a table of tokens against policies, with a manual clock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from consulgw.auth.jwks import JwksCache
from consulgw.auth.jwt import JwtVerifier
from consulgw.errors import Forbidden, PolicyError, Unauthorized
from consulgw.policy.model import JwtAuth
from tests.auth.keys import HS_SECRET, NOW, Keys, claims, forge_hs256, sign, unsigned
from tests.ratelimit.support import FakeClock

HS = JwtAuth(algorithms=("HS256",), secret=HS_SECRET)


def rs(k: Keys, **kw: Any) -> JwtAuth:
    return JwtAuth(algorithms=("RS256",), public_key=k.pem(k.rsa), **kw)


PolicyF = Callable[[Keys], JwtAuth]
TokenF = Callable[[Keys], str]

OK = "ok"

CASES: list[Any] = [
    # -- valid, one per family
    pytest.param(lambda k: HS, lambda k: sign(HS_SECRET, "HS256", claims()), OK, id="valid-HS256"),
    pytest.param(rs, lambda k: sign(k.rsa, "RS256", claims()), OK, id="valid-RS256"),
    pytest.param(
        lambda k: JwtAuth(algorithms=("PS256",), public_key=k.pem(k.rsa)),
        lambda k: sign(k.rsa, "PS256", claims()),
        OK,
        id="valid-PS256",
    ),
    pytest.param(
        lambda k: JwtAuth(algorithms=("ES256",), public_key=k.pem(k.ec)),
        lambda k: sign(k.ec, "ES256", claims()),
        OK,
        id="valid-ES256",
    ),
    pytest.param(
        lambda k: JwtAuth(algorithms=("EdDSA",), public_key=k.pem(k.ed)),
        lambda k: sign(k.ed, "EdDSA", claims()),
        OK,
        id="valid-EdDSA",
    ),
    pytest.param(
        lambda k: JwtAuth(algorithms=("HS256",), secret=HS_SECRET, issuer="https://idp", audience=("api", "other")),
        lambda k: sign(HS_SECRET, "HS256", claims(iss="https://idp", aud=["x", "api"])),
        OK,
        id="valid-issuer-and-one-of-audiences",
    ),
    # -- time, against the injected clock
    pytest.param(lambda k: HS, lambda k: sign(HS_SECRET, "HS256", claims(exp=NOW - 1)), "expired", id="expired"),
    pytest.param(lambda k: HS, lambda k: sign(HS_SECRET, "HS256", claims(exp=NOW)), "expired", id="expires-now"),
    pytest.param(
        lambda k: JwtAuth(algorithms=("HS256",), secret=HS_SECRET, leeway=30),
        lambda k: sign(HS_SECRET, "HS256", claims(exp=NOW - 20)),
        OK,
        id="expired-within-leeway",
    ),
    pytest.param(lambda k: HS, lambda k: sign(HS_SECRET, "HS256", claims(nbf=NOW + 60)), "not valid yet", id="nbf"),
    pytest.param(
        lambda k: JwtAuth(algorithms=("HS256",), secret=HS_SECRET, leeway=120),
        lambda k: sign(HS_SECRET, "HS256", claims(nbf=NOW + 60)),
        OK,
        id="nbf-within-leeway",
    ),
    pytest.param(lambda k: HS, lambda k: sign(HS_SECRET, "HS256", claims(iat=NOW + 60)), "future", id="iat-future"),
    pytest.param(lambda k: HS, lambda k: sign(HS_SECRET, "HS256", claims(exp=None)), "exp claim", id="no-exp"),
    pytest.param(lambda k: HS, lambda k: sign(HS_SECRET, "HS256", claims(exp="soon")), "exp", id="exp-not-number"),
    # -- issuer / audience / subject
    pytest.param(
        lambda k: JwtAuth(algorithms=("HS256",), secret=HS_SECRET, issuer="https://idp"),
        lambda k: sign(HS_SECRET, "HS256", claims(iss="https://evil")),
        "wrong issuer",
        id="wrong-issuer",
    ),
    pytest.param(
        lambda k: JwtAuth(algorithms=("HS256",), secret=HS_SECRET, issuer="https://idp"),
        lambda k: sign(HS_SECRET, "HS256", claims()),
        "iss claim",
        id="missing-issuer",
    ),
    pytest.param(
        lambda k: JwtAuth(algorithms=("HS256",), secret=HS_SECRET, audience=("api",)),
        lambda k: sign(HS_SECRET, "HS256", claims(aud="other")),
        "wrong audience",
        id="wrong-audience",
    ),
    pytest.param(lambda k: HS, lambda k: sign(HS_SECRET, "HS256", claims(sub=None)), "sub claim", id="no-sub"),
    pytest.param(lambda k: HS, lambda k: sign(HS_SECRET, "HS256", claims(sub="a\r\nX-Admin: 1")), "sub", id="sub-crlf"),
    # -- signatures and algorithms
    pytest.param(
        lambda k: HS, lambda k: sign(HS_SECRET, "HS256", claims())[:-4] + "AAAA", "signature", id="tampered-signature"
    ),
    pytest.param(
        lambda k: HS,
        lambda k: (
            lambda t: (
                t.split(".")[0]
                + "."
                + sign(HS_SECRET, "HS256", claims(sub="admin")).split(".")[1]
                + "."
                + t.split(".")[2]
            )
        )(sign(HS_SECRET, "HS256", claims())),
        "signature",
        id="tampered-payload",
    ),
    pytest.param(
        lambda k: HS,
        lambda k: sign("another secret that is long enough!!", "HS256", claims()),
        "signature",
        id="wrong-secret",
    ),
    pytest.param(rs, lambda k: sign(k.rsa2, "RS256", claims()), "signature", id="wrong-rsa-key"),
    pytest.param(lambda k: HS, lambda k: unsigned(claims()), "algorithm", id="alg-none"),
    pytest.param(
        lambda k: JwtAuth(algorithms=("none", "HS256"), secret=HS_SECRET),
        lambda k: unsigned(claims()),
        "algorithm",
        id="alg-none-even-if-listed",
    ),
    pytest.param(rs, lambda k: forge_hs256(k.pem(k.rsa).encode(), claims()), "algorithm", id="hs-rs-confusion-rs-only"),
    pytest.param(
        lambda k: JwtAuth(algorithms=("RS256", "HS256"), public_key=k.pem(k.rsa)),
        lambda k: forge_hs256(k.pem(k.rsa).encode(), claims()),
        "no key",
        id="hs-rs-confusion-no-secret",
    ),
    pytest.param(
        lambda k: JwtAuth(algorithms=("RS256", "HS256"), public_key=k.pem(k.rsa), secret=HS_SECRET),
        lambda k: forge_hs256(k.pem(k.rsa).encode(), claims()),
        "signature",
        id="hs-rs-confusion-with-secret",
    ),
    pytest.param(
        lambda k: JwtAuth(algorithms=("ES256",), public_key=k.pem(k.ec384)),
        lambda k: sign(k.ec384, "ES384", claims()),
        "algorithm",
        id="alg-not-in-policy",
    ),
    pytest.param(
        lambda k: JwtAuth(algorithms=("ES256", "ES384"), public_key=k.pem(k.ec384)),
        lambda k: sign(k.ec, "ES256", claims()),
        "no key",
        id="curve-mismatch",
    ),
    pytest.param(
        lambda k: JwtAuth(algorithms=("RS256", "ES256"), public_key=k.pem(k.ec)),
        lambda k: sign(k.rsa, "RS256", claims()),
        "no key",
        id="family-mismatch",
    ),
    pytest.param(lambda k: HS, lambda k: sign(HS_SECRET, "HS256", claims(), crit=["exp"]), "header", id="crit"),
    # -- scopes
    pytest.param(
        lambda k: JwtAuth(algorithms=("HS256",), secret=HS_SECRET, required_scopes=frozenset({"admin"})),
        lambda k: sign(HS_SECRET, "HS256", claims()),
        "403",
        id="missing-scope",
    ),
    pytest.param(
        lambda k: JwtAuth(algorithms=("HS256",), secret=HS_SECRET, required_scopes=frozenset({"read", "admin"})),
        lambda k: sign(HS_SECRET, "HS256", claims(scope=None, scp=["read"], scopes="admin")),
        OK,
        id="scopes-from-scp-and-scopes",
    ),
    pytest.param(lambda k: HS, lambda k: sign(HS_SECRET, "HS256", claims(scope=7)), "scope", id="scope-not-string"),
    pytest.param(lambda k: HS, lambda k: sign(HS_SECRET, "HS256", claims(scp=['a"b'])), "scope", id="scope-bad-char"),
]


@pytest.mark.parametrize(("policy", "token", "expected"), CASES)
async def test_verify(policy: PolicyF, token: TokenF, expected: str, keys: Keys, http: aiohttp.ClientSession) -> None:
    clock = FakeClock()
    verifier = JwtVerifier(policy(keys), jwks=JwksCache(http=http, clock=clock), clock=clock)
    value = f"Bearer {token(keys)}"
    if expected == OK:
        identity = await verifier.verify(value)
        assert identity.header == "X-User-ID"
        assert identity.name == "user-42"
        return
    if expected == "403":
        with pytest.raises(Forbidden) as forbidden:
            await verifier.verify(value)
        assert forbidden.value.status == 403
        challenge = forbidden.value.headers["WWW-Authenticate"]
        assert 'error="insufficient_scope"' in challenge
        assert 'scope="admin"' in challenge
        return
    with pytest.raises(Unauthorized) as caught:
        await verifier.verify(value)
    err = caught.value
    assert err.status == 401
    assert expected in err.message
    challenge = err.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="consulgw", error="invalid_token", error_description="')
    assert value.split(" ")[1] not in err.message + challenge  # never echo the token


async def test_scopes_and_subject_are_returned(http: aiohttp.ClientSession) -> None:
    clock = FakeClock()
    verifier = JwtVerifier(HS, jwks=JwksCache(http=http, clock=clock), clock=clock)
    token = sign(HS_SECRET, "HS256", claims(scope="read  write", scp=["admin"]))
    identity = await verifier.verify(f"bearer {token}")  # scheme is case-insensitive
    assert identity.scopes == frozenset({"read", "write", "admin"})


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(None, id="absent"),
        pytest.param("", id="empty"),
        pytest.param("Basic dXNlcjpwYXNz", id="basic"),
        pytest.param("Bearer", id="no-token"),
        pytest.param("Bearer a.b", id="two-parts"),
        pytest.param("Bearer a.b.c.d.e", id="jwe"),
        pytest.param("Bearer " + "a" * 20000 + ".b.c", id="huge"),
    ],
)
async def test_missing_or_malformed_credentials(value: str | None, http: aiohttp.ClientSession) -> None:
    clock = FakeClock()
    verifier = JwtVerifier(HS, jwks=JwksCache(http=http, clock=clock), clock=clock)
    with pytest.raises(Unauthorized) as caught:
        await verifier.verify(value)
    challenge = caught.value.headers["WWW-Authenticate"]
    if value in (None, ""):
        assert challenge == 'Bearer realm="consulgw"'  # RFC 6750 3.1: no error code when no credential was sent
    else:
        assert 'error="invalid_token"' in challenge


async def test_custom_header_takes_a_bare_token(http: aiohttp.ClientSession) -> None:
    clock = FakeClock()
    policy = JwtAuth(algorithms=("HS256",), secret=HS_SECRET, header="X-Token")
    verifier = JwtVerifier(policy, jwks=JwksCache(http=http, clock=clock), clock=clock)
    assert (await verifier.verify(sign(HS_SECRET, "HS256", claims()))).name == "user-42"


async def test_bad_public_key_is_a_policy_error(http: aiohttp.ClientSession) -> None:
    clock = FakeClock()
    with pytest.raises(PolicyError, match=r"auth\.public_key"):
        JwtVerifier(
            JwtAuth(algorithms=("RS256",), public_key="-----BEGIN NOTHING-----"),
            jwks=JwksCache(http=http, clock=clock),
            clock=clock,
        )


async def test_expiry_follows_the_injected_clock(http: aiohttp.ClientSession) -> None:
    clock = FakeClock()
    verifier = JwtVerifier(HS, jwks=JwksCache(http=http, clock=clock), clock=clock)
    token = f"Bearer {sign(HS_SECRET, 'HS256', claims(exp=NOW + 60))}"
    await verifier.verify(token)
    clock.advance(59.5)
    await verifier.verify(token)
    clock.advance(1)
    with pytest.raises(Unauthorized, match="expired"):
        await verifier.verify(token)
