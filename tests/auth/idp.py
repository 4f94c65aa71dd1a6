"""A real local identity provider for tests: RFC 7662 introspection with client authentication, an OIDC discovery
document and a JWK Set, served by aiohttp on 127.0.0.1.

- ``POST /oauth2/introspect``: authenticates the client (``client_secret_basic``, id and secret form-urlencoded
  inside Basic as RFC 6749 section 2.3.1 says, or ``client_secret_post``; the accepted methods are settable), then
  answers ``{"active": true, **claims}`` for a token in ``tokens`` and ``{"active": false}`` otherwise (revoked or
  unknown). ``status``, ``delay`` and ``raw`` (a body served as is) simulate an IdP in trouble; ``calls`` counts
  introspections per token and ``requests`` keeps every form received (minus the secret).
- ``GET /.well-known/openid-configuration``: ``metadata`` (issuer, jwks_uri, introspection_endpoint by default),
  ``metadata_status`` to make it fail; ``metadata_fetches`` counts.
- ``GET /jwks.json``: ``{"keys": keys}``; ``jwks_fetches`` counts.

An IdP that is down is an endpoint on a port nothing listens on (``free_port``), not this server stopped: the
gateway's keep-alive connections would outlive a stopped listener.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

CLIENT_ID = "consulgw gateway"  # a space, so form-urlencoding inside Basic matters
CLIENT_SECRET = "s3cr:et/with+odd=chars"


@dataclass
class Idp:
    client_id: str = CLIENT_ID
    client_secret: str = CLIENT_SECRET
    auth_methods: tuple[str, ...] = ("basic", "post")
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    status: int = 200
    delay: float = 0.0
    raw: str | None = None
    calls: Counter[str] = field(default_factory=Counter)
    requests: list[dict[str, str]] = field(default_factory=list)
    auth_used: list[str] = field(default_factory=list)
    metadata: dict[str, Any] | None = None
    metadata_status: int = 200
    metadata_fetches: int = 0
    keys: list[dict[str, Any]] = field(default_factory=list)
    jwks_fetches: int = 0
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def issuer(self) -> str:
        return self.base

    @property
    def endpoint(self) -> str:
        return f"{self.base}/oauth2/introspect"

    @property
    def discovery_url(self) -> str:
        return f"{self.base}/.well-known/openid-configuration"

    @property
    def jwks_url(self) -> str:
        return f"{self.base}/jwks.json"

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    def revoke(self, token: str) -> None:
        self.tokens.pop(token, None)

    def _client_method(self, request: web.Request, form: dict[str, str]) -> str | None:
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic ") and "basic" in self.auth_methods:
            try:
                decoded = base64.b64decode(header[6:], validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return None
            user, _, password = decoded.partition(":")
            ok = (urllib.parse.unquote_plus(user), urllib.parse.unquote_plus(password)) == (
                self.client_id,
                self.client_secret,
            )
            return "basic" if ok else None
        if "client_id" in form and "post" in self.auth_methods:
            ok = (form.get("client_id"), form.get("client_secret")) == (self.client_id, self.client_secret)
            return "post" if ok else None
        return None

    async def _introspect(self, request: web.Request) -> web.StreamResponse:
        form = {k: str(v) for k, v in (await request.post()).items()}
        method = self._client_method(request, form)
        if method is None:
            return web.json_response({"error": "invalid_client"}, status=401)
        token = form.get("token", "")
        self.calls[token] += 1
        self.auth_used.append(method)
        self.requests.append({k: v for k, v in form.items() if k != "client_secret"})
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200:
            return web.Response(status=self.status, text="the authorization server is unwell")
        if self.raw is not None:
            return web.Response(text=self.raw, content_type="application/json")
        claims = self.tokens.get(token)
        if claims is None:
            return web.json_response({"active": False})
        return web.json_response({"active": True, **claims})

    async def _metadata(self, _: web.Request) -> web.StreamResponse:
        self.metadata_fetches += 1
        if self.metadata_status != 200:
            return web.Response(status=self.metadata_status, text="no")
        document = self.metadata
        if document is None:
            document = {
                "issuer": self.issuer,
                "jwks_uri": self.jwks_url,
                "introspection_endpoint": self.endpoint,
                "token_endpoint": f"{self.base}/oauth2/token",
            }
        return web.json_response(document)

    async def _jwks(self, _: web.Request) -> web.StreamResponse:
        self.jwks_fetches += 1
        return web.json_response({"keys": self.keys})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/oauth2/introspect", self._introspect)
        app.router.add_get("/.well-known/openid-configuration", self._metadata)
        app.router.add_get("/jwks.json", self._jwks)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = int(next(a[1] for a in self._runner.addresses if isinstance(a, tuple)))

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@pytest.fixture
async def oauth_idp() -> AsyncIterator[Idp]:
    server = Idp()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
