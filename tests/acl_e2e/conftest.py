"""An ACL-enabled dev agent (default policy deny) loaded with the policies of deploy/consul, their tokens made the
way deploy/consul/README.md makes them, and a real upstream HTTP server registered behind a gateway route."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from consulgw.devagent import DevAgent
from consulgw.devagent.agent_config import AclConfig

ACL_DIR = Path(__file__).resolve().parents[2] / "deploy" / "consul"
MANAGEMENT = "5e1c0de5-0000-4000-8000-000000000001"
POLICIES = {
    "consulgw-gateway": "gateway-policy.hcl",
    "consulgw-operator": "operator-policy.hcl",
    "consulgw-registration": "registration-policy.hcl",
}


@dataclass(frozen=True, slots=True)
class AclStack:
    agent: DevAgent
    tokens: dict[str, str]  # policy name -> SecretID of a token holding only that policy
    upstream_port: int

    @property
    def url(self) -> str:
        return self.agent.url


async def consul(agent: DevAgent, method: str, path: str, token: str = MANAGEMENT, **kw: object) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession(headers={"X-Consul-Token": token}) as session,
        session.request(method, agent.url + path, **kw) as resp,  # type: ignore[arg-type]
    ):
        return resp.status, await resp.text()


async def poll(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def acl_stack() -> AsyncIterator[AclStack]:
    app = web.Application()

    async def users(request: web.Request) -> web.Response:
        return web.json_response({"upstream": "users", "path": request.path})

    app.router.add_get("/{tail:.*}", users)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    acl = AclConfig(enabled=True, default_policy="deny", initial_management=MANAGEMENT)
    try:
        async with DevAgent(node="acl-node", port=0, acl=acl) as agent:
            tokens: dict[str, str] = {}
            for name, file in POLICIES.items():
                rules = (ACL_DIR / file).read_text()
                status, _ = await consul(agent, "PUT", "/v1/acl/policy", json={"Name": name, "Rules": rules})
                assert status == 200
                status, body = await consul(agent, "PUT", "/v1/acl/token", json={"Policies": [{"Name": name}]})
                assert status == 200
                tokens[name] = json.loads(body)["SecretID"]
            service = {"Name": "users", "Address": "127.0.0.1", "Port": port, "Tags": ["gw.route=/users"]}
            status, _ = await consul(agent, "PUT", "/v1/agent/service/register", json=service)
            assert status == 200
            yield AclStack(agent=agent, tokens=tokens, upstream_port=port)
    finally:
        await runner.cleanup()
