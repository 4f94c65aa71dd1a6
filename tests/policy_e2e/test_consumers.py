"""API-key and Basic auth through a real gateway, against consumers stored in KV as digests and password hashes only."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import sys
from typing import Any

import aiohttp

from consulgw.policy.consumers import api_key_digest, hash_password
from consulgw.server.gateway import Gateway

from .conftest import REPO, Consul, routed_service, unique, wait_for


async def _call(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
    async with http.get(url, headers=headers) as resp:
        raw = await resp.read()
        return resp.status, json.loads(raw) if raw else None, dict(resp.headers)


async def _kv_raw(http: aiohttp.ClientSession, agent_url: str, key: str) -> bytes:
    async with http.get(f"{agent_url}/v1/kv/{key}", params={"raw": "true"}) as resp:
        assert resp.status == 200
        return await resp.read()


def _sent(upstream: Any, name: str) -> list[str]:
    return [v for k, v in upstream.received[-1]["headers"] if k.lower() == name.lower()]


async def test_api_key_consumers_live_add_and_delete(
    make_gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession, dev_agent: Any
) -> None:
    gateway: Gateway = await make_gateway()
    up = await upstreams("orders")
    alice_key = secrets.token_urlsafe(32)
    await consul.kv_put(
        "consulgw/consumers/alice",
        json.dumps({"api_key_sha256": [api_key_digest(alice_key)], "scopes": ["orders:read"]}),
    )
    service = unique("orders")
    await routed_service(gateway, consul, service, up.port, {"auth": {"type": "api_key"}})
    url = f"{gateway.url}/orders"

    status, body, _ = await _call(http, url, {"X-API-Key": alice_key, "X-Consumer-ID": "admin", "X-User-ID": "root"})
    assert status == 200, body
    assert _sent(up, "X-Consumer-ID") == ["alice"]  # the client's "admin" was stripped first
    assert _sent(up, "X-User-Scopes") == ["orders:read"]
    assert _sent(up, "X-User-ID") == []
    hits = len(up.received)

    for headers in ({"X-API-Key": alice_key + "x"}, {"X-API-Key": "not-a-key"}, {}):
        status, body, response_headers = await _call(http, url, headers)
        assert status == 401, headers
        assert body["error"] == "unauthorized"
        assert response_headers["WWW-Authenticate"] == 'ApiKey header="X-API-Key"'
        assert alice_key not in json.dumps(body)
    assert len(up.received) == hits

    # A consumer added while the gateway runs, with the CLI (which stores the digest only): works without restart.
    bob_key = secrets.token_urlsafe(32)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consulgw",
        "consumer",
        "add",
        "bob",
        "--api-key",
        bob_key,
        "--consul",
        dev_agent.url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert bob_key not in (out + err).decode()
    stored = await _kv_raw(http, dev_agent.url, "consulgw/consumers/bob")
    assert bob_key.encode() not in stored
    assert json.loads(stored)["api_key_sha256"] == [api_key_digest(bob_key)]

    async def bob_admitted() -> bool:
        status, _, _ = await _call(http, url, {"X-API-Key": bob_key})
        return status == 200

    await wait_for(bob_admitted)
    assert _sent(up, "X-Consumer-ID") == ["bob"]

    # Deleting a consumer revokes its key for the next request; the others keep working.
    await consul.kv_delete("consulgw/consumers/alice")

    async def alice_refused() -> bool:
        status, _, _ = await _call(http, url, {"X-API-Key": alice_key})
        return status == 401

    await wait_for(alice_refused)
    status, _, _ = await _call(http, url, {"X-API-Key": bob_key})
    assert status == 200


async def test_basic_auth_consumers_live_add_and_delete(
    make_gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession, dev_agent: Any
) -> None:
    gateway: Gateway = await make_gateway()
    up = await upstreams("staff")
    password = "correct horse battery staple"
    await consul.kv_put(
        "consulgw/consumers/carol", json.dumps({"password_hash": hash_password(password), "scopes": ["staff"]})
    )
    stored = await _kv_raw(http, dev_agent.url, "consulgw/consumers/carol")
    assert password.encode() not in stored
    service = unique("staff")
    await routed_service(gateway, consul, service, up.port, {"auth": {"type": "basic", "realm": "staff"}})
    url = f"{gateway.url}/"

    def basic(user: str, secret: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()}

    status, body, _ = await _call(http, url, {**basic("carol", password), "X-Consumer-ID": "admin"})
    assert status == 200, body
    assert _sent(up, "X-Consumer-ID") == ["carol"]
    assert _sent(up, "X-User-Scopes") == ["staff"]
    hits = len(up.received)

    for headers in (basic("carol", password + "!"), basic("mallory", password), {"Authorization": "Basic !!"}, {}):
        status, body, response_headers = await _call(http, url, headers)
        assert status == 401, headers
        assert body["error"] == "unauthorized"
        assert response_headers["WWW-Authenticate"].startswith('Basic realm="staff"')
        assert password not in json.dumps(body)
    assert len(up.received) == hits

    # Added live (the hash made by the same helper the CLI uses): admitted without a restart.
    await consul.kv_put("consulgw/consumers/dave", json.dumps({"password_hash": hash_password("dave's secret")}))

    async def dave_admitted() -> bool:
        status, _, _ = await _call(http, url, basic("dave", "dave's secret"))
        return status == 200

    await wait_for(dave_admitted)
    assert _sent(up, "X-Consumer-ID") == ["dave"]
    assert _sent(up, "X-User-Scopes") == []

    await consul.kv_delete("consulgw/consumers/carol")

    async def carol_refused() -> bool:
        status, _, _ = await _call(http, url, basic("carol", password))
        return status == 401

    await wait_for(carol_refused)
    status, _, _ = await _call(http, url, basic("dave", "dave's secret"))
    assert status == 200
