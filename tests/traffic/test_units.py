"""The traffic steps' pure parts: cookies, sticky tokens, split match rules, request keys, the sticky-key setting."""

from __future__ import annotations

import argparse
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from consulgw.errors import ConfigError
from consulgw.model.balancing import HashKey
from consulgw.pipeline.context import RequestContext
from consulgw.policy.model import SplitMatch
from consulgw.settings import gateway_settings
from consulgw.traffic.cookies import request_cookie, set_cookie
from consulgw.traffic.keys import request_key
from consulgw.traffic.split import matches
from consulgw.traffic.sticky import StickyTokens


@pytest.mark.parametrize(
    ("headers", "name", "expected"),
    [
        pytest.param(["a=1; b=2"], "b", "2", id="second"),
        pytest.param(["a=1", "b=2"], "b", "2", id="second-header"),
        pytest.param(["b=1; b=2"], "b", "1", id="first-wins"),
        pytest.param(['b="quoted"'], "b", "quoted", id="quoted"),
        pytest.param(["ab=1; b = 3 "], "b", "3", id="spaces-and-prefix-names"),
        pytest.param(["b"], "b", None, id="no-equals"),
        pytest.param(["x=1;;; =; b=="], "b", "=", id="junk-around"),
        pytest.param([], "b", None, id="none"),
    ],
)
def test_request_cookie(headers: list[str], name: str, expected: str | None) -> None:
    assert request_cookie(headers, name) == expected


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        pytest.param({}, "n=v; Path=/; HttpOnly; SameSite=Lax", id="defaults"),
        pytest.param(
            {"path": "/app", "max_age": 3599.2, "secure": True, "http_only": False, "same_site": "none"},
            "n=v; Path=/app; Max-Age=3600; Secure; SameSite=None",
            id="everything",
        ),
        pytest.param({"same_site": None}, "n=v; Path=/; HttpOnly", id="no-same-site"),
    ],
)
def test_set_cookie(kwargs: dict[str, Any], expected: str) -> None:
    assert set_cookie("n", "v", **kwargs) == expected


def test_sticky_tokens_are_keyed_opaque_and_told_apart_from_forgeries() -> None:
    tokens = StickyTokens(b"k" * 32, "users")
    value = tokens.cookie_value("node-1/users-10.0.0.7-8080")
    assert "10.0.0.7" not in value
    assert "users" not in value
    token, _, check = value.partition(".")
    assert (len(token), len(check)) == (16, 8)
    assert tokens.authentic_token(value) == token
    assert StickyTokens(b"k" * 32, "users").cookie_value("node-1/users-10.0.0.7-8080") == value  # any replica
    assert StickyTokens(b"x" * 32, "users").authentic_token(value) is None  # another key
    assert StickyTokens(b"k" * 32, "orders").authentic_token(value) is None  # another service
    for forged in (token + ".00000000", token, "", ".", "é" * 25, token.upper() + "." + check):
        assert tokens.authentic_token(forged) is None, forged


class FakeRequest:
    def __init__(self, headers: dict[str, str] | list[tuple[str, str]], query: str = "") -> None:
        self.headers = CIMultiDictProxy(CIMultiDict(headers))
        self.query_string = query


def ctx(consumer: str | None = None, client_ip: str = "192.0.2.1") -> RequestContext:
    return RequestContext(
        request=None,  # type: ignore[arg-type]
        request_id="r",
        client_ip=client_ip,
        service="svc",
        route="svc/",
        started=0.0,
        upstream_target="/",
        consumer=consumer,
    )


@pytest.mark.parametrize(
    ("rule", "request_", "consumer", "expected"),
    [
        pytest.param(SplitMatch(to="c", headers=(("x-canary", ("always",)),)), FakeRequest({"X-Canary": "always"}), None, True, id="header"),
        pytest.param(SplitMatch(to="c", headers=(("x-canary", ("always",)),)), FakeRequest({"X-Canary": "Always"}), None, False, id="header-value-case"),
        pytest.param(SplitMatch(to="c", cookies=(("beta", ("1",)),)), FakeRequest({"Cookie": "a=b; beta=1"}), None, True, id="cookie"),
        pytest.param(SplitMatch(to="c", query=(("v", ("2",)),)), FakeRequest({}, "v=1&v=2"), None, True, id="query-any-value"),
        pytest.param(SplitMatch(to="c", query=(("v", ("",)),)), FakeRequest({}, "v="), None, True, id="query-blank"),
        pytest.param(SplitMatch(to="c", consumers=frozenset({"qa"})), FakeRequest({}), "qa", True, id="consumer"),
        pytest.param(SplitMatch(to="c", consumers=frozenset({"qa"})), FakeRequest({}), None, False, id="anonymous"),
        pytest.param(
            SplitMatch(to="c", headers=(("x-a", ("1",)),), consumers=frozenset({"qa"})),
            FakeRequest({"X-A": "1"}),
            "other",
            False,
            id="all-conditions-must-hold",
        ),
    ],
)  # fmt: skip
def test_split_match_rules(rule: SplitMatch, request_: FakeRequest, consumer: str | None, expected: bool) -> None:
    assert matches(rule, ctx(consumer), request_) is expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("key", "request_", "consumer", "expected"),
    [
        pytest.param(HashKey("ip"), FakeRequest({}), None, "192.0.2.1", id="ip"),
        pytest.param(HashKey("consumer"), FakeRequest({}), "alice", "alice", id="consumer"),
        pytest.param(HashKey("consumer"), FakeRequest({}), None, None, id="no-consumer"),
        pytest.param(HashKey("header", "x-user-id"), FakeRequest({"X-User-ID": "42"}), None, "42", id="header"),
        pytest.param(HashKey("header", "x-user-id"), FakeRequest({"X-User-ID": ""}), None, None, id="empty-header"),
        pytest.param(HashKey("cookie", "sid"), FakeRequest({"Cookie": "sid=abc"}), None, "abc", id="cookie"),
        pytest.param(HashKey("cookie", "sid"), FakeRequest({}), None, None, id="no-cookie"),
    ],
)
def test_request_keys(key: HashKey, request_: FakeRequest, consumer: str | None, expected: str | None) -> None:
    assert request_key(key, ctx(consumer), request_) == expected  # type: ignore[arg-type]


def test_the_sticky_key_setting() -> None:
    key = "0123456789abcdef-sticky"
    from_env = gateway_settings(argparse.Namespace(), {"CONSULGW_STICKY_KEY": key})
    assert from_env.sticky_key.value == key
    assert key not in repr(from_env)
    from_flag = gateway_settings(argparse.Namespace(sticky_key="f" * 16), {"CONSULGW_STICKY_KEY": key})
    assert from_flag.sticky_key.value == "f" * 16  # the flag wins
    assert not gateway_settings(argparse.Namespace(), {}).sticky_key  # none: the gateway makes one per run
    for bad in ("short", " " * 20, "tab\tin-the-key-0123"):
        with pytest.raises(ConfigError) as info:
            gateway_settings(argparse.Namespace(sticky_key=bad), {})
        assert str(info.value).startswith("--sticky-key / CONSULGW_STICKY_KEY: the key has")
        assert bad not in str(info.value) or bad.isspace()
