"""The dev agent's side of "a gateway token that lacks KV read": exactly what Consul answers the gateway's reads.

Consul (agent/consul/kvs_endpoint.go) filters a recursive read by ``key:read`` on every key; with the default
``acl.enable_key_list_policy = false`` no permission on the prefix itself is checked. So a token without read on
``consulgw/`` gets ``404`` and ``X-Consul-Results-Filtered-By-ACLs: true`` when keys exist under the prefix (a plain
404 without the header when none exist), not a 403. Only with ``acl.enable_key_list_policy = true`` is the prefix
read refused with ``403 ... lacks permission 'key:list' on "consulgw/"``. A single key read is always a 403.
"""

from __future__ import annotations

import json

import aiohttp
import pytest

from consulgw.devagent import DevAgent
from consulgw.devagent.acl_rules import parse_rules
from consulgw.devagent.agent_config import AclConfig
from tests.acl_e2e.conftest import ACL_DIR, MANAGEMENT, consul

FILTERED = "X-Consul-Results-Filtered-By-ACLs"
# deploy/consul/gateway-policy.hcl without its key_prefix rule: services and nodes, no KV at all
NO_KV = 'service_prefix "" {\n  policy = "read"\n}\nnode_prefix "" {\n  policy = "read"\n}\n'


async def _token(agent: DevAgent, rules: str) -> tuple[str, str]:
    status, body = await consul(agent, "PUT", "/v1/acl/policy", json={"Name": "no-kv", "Rules": rules})
    assert status == 200
    status, body = await consul(agent, "PUT", "/v1/acl/token", json={"Policies": [{"Name": "no-kv"}]})
    assert status == 200
    token = json.loads(body)
    return token["AccessorID"], token["SecretID"]


async def _read(agent: DevAgent, path: str, token: str) -> tuple[int, dict[str, str], str]:
    async with (
        aiohttp.ClientSession(headers={"X-Consul-Token": token}) as session,
        session.get(agent.url + path) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.text()


def test_the_no_kv_policy_is_the_gateway_policy_minus_its_key_rule() -> None:
    gateway = parse_rules((ACL_DIR / "gateway-policy.hcl").read_text())
    assert [r.kind for r in gateway.blocks if r.kind.startswith("key")] == ["key_prefix"]
    assert parse_rules(NO_KV).blocks == tuple(r for r in gateway.blocks if not r.kind.startswith("key"))


@pytest.mark.parametrize("list_policy", [False, True], ids=["default", "enable_key_list_policy"])
async def test_recursive_read_of_the_prefix(list_policy: bool) -> None:
    acl = AclConfig(
        enabled=True, default_policy="deny", initial_management=MANAGEMENT, enable_key_list_policy=list_policy
    )
    async with DevAgent(node="kv-node", port=0, acl=acl) as agent:
        accessor, secret = await _token(agent, NO_KV)
        empty_status, empty_headers, _ = await _read(agent, "/v1/kv/consulgw/?recurse", secret)
        for key in ("consulgw/defaults", "consulgw/services/users"):
            assert (await consul(agent, "PUT", f"/v1/kv/{key}", data=b"{}"))[0] == 200
        status, headers, body = await _read(agent, "/v1/kv/consulgw/?recurse", secret)
        blocking, blocking_headers, _ = await _read(agent, "/v1/kv/consulgw/?recurse&index=1&wait=1s", secret)
        single, _, single_body = await _read(agent, "/v1/kv/consulgw/defaults", secret)
    if list_policy:
        expected = f"Permission denied: token with AccessorID '{accessor}' lacks permission 'key:list' on \"consulgw/\""
        assert (empty_status, status, body) == (403, 403, expected)
        assert blocking == 403
    else:
        assert (empty_status, FILTERED in empty_headers) == (404, False)  # nothing there: nothing was filtered
        assert (status, headers.get(FILTERED), body) == (404, "true", "")
        assert (blocking, blocking_headers.get(FILTERED)) == (404, "true")
        assert int(headers["X-Consul-Index"]) > 1  # the index still moves, so a watch can block on it
    assert single == 403
    assert single_body == (
        f"Permission denied: token with AccessorID '{accessor}' lacks permission 'key:read' on \"consulgw/defaults\""
    )
