"""Issue 13 findings 2 and 6 through a real gateway, with a CGI-style upstream (Python's wsgiref) that reads header
names the way WSGI servers do: ``X_User_ID`` and ``X-User-ID`` are both ``HTTP_X_USER_ID`` (wsgiref joins them
with a comma).

* A client's underscore spellings of the identity and forwarding headers never reach the upstream, so it cannot
  set its own user id, scopes or address next to the ones the gateway vouches for.
* Two ``Authorization`` headers (or two of a policy's API-key header, underscore spelling included) answer
  ``400 ambiguous_credentials``, and nothing reaches the upstream.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import aiohttp
import jwt
import pytest

from consulgw.server.gateway import Gateway

from .conftest import Consul, routed, wait_for

SECRET = "headers-e2e-secret-0123456789abcdefgh"
TOKEN = jwt.encode({"sub": "alice", "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")
JWT_POLICY = {"auth": {"type": "jwt", "algorithms": ["HS256"], "secret": SECRET}}
KEY_POLICY = {"auth": {"type": "api_key", "header": "X-API-Key"}}

SPOOFED = {
    "X_User_ID": "root",
    "X_User_Scopes": "admin",
    "X_Consumer_ID": "root",
    "X_Forwarded_For": "203.0.113.9",
    "X_Forwarded_Host": "evil.example",
    "X_Real_IP": "203.0.113.9",
}


class _Quiet(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """No access line per request."""


class Wsgi:
    """wsgiref on 127.0.0.1; ``environs`` holds the HTTP_* variables of every request it served."""

    def __init__(self) -> None:
        self.environs: list[dict[str, str]] = []
        self.server: WSGIServer = make_server("127.0.0.1", 0, self.app, handler_class=_Quiet)

    def app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen = {k: str(v) for k, v in environ.items() if k.startswith("HTTP_")}
        self.environs.append(seen)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(seen).encode()]

    @property
    def port(self) -> int:
        return int(self.server.server_port)


@pytest.fixture
def wsgi() -> Iterator[Wsgi]:
    upstream = Wsgi()
    thread = threading.Thread(target=upstream.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield upstream
    finally:
        upstream.server.shutdown()
        thread.join(10)
        upstream.server.server_close()


async def serve(consul: Consul, gateway: Gateway, service: str, port: int, policy: dict[str, Any] | None) -> None:
    if policy is not None:
        await consul.kv_put(f"consulgw/services/{service}", json.dumps(policy))
    await consul.register(service, port, tags=[f"gw.route=/{service}"])
    await wait_for(lambda: routed(gateway, service, 1))
    if policy is not None:

        def has_policy() -> bool:
            view = gateway.view()
            return view is not None and view.services[service].policy.auth is not None

        await wait_for(has_policy)


async def get(http: aiohttp.ClientSession, url: str, headers: list[tuple[str, str]]) -> tuple[int, dict[str, Any]]:
    async with http.get(url, headers=headers) as resp:
        return resp.status, json.loads(await resp.read())


async def test_underscore_identity_and_forwarding_headers_never_reach_the_upstream(
    wsgi: Wsgi, gateway: Gateway, consul: Consul, http: aiohttp.ClientSession
) -> None:
    await serve(consul, gateway, "who", wsgi.port, JWT_POLICY)
    await serve(consul, gateway, "open", wsgi.port, None)
    headers = [("Authorization", f"Bearer {TOKEN}"), ("Host", "gw.test"), *SPOOFED.items()]

    status, env = await get(http, f"{gateway.url}/who/me", headers)
    assert status == 200, env
    assert env["HTTP_X_USER_ID"] == "alice"  # the gateway's, alone: not "alice,root"
    assert "HTTP_X_USER_SCOPES" not in env  # the token has no scopes; the client's "admin" is gone
    assert "HTTP_X_CONSUMER_ID" not in env
    assert env["HTTP_X_FORWARDED_FOR"] == "127.0.0.1"
    assert env["HTTP_X_FORWARDED_HOST"] == "gw.test"
    assert "HTTP_X_REAL_IP" not in env

    status, env = await get(http, f"{gateway.url}/open/x", headers[1:])  # no auth policy: dropped all the same
    assert status == 200, env
    assert not {"HTTP_X_USER_ID", "HTTP_X_USER_SCOPES", "HTTP_X_CONSUMER_ID", "HTTP_X_REAL_IP"} & set(env)
    assert env["HTTP_X_FORWARDED_FOR"] == "127.0.0.1"


@pytest.mark.parametrize(
    ("service", "headers"),
    [
        pytest.param(
            "who",
            [("Authorization", f"Bearer {TOKEN}"), ("Authorization", "Bearer forged")],
            id="two-authorization-jwt-route",
        ),
        pytest.param("open", [("Authorization", "Basic YTpi"), ("Authorization", "Basic Yzpk")], id="no-policy"),
        pytest.param("keys", [("X-API-Key", "key-one"), ("X-API-Key", "key-two")], id="two-api-keys"),
        pytest.param("keys", [("X-API-Key", "key-one"), ("X_API_Key", "key-two")], id="api-key-underscore-copy"),
    ],
)
async def test_two_credentials_answer_400(
    service: str,
    headers: list[tuple[str, str]],
    wsgi: Wsgi,
    gateway: Gateway,
    consul: Consul,
    http: aiohttp.ClientSession,
) -> None:
    policies = {"who": JWT_POLICY, "open": None, "keys": KEY_POLICY}
    await serve(consul, gateway, service, wsgi.port, policies[service])
    status, body = await get(http, f"{gateway.url}/{service}/x", headers)
    assert (status, body["error"]) == (400, "ambiguous_credentials")
    assert all(value not in json.dumps(body) for _, value in headers)
    assert wsgi.environs == []  # answered before any upstream exchange (one would have finished before the answer)
