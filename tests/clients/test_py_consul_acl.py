"""py-consul's ACL API (``consul.Consul.acl``) against a DevAgent with ACLs enabled (default policy deny).

The scenario follows criteo/py-consul's tests/api/test_acl.py: policies and tokens created, read, listed, updated
and deleted through the client, and the client's exception for a refused request (ACLPermissionDenied on 403).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import consul
import pytest
from yarl import URL

from consulgw.devagent import DevAgent
from consulgw.devagent.agent_config import AclConfig

pytestmark = pytest.mark.asyncio
MANAGEMENT = "c0ffee00-0000-4000-8000-00000000acl1"


@pytest.fixture
async def acl_agent() -> AsyncIterator[URL]:
    acl = AclConfig(enabled=True, default_policy="deny", initial_management=MANAGEMENT)
    async with DevAgent(node="test-node", port=0, acl=acl) as running:
        yield URL(running.url)


def _client(url: URL, token: str | None = MANAGEMENT) -> consul.Consul:
    return consul.Consul(host=url.host, port=url.port, token=token)


async def test_policies_and_tokens_through_py_consul(acl_agent: URL) -> None:
    def scenario() -> None:
        c = _client(acl_agent)
        try:
            rules = {"key_prefix": {"app/": {"policy": "write"}}}  # py-consul sends rules as JSON
            policy = c.acl.policy.create(name="app-writer", rules=rules, description="app")
            assert json.loads(c.acl.policy.read(policy["ID"])["Rules"]) == rules
            assert "app-writer" in {p["Name"] for p in c.acl.policy.list()}
            updated = c.acl.policy.update(
                policy["ID"], "app-writer", rules={"key_prefix": {"app/": {"policy": "read"}}}
            )
            assert updated["ModifyIndex"] > policy["ModifyIndex"]
            token = c.acl.token.create(description="app", policies_name=["app-writer"])
            assert token["Policies"] == [{"ID": policy["ID"], "Name": "app-writer"}]
            assert c.acl.token.read(token["AccessorID"])["Description"] == "app"
            assert token["AccessorID"] in {t["AccessorID"] for t in c.acl.token.list()}
            me = c.acl.token.read_self(token=token["SecretID"])
            assert me["AccessorID"] == token["AccessorID"]
            clone = c.acl.token.clone(token["AccessorID"], description="copy")
            assert clone["Policies"] == token["Policies"]
            assert c.acl.token.delete(clone["AccessorID"]) is True

            app = _client(acl_agent, token["SecretID"])
            try:
                assert c.kv.put("app/config", "v") is True
                assert app.kv.get("app/config")[1]["Value"] == b"v"
                with pytest.raises(consul.ACLPermissionDenied, match="lacks permission 'key:write'"):
                    app.kv.put("app/config", "w")
                with pytest.raises(consul.ACLPermissionDenied, match="lacks permission 'key:read'"):
                    app.kv.get("other")
            finally:
                app.http.session.close()
            assert c.acl.token.delete(token["AccessorID"]) is True
            assert c.acl.policy.delete(policy["ID"]) is True
        finally:
            c.http.session.close()

    await asyncio.to_thread(scenario)


async def test_unknown_token_and_anonymous_reads(acl_agent: URL) -> None:
    def scenario() -> None:
        stranger = _client(acl_agent, "not-a-token")
        anonymous = _client(acl_agent, None)
        try:
            with pytest.raises(consul.ACLPermissionDenied, match="ACL not found"):
                stranger.kv.get("x")
            _, services = anonymous.catalog.services()
            assert services == {}
            with pytest.raises(consul.ACLPermissionDenied, match="anonymous token lacks permission 'key:read'"):
                anonymous.kv.get("x")
        finally:
            stranger.http.session.close()
            anonymous.http.session.close()

    await asyncio.to_thread(scenario)
