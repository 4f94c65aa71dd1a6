"""No secret (Authorization, Cookie, API keys, JWT secrets, Consul token) in logs, metrics, admin output or errors."""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from consulgw.policy.consumers import api_key_digest
from tests.support.processes import gateway_process

from .conftest import Consul, start_upstream, wait_for
from .test_resilience_e2e import _has_route, _ready

SECRETS = {
    "authorization": "Bearer s3cr3t-bearer-token-value",
    "cookie": "session=s3cr3t-cookie-value",
    "api_key": "s3cr3t-api-key-value-0123456789",
    "jwt_secret": "s3cr3t-jwt-signing-key-that-is-32-bytes-long",
    "consul_token": "s3cr3t-consul-acl-token",
    # Issue 13 finding 5: a header rule's value in a refused policy, and a jwks_url's userinfo and query.
    "upstream_auth": "s3cr3t-upstream-auth-value",
    "idp_password": "s3cr3t-idp-password",
    "idp_api_key": "s3cr3t-idp-api-key",
}
# Port 9 (discard) answers nothing on 127.0.0.1: every JWKS fetch fails and is logged with the URL.
JWKS_URL = f"http://idp-user:{SECRETS['idp_password']}@127.0.0.1:9/jwks.json?api_key={SECRETS['idp_api_key']}"


def rs256_token() -> str:
    """A token whose key the gateway must fetch from JWKS_URL (which fails)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode({"sub": "x", "exp": 4102444800}, key, algorithm="RS256", headers={"kid": "k1"})


async def test_secrets_never_reach_logs_metrics_admin_or_error_bodies(
    dev_agent: Any, consul: Consul, http: aiohttp.ClientSession, tmp_path: Any
) -> None:
    up = await start_upstream("a")
    policy = {"auth": {"type": "jwt", "algorithms": ["HS256"], "secret": SECRETS["jwt_secret"]}}
    keyed = {"auth": {"type": "api_key"}}
    consumer = {"api_key_sha256": [api_key_digest(SECRETS["api_key"])]}
    await consul.register("jwt", up.port, tags=["gw.route=/jwt"])
    await consul.register("keyed", up.port, tags=["gw.route=/keyed"])
    await consul.kv_put("consulgw/services/jwt", json.dumps(policy))
    await consul.kv_put("consulgw/services/keyed", json.dumps(keyed))
    await consul.kv_put("consulgw/consumers/alice", json.dumps(consumer))
    await consul.kv_put("consulgw/services/broken", '{"auth": {"type": "jwt", "algorithms": ["HS256"], "secret": 7')
    await consul.register("idp", up.port, tags=["gw.route=/idp"])
    jwks = {"auth": {"type": "jwt", "algorithms": ["RS256"], "jwks_url": JWKS_URL}}
    await consul.kv_put("consulgw/services/idp", json.dumps(jwks))
    bad_rule = {"headers": {"request": {"set": {"X-Upstream-Auth": f"Bearer {SECRETS['upstream_auth']}\r\n"}}}}
    await consul.kv_put("consulgw/services/rule", json.dumps(bad_rule))
    log_path = tmp_path / "gateway.log"
    flags = ("--token", SECRETS["consul_token"], "--log-format", "json", "--log-level", "debug")
    try:
        async with gateway_process(dev_agent.url, *flags, log=log_path) as gw:
            url, admin = gw.url, gw.admin_url
            await wait_for(lambda: _ready(http, admin), timeout=20)
            await wait_for(lambda: _has_route(http, admin, "jwt"))
            await wait_for(lambda: _has_route(http, admin, "keyed"))
            bodies = []
            for path, headers in (
                ("/jwt/x", {"Authorization": SECRETS["authorization"], "Cookie": SECRETS["cookie"]}),
                ("/keyed/x?api_key=" + SECRETS["api_key"], {"X-API-Key": SECRETS["api_key"] + "-wrong"}),
                ("/keyed/x", {"X-API-Key": SECRETS["api_key"], "Cookie": SECRETS["cookie"]}),
                ("/nowhere?token=" + SECRETS["authorization"], {"Authorization": SECRETS["authorization"]}),
                ("/idp/x", {"Authorization": f"Bearer {rs256_token()}"}),
            ):
                async with http.get(url + path, headers=headers) as resp:
                    if resp.status >= 400:  # the gateway's own answers (a 200 is the upstream's echo)
                        bodies.append(await resp.text())
            assert len(bodies) == 4  # 401 (bad bearer), 401 (wrong key), 404 (no route), 401 (no JWKS key)
            async with http.get(f"{admin}/metrics") as resp:
                metrics = await resp.text()
            async with http.get(f"{admin}/-/routes") as resp:
                routes = await resp.text()
            assert "consulgw/services/broken" in routes  # the rejected document is shown, without its secret
            assert "consulgw/services/rule" in routes
            gw.proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(gw.proc.wait(), 15) == 0
    finally:
        await up.stop()
    logs = log_path.read_text()
    assert "request_completed" in logs
    assert "jwks_fetch_failed" in logs
    assert "http://***@127.0.0.1:9/jwks.json?***" in logs  # where it failed, without the credentials
    for name, secret in SECRETS.items():
        value = secret.split("=", 1)[-1].removeprefix("Bearer ")
        for where, text in (("logs", logs), ("metrics", metrics), ("/-/routes", routes), ("bodies", "".join(bodies))):
            assert value not in text, f"{name} leaked into {where}"
