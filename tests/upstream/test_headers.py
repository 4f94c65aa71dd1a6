"""What a client may not send upstream (issue 13 finding 2), and the one-credential rule (finding 6): pure functions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from consulgw.errors import AmbiguousCredentials
from consulgw.upstream.headers import (
    HOP_BY_HOP,
    IDENTITY_HEADERS,
    client_headers_to_drop,
    end_to_end,
    is_gateway_owned,
    require_single_credentials,
)


def forwarded(pairs: list[tuple[str, str]], *, trusted: bool) -> CIMultiDict[str]:
    """The client's headers as the upstream gets them, before the gateway adds its own."""
    headers = CIMultiDict(pairs)
    return end_to_end(headers, drop=client_headers_to_drop(headers, trusted=trusted))


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("X_User_ID", id="user-id"),
        pytest.param("x_user_id", id="user-id-lower"),
        pytest.param("X_Consumer_ID", id="consumer-id"),
        pytest.param("X_User_Scopes", id="scopes"),
        pytest.param("X-User_Scopes", id="mixed"),
        pytest.param("X_Forwarded_For", id="xff"),
        pytest.param("X_Forwarded_Proto", id="xfp"),
        pytest.param("X_Forwarded_Prefix", id="other-x-forwarded"),
        pytest.param("X_Real_IP", id="real-ip"),
        pytest.param("Transfer_Encoding", id="hop-by-hop"),
        pytest.param("Proxy_Authorization", id="proxy-authorization"),
    ],
)
@pytest.mark.parametrize("trusted", [False, True], ids=["untrusted", "trusted-proxy"])
def test_underscore_spellings_of_owned_names_never_reach_the_upstream(name: str, trusted: bool) -> None:
    out = forwarded([(name, "root"), ("X-Custom_Thing", "kept"), ("Accept", "*/*")], trusted=trusted)
    assert name not in out
    assert out["X-Custom_Thing"] == "kept"  # an underscore name the gateway does not own passes
    assert out["Accept"] == "*/*"


def test_identity_headers_are_dropped_from_anyone() -> None:
    pairs = [(name, "root") for name in IDENTITY_HEADERS]
    assert list(forwarded(pairs, trusted=False).keys()) == []
    assert list(forwarded(pairs, trusted=True).keys()) == []


def test_forwarding_headers_only_from_a_trusted_proxy() -> None:
    pairs = [
        ("Forwarded", "for=203.0.113.9"),
        ("X-Real-IP", "203.0.113.9"),
        ("X-Forwarded-For", "203.0.113.9"),
        ("X-Forwarded-Port", "443"),
        ("X-Forwarded-Prefix", "/admin"),
    ]
    assert list(forwarded(pairs, trusted=False).keys()) == []
    assert list(forwarded(pairs, trusted=True).items()) == pairs


def test_no_scan_result_is_the_static_tuple() -> None:
    assert client_headers_to_drop(CIMultiDict({"Accept": "*/*"}), trusted=True) is IDENTITY_HEADERS


@pytest.mark.parametrize(
    ("name", "owned"),
    [
        *[pytest.param(n, True, id=n) for n in sorted(HOP_BY_HOP)],
        pytest.param("X-USER-ID", True, id="case"),
        pytest.param("x_forwarded_anything", True, id="x-forwarded-prefix"),
        pytest.param("Forwarded", True, id="forwarded"),
        pytest.param("Authorization", False, id="authorization"),
        pytest.param("X-Userid", False, id="near-miss"),
        pytest.param("X-Forwarded", False, id="bare-x-forwarded"),
    ],
)
def test_is_gateway_owned(name: str, owned: bool) -> None:
    assert is_gateway_owned(name) is owned


@pytest.mark.parametrize(
    ("pairs", "names"),
    [
        pytest.param(
            [("Authorization", "Bearer a"), ("Authorization", "Bearer b")], ("Authorization",), id="two-authorization"
        ),
        pytest.param([("Authorization", "Bearer a"), ("authorization", "Bearer b")], ("Authorization",), id="any-case"),
        pytest.param([("X-API-Key", "k-1"), ("X-API-Key", "k-2")], ("Authorization", "X-API-Key"), id="two-api-keys"),
        pytest.param(
            [("X-API-Key", "k-1"), ("X_API_Key", "k-2")], ("Authorization", "X-API-Key"), id="underscore-copy"
        ),
        pytest.param([("X_API_Key", "k-1"), ("x_api-key", "k-2")], ("X-API-Key",), id="two-underscore-copies"),
    ],
)
def test_two_credentials_are_ambiguous(pairs: list[tuple[str, str]], names: tuple[str, ...]) -> None:
    headers = CIMultiDict(pairs)
    with pytest.raises(AmbiguousCredentials) as caught:
        require_single_credentials(headers, names)
    assert (caught.value.status, caught.value.code) == (400, "ambiguous_credentials")
    assert "Bearer" not in caught.value.message
    assert all(value not in caught.value.message for _, value in pairs)


@pytest.mark.parametrize(
    "pairs",
    [
        pytest.param([], id="none"),
        pytest.param([("Authorization", "Bearer a")], id="one"),
        pytest.param([("Authorization", "Bearer a"), ("X-API-Key", "k")], id="one-of-each"),
        pytest.param([("Authorization", "Bearer a"), ("X_Other", "x")], id="unrelated-underscore"),
        pytest.param([("Cookie", "a=1"), ("Cookie", "b=2")], id="cookies-are-not-checked"),
    ],
)
def test_one_credential_is_fine(pairs: list[tuple[str, str]]) -> None:
    require_single_credentials(CIMultiDict(pairs), ("Authorization", "X-API-Key"))
    require_single_credentials(CIMultiDict(pairs))  # Authorization is the default


_NAMES = ("X-User-ID", "X_User_ID", "x_user_id", "X-Forwarded-For", "X_Forwarded_For", "Forwarded", "X-Real-IP")
_names = st.sampled_from(
    [*_NAMES, "X_Real_IP", "Connection", "Keep_Alive", "Accept", "X_Custom", "X-Forwarded-Port", "Authorization"]
)


@given(pairs=st.lists(st.tuples(_names, st.text(alphabet="abc", max_size=3)), max_size=8), trusted=st.booleans())
def test_nothing_that_reads_as_an_identity_header_is_ever_forwarded(
    pairs: list[tuple[str, str]], trusted: bool
) -> None:
    out = forwarded(pairs, trusted=trusted)
    for name in out:
        folded = name.lower().replace("_", "-")
        assert folded not in {n.lower() for n in IDENTITY_HEADERS}
        assert folded not in HOP_BY_HOP
        if "_" in name or not trusted:
            assert not is_gateway_owned(name)
