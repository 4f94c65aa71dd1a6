"""Parsers at the edge: strict Basic decoding (table) and hypothesis at the JWT verifier."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from typing import Any, cast

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consulgw.auth.basic import parse_basic
from consulgw.auth.jwks import JwksCache
from consulgw.auth.jwt import JwtVerifier
from consulgw.errors import Forbidden, Unauthorized
from consulgw.policy.model import JwtAuth
from tests.auth.keys import HS_SECRET, NOW, b64url, forge_hs256
from tests.ratelimit.support import FakeClock


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(f"Basic {b64('alice:pw')}", ("alice", "pw"), id="plain"),
        pytest.param(f"basic {b64('alice:pw')}", ("alice", "pw"), id="scheme-case-insensitive"),
        pytest.param(f"Basic {b64('alice:p:w')}", ("alice", "p:w"), id="colon-in-password"),
        pytest.param(f"Basic {b64('alice:')}", ("alice", ""), id="empty-password"),
        pytest.param(f"Basic {b64('zoë:pässword')}", ("zoë", "pässword"), id="utf8"),
        pytest.param(f"Basic {b64(':pw')}", None, id="empty-user"),
        pytest.param(f"Basic {b64('alice')}", None, id="no-colon"),
        pytest.param(f"Basic {b64('alice:pw').rstrip('=')}", None, id="bad-padding"),
        pytest.param("Basic YWxp Y2U6cHc=", None, id="space-inside"),
        pytest.param("Basic YWxpY2U6cHc=!", None, id="junk"),
        pytest.param("Basic " + base64.b64encode(b"al\xffce:pw").decode(), None, id="not-utf8"),
        pytest.param(f"Bearer {b64('alice:pw')}", None, id="other-scheme"),
        pytest.param("Basic", None, id="no-credentials"),
    ],
)
def test_parse_basic(value: str, expected: tuple[str, str] | None) -> None:
    assert parse_basic(value) == expected


@given(st.text(max_size=300))
def test_parse_basic_never_raises(value: str) -> None:
    parse_basic(value)


def _verifier(strict: bool) -> JwtVerifier:
    # No jwks_url: the cache's session is never used, so a placeholder stands in for it.
    clock = FakeClock()
    policy = JwtAuth(
        algorithms=("HS256", "ES256"),
        secret=HS_SECRET,
        required_scopes=frozenset({"read"}),
        issuer="https://idp" if strict else None,
        audience=("api",) if strict else (),
    )
    return JwtVerifier(policy, jwks=JwksCache(http=cast(aiohttp.ClientSession, None), clock=clock), clock=clock)


def _outcome(value: str, strict: bool = False) -> None:
    with contextlib.suppress(Unauthorized, Forbidden):
        asyncio.run(_verifier(strict).verify(value))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_verifier_arbitrary_strings(value: str) -> None:
    _outcome(value)
    _outcome(f"Bearer {value}")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
header_values = st.fixed_dictionaries(
    {},
    optional={
        "alg": st.sampled_from(["HS256", "ES256", "none", "RS256", "HS512"]) | json_values,
        "kid": json_values,
        "typ": json_values,
        "crit": json_values,
    },
)
payload_values = st.fixed_dictionaries(
    {},
    optional={
        "sub": st.text(max_size=10) | json_values,
        "exp": st.sampled_from([NOW + 60, NOW - 60, float("nan"), float("inf"), 1e308, True]) | json_values,
        "nbf": json_values,
        "iat": json_values,
        "scope": json_values,
        "scp": json_values,
        "scopes": json_values,
        "aud": st.sampled_from(["api", ["x", "api"]]) | json_values,
        "iss": st.just("https://idp") | json_values,
    },
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    header=header_values | json_values,
    payload=payload_values | json_values,
    signature=st.binary(max_size=80),
    hmac_it=st.booleans(),
    strict=st.booleans(),
)
def test_verifier_arbitrary_json_tokens(
    header: Any, payload: Any, signature: bytes, hmac_it: bool, strict: bool
) -> None:
    if hmac_it and isinstance(header, dict) and isinstance(payload, dict):
        # Correctly signed: exercises every claim check past the signature.
        token = forge_hs256(HS_SECRET.encode(), payload, header=header)
    else:
        token = ".".join((b64url(json.dumps(header).encode()), b64url(json.dumps(payload).encode()), b64url(signature)))
    _outcome(f"Bearer {token}", strict)
