"""Span names and attribute values: low-cardinality names, no credentials in URLs."""

from __future__ import annotations

import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consulgw.tracing.attributes import (
    client_span_name,
    host_and_port,
    method_attribute,
    redact_query,
    redact_target,
    redact_url,
    server_span_name,
)


@pytest.mark.parametrize(
    ("method", "route", "name"),
    [
        pytest.param("GET", "/users", "GET /users", id="route"),
        pytest.param("POST", "/", "POST /", id="root"),
        pytest.param("GET", None, "GET", id="no-route"),
        pytest.param("PROPFIND", "/dav", "HTTP /dav", id="unknown-method"),
        pytest.param("get", "/x", "HTTP /x", id="methods-are-case-sensitive"),
    ],
)
def test_server_span_names(method: str, route: str | None, name: str) -> None:
    assert server_span_name(method, route) == name


def test_methods() -> None:
    assert [method_attribute(m) for m in ("GET", "QUERY", "PROPFIND")] == ["GET", "QUERY", "_OTHER"]
    assert [client_span_name(m) for m in ("DELETE", "MKCOL")] == ["DELETE", "HTTP"]


@pytest.mark.parametrize(
    ("query", "redacted"),
    [
        pytest.param("", "", id="empty"),
        pytest.param("a=1&b=2", "a=1&b=2", id="nothing-secret"),
        pytest.param("access_token=abc&x=1", "access_token=REDACTED&x=1", id="token"),
        pytest.param("api_key=k&API-KEY=k", "api_key=REDACTED&API-KEY=REDACTED", id="api-key-spellings"),
        pytest.param(
            "X-Amz-Credential=a&Signature=s&sig=t",
            "X-Amz-Credential=a&Signature=REDACTED&sig=REDACTED",
            id="signatures",
        ),
        pytest.param("password", "password", id="name-without-value"),
        pytest.param("pass%77ord=x", "pass%77ord=REDACTED", id="encoded-name"),
        pytest.param("q=a%26token%3Db", "q=a%26token%3Db", id="encoded-inside-a-value"),
    ],
)
def test_redact_query(query: str, redacted: str) -> None:
    assert redact_query(query) == redacted


def test_redact_target_and_url() -> None:
    assert redact_target("/a/b?token=t&x=1") == "/a/b?token=REDACTED&x=1"
    assert redact_target("/a/b") == "/a/b"
    assert redact_url("https://user:pw@idp.example/introspect?client_secret=s") == (
        "https://idp.example/introspect?client_secret=REDACTED"
    )


@given(st.lists(st.tuples(st.sampled_from(["token", "sig", "a", "Password", "x-api-key"]), st.text(min_size=1))))
def test_no_secret_value_survives(pairs: list[tuple[str, str]]) -> None:
    plain = [value for name, value in pairs if name == "a"]
    for name, value in urllib.parse.parse_qsl(redact_query(urllib.parse.urlencode(pairs)), keep_blank_values=True):
        assert value in plain if name == "a" else value == "REDACTED"


@pytest.mark.parametrize(
    ("host", "address", "port"),
    [
        pytest.param("example.com", "example.com", 80, id="name"),
        pytest.param("example.com:8443", "example.com", 8443, id="name-port"),
        pytest.param("[::1]:8080", "::1", 8080, id="ipv6-port"),
        pytest.param("[::1]", "::1", 80, id="ipv6"),
        pytest.param("::1", "::1", 80, id="bare-ipv6"),
        pytest.param("h:99999999", "h", 80, id="absurd-port"),
        pytest.param("h:", "h", 80, id="empty-port"),
    ],
)
def test_host_and_port(host: str, address: str, port: int) -> None:
    assert host_and_port(host, 80) == (address, port)
