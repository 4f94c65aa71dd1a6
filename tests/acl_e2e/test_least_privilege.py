"""Least privilege, proved: a real ``consulgw run`` process whose Consul token holds only
deploy/consul/gateway-policy.hcl routes and applies KV policies; operators with operator-policy.hcl write them with
the CLI, and without it the CLI fails with one line; a gateway without a token (default policy deny) routes nothing,
one with a token Consul does not know never becomes ready. The agent is the dev agent with ACLs enabled."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from tests.acl_e2e.conftest import AclStack, consul, poll
from tests.support.processes import clean_env, gateway_process, run_consulgw

pytestmark = pytest.mark.slow
OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


async def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    """Status, headers and body; status 0 while the gateway is not listening yet."""
    try:
        async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
            return resp.status, dict(resp.headers), await resp.text()
    except aiohttp.ClientConnectionError:
        return 0, {}, ""


async def test_gateway_with_only_the_gateway_policy_routes_and_applies_policies(
    acl_stack: AclStack, tmp_path: Path
) -> None:
    gateway_token = acl_stack.tokens["consulgw-gateway"]
    operator_token = acl_stack.tokens["consulgw-operator"]
    log = tmp_path / "gateway.log"
    async with gateway_process(acl_stack.url, "--token", gateway_token, log=log) as gw:

        async def routed() -> bool:
            status, _, body = await _get(gw.url + "/users/1")
            return status == 200 and json.loads(body)["upstream"] == "users"

        await poll(routed, "GET /users routed with the gateway-policy token")

        policy = tmp_path / "users.json"
        policy.write_text(json.dumps({"headers": {"response": {"set": {"X-Least-Privilege": "proved"}}}}))
        put = await run_consulgw(
            "policy",
            "put",
            "users",
            str(policy),
            "--consul",
            acl_stack.url,
            env=clean_env(CONSUL_HTTP_TOKEN=operator_token),
        )
        assert put.code == 0, put.err
        assert put.out.startswith("ok: wrote consulgw/services/users")

        async def policy_applied() -> bool:
            status, headers, _ = await _get(gw.url + "/users/1")
            return status == 200 and headers.get("X-Least-Privilege") == "proved"

        await poll(policy_applied, "the KV policy applied by the gateway")

        key = "ak_least_privilege_key_0123456789abcdef"
        added = await run_consulgw(
            "consumer", "add", "alice", "--api-key", key, "--consul", acl_stack.url, "--token", operator_token
        )
        assert added.code == 0, added.err
        policy.write_text(json.dumps({"auth": {"type": "api_key", "header": "X-API-Key"}}))
        put = await run_consulgw(
            "policy", "put", "users", str(policy), "--consul", acl_stack.url, "--token", operator_token
        )
        assert put.code == 0, put.err

        async def consumers_read() -> bool:
            anonymous, _, _ = await _get(gw.url + "/users/1")
            keyed, _, _ = await _get(gw.url + "/users/1", {"X-API-Key": key})
            return anonymous == 401 and keyed == 200

        await poll(consumers_read, "the gateway reading consulgw/consumers/ with its token")
        status, _, routes = await _get(gw.admin_url + "/-/routes")
        assert status == 200
        assert json.loads(routes)["consul"]["errors_total"] == 0
    text = log.read_text(errors="replace")
    assert "consul_watch_failed" not in text
    assert gateway_token not in text


async def test_gateway_token_can_neither_write_nor_register(acl_stack: AclStack) -> None:
    gateway_token = acl_stack.tokens["consulgw-gateway"]
    status, body = await consul(acl_stack.agent, "PUT", "/v1/kv/consulgw/services/users", gateway_token, data=b"{}")
    assert status == 403
    assert "lacks permission 'key:write' on \"consulgw/services/users\"" in body
    status, body = await consul(acl_stack.agent, "GET", "/v1/kv/vault/anything", gateway_token)
    assert status == 403
    service = {"Name": "consulgw", "Port": 8080}
    status, body = await consul(acl_stack.agent, "PUT", "/v1/agent/service/register", gateway_token, json=service)
    assert (status, "lacks permission 'service:write' on \"consulgw\"" in body) == (403, True)
    registering = acl_stack.tokens["consulgw-registration"]
    status, _ = await consul(acl_stack.agent, "PUT", "/v1/agent/service/register", registering, json=service)
    assert status == 200
    impostor = {"Name": "users", "Port": 1}
    status, body = await consul(acl_stack.agent, "PUT", "/v1/agent/service/register", registering, json=impostor)
    assert status == 403
    assert "lacks permission 'service:write' on \"users\"" in body


async def test_gateway_without_a_token_routes_nothing_under_default_deny(acl_stack: AclStack, tmp_path: Path) -> None:
    """The anonymous token reads nothing: Consul answers empty lists (and does not say it filtered them), so the
    gateway is ready with an empty route table and answers 404 no_route."""
    log = tmp_path / "gateway.log"
    async with gateway_process(acl_stack.url, log=log) as gw:

        async def ready() -> bool:
            status, _, _ = await _get(gw.admin_url + "/-/ready")
            return status == 200

        await poll(ready, "an anonymous gateway to be ready")
        status, _, routes = await _get(gw.admin_url + "/-/routes")
        state = json.loads(routes)
        assert (status, state["routes"], state["services"]) == (200, [], {})
        status, _, body = await _get(gw.url + "/users/1")
        assert status == 404
        assert json.loads(body)["error"] == "no_route"
    assert "consul_watch_failed" not in log.read_text(errors="replace")


async def test_gateway_with_a_token_consul_does_not_know_is_never_ready(acl_stack: AclStack, tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    async with gateway_process(acl_stack.url, "--token", "f00dfeed-0000-4000-8000-000000000000", log=log) as gw:

        async def failing() -> bool:
            return "ACL not found" in log.read_text(errors="replace")

        await poll(failing, "the gateway to log Consul's refusal")

        async def answering() -> bool:  # the watcher starts before the admin listener: its refusal may come first
            status, _, _ = await _get(gw.admin_url + "/-/ready")
            return status != 0

        await poll(answering, "the admin listener")
        status, _, body = await _get(gw.admin_url + "/-/ready")
        assert status == 503
        assert json.loads(body)["ready"] is False
    text = log.read_text(errors="replace")
    assert "consul_watch_failed" in text
    assert "f00dfeed-0000-4000-8000-000000000000" not in text


@pytest.mark.parametrize(
    ("who", "line"),
    [
        pytest.param(
            "consulgw-gateway",
            "consulgw policy put: error: Consul at {url} refused the request: the ACL token lacks key:write on "
            "consulgw/services/users (the consulgw-operator policy grants it: deploy/consul/operator-policy.hcl)",
            id="gateway-token",
        ),
        pytest.param(
            "",
            "consulgw policy put: error: Consul at {url} refused the request: no ACL token was given (--token / "
            "CONSUL_HTTP_TOKEN) and the anonymous token lacks key:read on consulgw/defaults",
            id="no-token",
        ),
        pytest.param(
            "unknown",
            "consulgw policy put: error: Consul at {url} does not know this ACL token (ACL not found); check --token "
            "/ CONSUL_HTTP_TOKEN",
            id="unknown-token",
        ),
    ],
)
async def test_policy_put_without_the_operator_policy_fails_with_one_line(
    acl_stack: AclStack, tmp_path: Path, who: str, line: str
) -> None:
    policy = tmp_path / "users.json"
    policy.write_text('{"timeouts": {"read": "5s"}}')
    token = {"": [], "unknown": ["--token", "7e57ab1e-0000-4000-8000-000000000000"]}.get(
        who, ["--token", acl_stack.tokens.get(who, "")]
    )
    result = await run_consulgw("policy", "put", "users", str(policy), "--consul", acl_stack.url, *token)
    assert result.code == 1
    assert result.err.splitlines() == [line.format(url=acl_stack.url)]
    assert result.out == ""
    assert line.format(url="http://127.0.0.1:8500") in OPERATIONS.read_text()  # docs/operations.md shows this line
    status, _ = await consul(acl_stack.agent, "GET", "/v1/kv/consulgw/services/users")
    assert status == 404  # nothing was written


async def test_consumer_add_with_and_without_the_operator_policy(acl_stack: AclStack) -> None:
    key = "ak_operator_test_key_abcdefghijklmnopqrstuvwxyz"
    denied = await run_consulgw(
        "consumer", "add", "bob", "--api-key", key, "--consul", acl_stack.url,
        "--token", acl_stack.tokens["consulgw-gateway"],
    )  # fmt: skip
    assert denied.code == 1
    assert denied.err.splitlines() == [
        f"consulgw consumer add: error: Consul at {acl_stack.url} refused the request: the ACL token lacks "
        "key:write on consulgw/consumers/bob (the consulgw-operator policy grants it: deploy/consul/operator-policy.hcl)"
    ]
    allowed = await run_consulgw(
        "consumer", "add", "bob", "--api-key", key, "--consul", acl_stack.url,
        "--token", acl_stack.tokens["consulgw-operator"],
    )  # fmt: skip
    assert allowed.code == 0, allowed.err
    assert allowed.out.startswith("ok: created consulgw/consumers/bob")
    got = await run_consulgw(
        "policy", "get", "users", "--consul", acl_stack.url, "--token", acl_stack.tokens["consulgw-operator"]
    )
    assert got.code == 1  # no policy stored for users: a plain "not found", not an ACL error
    assert "no policy stored at consulgw/services/users" in got.err
