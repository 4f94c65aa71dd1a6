"""consulgw.redaction, the one place that says what a credential is and how it is hidden, and the log processor
that applies it to every line (issue 13 finding 5)."""

from __future__ import annotations

import io
import json

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from consulgw.logs import configure_logging
from consulgw.redaction import is_secret_name, redact_url, redact_urls


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        pytest.param("https://idp.example.com/jwks", "https://idp.example.com/jwks", id="plain"),
        pytest.param("https://u:p@idp.example.com/jwks", "https://***@idp.example.com/jwks", id="userinfo"),
        pytest.param("https://tok@idp.example.com", "https://***@idp.example.com", id="token-as-user"),
        pytest.param("https://idp.example.com/jwks?api_key=k&x=1", "https://idp.example.com/jwks?***", id="query"),
        pytest.param("https://idp/jwks#access_token=t", "https://idp/jwks", id="fragment"),
        pytest.param("https://idp?k=v", "https://idp?***", id="query-without-path"),
        pytest.param("https://a:b@idp:8443/p?q#f", "https://***@idp:8443/p?***", id="everything"),
        pytest.param("redis://:pw@127.0.0.1:6379/0", "redis://***@127.0.0.1:6379/0", id="redis"),
        pytest.param("rediss://user:pw@r.example:6380", "rediss://***@r.example:6380", id="rediss"),
        pytest.param(
            "redis+sentinel://:pw@h1:26379,h2:26379/mymaster/0",
            "redis+sentinel://***@h1:26379,h2:26379/mymaster/0",
            id="sentinel-several-hosts",
        ),
        pytest.param("https://u:p@w@idp/x", "https://***@idp/x", id="at-in-password"),
        pytest.param("http://[::1]:80/x", "http://[::1]:80/x", id="ipv6"),
        pytest.param("not a url ?x", "not a url ?***", id="no-scheme"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_urls_in_text() -> None:
    text = "GET https://u:pw@idp/jwks?key=k1 failed; retry http://x:y@other:1/?t=2, 'http://ok/a'"
    assert redact_urls(text) == "GET https://***@idp/jwks?*** failed; retry http://***@other:1/?*** 'http://ok/a'"
    assert redact_urls("no url here") == "no url here"


_secret = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=8, max_size=16)


@given(user=_secret, password=_secret, query=_secret, path=st.sampled_from(["", "/", "/jwks", "/a/b"]))
def test_no_userinfo_or_query_survives(user: str, password: str, query: str, path: str) -> None:
    url = f"https://{user}:{password}@idp.example.com:8443{path}?api_key={query}"
    for shown in (redact_url(url), redact_urls(f"error at {url} (refused)")):
        assert user not in shown
        assert password not in shown
        assert query not in shown
        assert "idp.example.com:8443" in shown


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        *[
            pytest.param(n, True, id=n)
            for n in ("Authorization", "Cookie", "X-API-Key", "x_api_key", "X-Consul-Token", "secret", "client_secret")
        ],
        *[pytest.param(n, True, id=n) for n in ("password_hash", "api_key_sha256", "public_key", "private_key")],
        *[pytest.param(n, True, id=n) for n in ("X-Upstream-Token", "db_password", "refresh_token", "jwt")],
        *[pytest.param(n, False, id=n) for n in ("url", "service", "X-Request-ID", "keys", "cached_keys", "error")],
    ],
)
def test_is_secret_name(name: str, secret: bool) -> None:
    assert is_secret_name(name) is secret


def test_every_log_line_is_scrubbed() -> None:
    """Credential fields masked; URLs in any field, an exception message included, without userinfo and query."""
    stream = io.StringIO()
    configure_logging("json", "debug", stream)
    try:
        log = structlog.get_logger("test")
        log.warning(
            "jwks_fetch_failed",
            url="https://u:pw-1@idp/jwks?api_key=k-2",
            error="ClientError: https://u:pw-3@idp/x",
            authorization="Bearer t-4",
            headers={"Cookie": "c-5", "X-Other": "see https://a:pw-6@h/"},
        )
        try:
            raise RuntimeError("cannot reach redis://:pw-7@cache:6379/0")
        except RuntimeError:
            log.exception("request_failed")
    finally:
        structlog.reset_defaults()
    text = stream.getvalue()
    for secret in ("pw-1", "k-2", "pw-3", "t-4", "c-5", "pw-6", "pw-7"):
        assert secret not in text, secret
    first = json.loads(text.splitlines()[0])
    assert first["url"] == "https://***@idp/jwks?***"
    assert first["authorization"] == "[redacted]"
    assert "redis://***@cache:6379/0" in text
