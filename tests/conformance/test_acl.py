"""ACLs (default policy deny): bootstrap, policies, tokens, token sources, and enforcement endpoint by endpoint.

Expectations come from Consul's source (agent/http.go token parsing and error mapping, agent/acl_endpoint.go,
agent/consul/acl_endpoint.go, acl/policy*.go, acl/errors.go, agent/structs/aclfilter, the KVS/Catalog/Health/
Session/Txn endpoints and agent/acl.go vetting) and the ACL tables of the HTTP API docs. Denials are 403 with
``Permission denied: token with AccessorID '<id>' lacks permission '<resource>:<access>' on "<name>"``; list
endpoints filter instead and say so with ``X-Consul-Results-Filtered-By-ACLs: true`` when a token was given.

Every test creates its own policies, tokens, services and keys with unique names and removes them afterwards, so
the suite also runs against a long-lived real Consul with ACLs (``CONSUL_HTTP_ADDR`` + ``CONSUL_HTTP_TOKEN``).
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from tests.conformance.conftest import AclTarget
from tests.conformance.support import Client, uid

pytestmark = pytest.mark.asyncio

FILTERED = "X-Consul-Results-Filtered-By-ACLs"
ANONYMOUS = "00000000-0000-0000-0000-000000000002"


def denied(accessor: str, permission: str, name: str | None = None) -> str:
    """Consul's PermissionDeniedError text (acl/errors.go)."""
    who = "anonymous token" if accessor == ANONYMOUS else f"token with AccessorID '{accessor}'"
    text = f"Permission denied: {who} lacks permission '{permission}'"
    if name:
        text += f' on "{name}"'
    if accessor == ANONYMOUS:
        text += ". The anonymous token is used implicitly when a request does not specify a token."
    return text


async def make_policy(api: Client, rules: str, *, name: str | None = None) -> dict[str, Any]:
    reply = await api.put("/v1/acl/policy", json_body={"Name": name or uid("p"), "Rules": rules})
    assert reply.status == 200, reply
    policy = reply.json()
    api.cleanups.append(lambda: api.delete(f"/v1/acl/policy/{policy['ID']}"))
    return dict(policy)


async def make_token(api: Client, rules: str | None = None, *, policies: list[dict[str, str]] | None = None) -> Token:
    links = list(policies or [])
    if rules is not None:
        links.append({"Name": (await make_policy(api, rules))["Name"]})
    reply = await api.put("/v1/acl/token", json_body={"Description": uid("t"), "Policies": links})
    assert reply.status == 200, reply
    token = reply.json()
    api.cleanups.append(lambda: api.delete(f"/v1/acl/token/{token['AccessorID']}"))
    return Token(token["AccessorID"], token["SecretID"], api.with_token(token["SecretID"]))


class Token:
    def __init__(self, accessor: str, secret: str, client: Client) -> None:
        self.accessor = accessor
        self.secret = secret
        self.api = client


async def register(api: Client, name: str, **extra: Any) -> None:
    await api.register_service({"Name": name, "Port": 8080, **extra})


async def node_name(api: Client) -> str:
    return await api.node_name()


# ---------------------------------------------------------------------------------------------- the ACL system


async def test_default_policy_header_and_bootstrap_only_once(acl_api: Client, acl_consul: AclTarget) -> None:
    """The initial management token (or an earlier bootstrap) used up the one-time bootstrap (leader.go)."""
    reply = await acl_api.put("/v1/acl/bootstrap")
    assert reply.status == 403, reply
    assert re.fullmatch(r"Permission denied: ACL bootstrap no longer allowed \(reset index: \d+\)", reply.text)
    assert reply.headers["X-Consul-Default-ACL-Policy"] == acl_consul.default_policy


async def test_management_token_reads_itself(acl_api: Client, acl_consul: AclTarget) -> None:
    reply = await acl_api.get("/v1/acl/token/self")
    assert reply.status == 200, reply
    me = reply.json()
    assert me["SecretID"] == acl_consul.management
    assert {"ID": "00000000-0000-0000-0000-000000000001", "Name": "global-management"} in me["Policies"]
    assert set(me) >= {"AccessorID", "SecretID", "Description", "Local", "CreateTime", "Hash", "CreateIndex"}


async def test_unknown_token_is_acl_not_found_everywhere(acl_api: Client) -> None:
    stranger = acl_api.with_token(uid("nobody"))
    for path in ("/v1/catalog/services", "/v1/kv/anything", "/v1/agent/self", "/v1/health/service/consul"):
        reply = await stranger.get(path)
        assert (reply.status, reply.text) == (403, "ACL not found"), path


async def test_token_self_of_an_unknown_secret_is_404(acl_api: Client) -> None:
    reply = await acl_api.with_token(uid("nobody")).get("/v1/acl/token/self")
    assert (reply.status, reply.text) == (404, "Supplied token does not exist")


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        pytest.param("query", 200, id="query-param"),
        pytest.param("x-consul-token", 200, id="x-consul-token"),
        pytest.param("bearer", 200, id="authorization-bearer"),
        pytest.param("bearer-lowercase", 200, id="bearer-scheme-is-case-insensitive"),
        pytest.param("basic", 403, id="basic-scheme-ignored"),
    ],
)
async def test_token_sources(acl_api: Client, acl_kv_prefix: str, where: str, expected: int) -> None:
    key = f"{acl_kv_prefix}sources"
    assert (await acl_api.kv_put(key, b"x")).json() is True
    reader = await make_token(acl_api, f'key "{key}" {{ policy = "read" }}')
    raw = acl_api.with_token("")  # no automatic header: this test sets the token itself
    params: list[tuple[str, str | None]] = []
    headers: dict[str, str] = {}
    if where == "query":
        params = [("token", reader.secret)]
    elif where == "x-consul-token":
        headers = {"X-Consul-Token": reader.secret}
    elif where == "bearer":
        headers = {"Authorization": f"Bearer {reader.secret}"}
    elif where == "bearer-lowercase":
        headers = {"Authorization": f"bearer {reader.secret}"}
    else:
        headers = {"Authorization": f"Basic {reader.secret}"}
    reply = await raw.get(f"/v1/kv/{key}", params, headers=headers)
    assert reply.status == expected, reply


async def test_query_token_wins_over_header_which_wins_over_bearer(acl_api: Client, acl_kv_prefix: str) -> None:
    key = f"{acl_kv_prefix}precedence"
    assert (await acl_api.kv_put(key, b"x")).json() is True
    reader = await make_token(acl_api, f'key "{key}" {{ policy = "read" }}')
    raw = acl_api.with_token("")
    bogus = uid("bogus")
    ok = await raw.get(f"/v1/kv/{key}", [("token", reader.secret)], headers={"X-Consul-Token": bogus})
    assert ok.status == 200, ok
    refused = await raw.get(f"/v1/kv/{key}", [("token", bogus)], headers={"X-Consul-Token": reader.secret})
    assert (refused.status, refused.text) == (403, "ACL not found")
    header_first = await raw.get(
        f"/v1/kv/{key}", headers={"X-Consul-Token": reader.secret, "Authorization": f"Bearer {bogus}"}
    )
    assert header_first.status == 200, header_first


async def test_anonymous_requests_under_default_deny(
    acl_api: Client, acl_consul: AclTarget, acl_kv_prefix: str
) -> None:
    if acl_consul.default_policy != "deny":
        pytest.skip("needs default_policy deny")
    name = uid("svc")
    await register(acl_api, name)
    key = f"{acl_kv_prefix}anon"
    assert (await acl_api.kv_put(key, b"x")).json() is True
    anonymous = acl_api.with_token("")
    services = await anonymous.get("/v1/catalog/services")
    assert services.status == 200
    assert name not in services.json()
    assert FILTERED not in services.headers  # Consul does not tell an anonymous requester what it filtered
    read = await anonymous.get(f"/v1/kv/{key}")
    assert (read.status, read.text) == (403, denied(ANONYMOUS, "key:read", key))
    listing = await anonymous.get(f"/v1/kv/{acl_kv_prefix}", [("recurse", None)])
    assert listing.status == 404
    assert FILTERED not in listing.headers


# ---------------------------------------------------------------------------------------------------- policies


async def test_policy_crud_by_id_and_name(acl_api: Client) -> None:
    rules = 'key_prefix "app/" {\n  policy = "read"\n}\n'
    created = await make_policy(acl_api, rules)
    assert set(created) >= {"ID", "Name", "Description", "Rules", "Hash", "CreateIndex", "ModifyIndex"}
    assert created["Rules"] == rules
    by_id = await acl_api.get(f"/v1/acl/policy/{created['ID']}")
    assert by_id.status == 200
    assert by_id.json()["Name"] == created["Name"]
    assert int(by_id.headers["X-Consul-Index"]) >= 1
    by_name = await acl_api.get(f"/v1/acl/policy/name/{created['Name']}")
    assert by_name.json()["ID"] == created["ID"]
    listed = await acl_api.get("/v1/acl/policies")
    stub = next(p for p in listed.json() if p["ID"] == created["ID"])
    assert "Rules" not in stub
    assert set(stub) >= {"ID", "Name", "Description", "Datacenters", "Hash", "CreateIndex", "ModifyIndex"}
    names = {p["Name"] for p in listed.json()}
    assert {"global-management", "builtin/global-read-only"} <= names
    updated = await acl_api.put(
        f"/v1/acl/policy/{created['ID']}", json_body={"Name": created["Name"], "Rules": 'key "x" { policy = "write" }'}
    )
    assert updated.status == 200, updated
    assert updated.json()["ModifyIndex"] > created["ModifyIndex"]
    assert updated.json()["CreateIndex"] == created["CreateIndex"]
    gone = await acl_api.delete(f"/v1/acl/policy/{created['ID']}")
    assert (gone.status, gone.json()) == (200, True)
    missing = await acl_api.get(f"/v1/acl/policy/{created['ID']}")
    assert (missing.status, missing.text) == (404, "Requested policy does not exist: ACL not found")


async def test_policy_rules_in_json_are_accepted(acl_api: Client) -> None:
    policy = await make_policy(acl_api, json.dumps({"key_prefix": {"app/": {"policy": "read"}}, "operator": "read"}))
    assert policy["Rules"].startswith("{")


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        pytest.param(
            'key "x" { policy = "nope" }',
            'Invalid key policy: &acl.KeyRule{Prefix:"x", Policy:"nope", EnterpriseRule:acl.EnterpriseRule{}}',
            id="key-level",
        ),
        pytest.param(
            'service "web" { policy = "list" }',
            'Invalid service policy: &acl.ServiceRule{Name:"web", Policy:"list", Intentions:"", '
            "EnterpriseRule:acl.EnterpriseRule{}}",
            id="list-only-for-keys",
        ),
        pytest.param(
            'agent_prefix "" { policy = "maybe" }',
            'Invalid agent_prefix policy: &acl.AgentRule{Node:"", Policy:"maybe"}',
            id="agent-prefix",
        ),
        pytest.param('operator = "admin"', 'Invalid operator policy: "admin"', id="operator"),
        pytest.param('acl = "list"', 'Invalid acl policy: "list"', id="acl-list"),
    ],
)
async def test_invalid_rules_are_500_with_consuls_text(acl_api: Client, rules: str, message: str) -> None:
    reply = await acl_api.put("/v1/acl/policy", json_body={"Name": uid("bad"), "Rules": rules})
    assert (reply.status, reply.text) == (500, message)


async def test_rules_syntax_error_names_the_position(acl_api: Client) -> None:
    reply = await acl_api.put("/v1/acl/policy", json_body={"Name": uid("bad"), "Rules": 'key "x" {\n  policy = \n'})
    assert reply.status == 500, reply
    assert reply.text.startswith("Failed to parse ACL rules: At ")


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        pytest.param({"Rules": ""}, 500, "Invalid Policy: no Name is set", id="no-name"),
        pytest.param(
            {"Name": "has space"},
            500,
            "Invalid Policy: invalid Name. Only alphanumeric characters, '-' and '_' are allowed",
            id="bad-name",
        ),
        pytest.param(
            {"Name": "x", "ID": "00000000-0000-0000-0000-0000000000aa"},
            400,
            "Cannot specify the ID when creating a new policy",
            id="id-on-create",
        ),
    ],
)
async def test_policy_create_validation(acl_api: Client, body: dict[str, Any], status: int, message: str) -> None:
    reply = await acl_api.put("/v1/acl/policy", json_body=body)
    assert (reply.status, reply.text) == (status, message)


async def test_policy_name_must_be_unique(acl_api: Client) -> None:
    first = await make_policy(acl_api, "")
    reply = await acl_api.put("/v1/acl/policy", json_body={"Name": first["Name"]})
    assert (reply.status, reply.text) == (500, f'Invalid Policy: A Policy with Name "{first["Name"]}" already exists')


async def test_global_management_cannot_be_deleted(acl_api: Client) -> None:
    reply = await acl_api.delete("/v1/acl/policy/00000000-0000-0000-0000-000000000001")
    assert (reply.status, reply.text) == (
        500,
        "Delete operation not permitted on the builtin global-management policy",
    )


async def test_policy_endpoints_need_acl_read_and_write(acl_api: Client) -> None:
    nobody = await make_token(acl_api, 'key "x" { policy = "read" }')
    reader = await make_token(acl_api, 'acl = "read"')
    listed = await nobody.api.get("/v1/acl/policies")
    assert (listed.status, listed.text) == (403, denied(nobody.accessor, "acl:read"))
    assert (await reader.api.get("/v1/acl/policies")).status == 200
    write = await reader.api.put("/v1/acl/policy", json_body={"Name": uid("p")})
    assert (write.status, write.text) == (403, denied(reader.accessor, "acl:write"))


# ------------------------------------------------------------------------------------------------------ tokens


async def test_token_create_read_list_delete(acl_api: Client) -> None:
    policy = await make_policy(acl_api, 'key "x" { policy = "read" }')
    by_id = await make_token(acl_api, policies=[{"ID": policy["ID"]}])
    reply = await acl_api.get(f"/v1/acl/token/{by_id.accessor}")
    assert reply.status == 200
    token = reply.json()
    assert token["Policies"] == [{"ID": policy["ID"], "Name": policy["Name"]}]
    assert token["SecretID"] == by_id.secret
    listed = await acl_api.get("/v1/acl/tokens")
    assert by_id.accessor in {t["AccessorID"] for t in listed.json()}
    assert ANONYMOUS in {t["AccessorID"] for t in listed.json()}
    own = await by_id.api.get("/v1/acl/token/self")
    assert own.json()["AccessorID"] == by_id.accessor
    gone = await acl_api.delete(f"/v1/acl/token/{by_id.accessor}")
    assert (gone.status, gone.json()) == (200, True)
    missing = await acl_api.get(f"/v1/acl/token/{by_id.accessor}")
    assert (missing.status, missing.text) == (404, "Requested token does not exist: ACL not found")
    refused = await by_id.api.get("/v1/kv/x")
    assert (refused.status, refused.text) == (403, "ACL not found")


async def test_token_with_unknown_policy_is_refused(acl_api: Client) -> None:
    name = uid("missing")
    reply = await acl_api.put("/v1/acl/token", json_body={"Policies": [{"Name": name}]})
    assert (reply.status, reply.text) == (500, f'No such ACL policy with name "{name}"')


async def test_acl_read_sees_tokens_with_hidden_secrets(acl_api: Client) -> None:
    target = await make_token(acl_api, 'key "x" { policy = "read" }')
    reader = await make_token(acl_api, 'acl = "read"')
    reply = await reader.api.get(f"/v1/acl/token/{target.accessor}")
    assert reply.status == 200
    assert reply.json()["SecretID"] == "<hidden>"
    listed = await reader.api.get("/v1/acl/tokens")
    assert {t["SecretID"] for t in listed.json()} == {"<hidden>"}


async def test_special_tokens_cannot_be_deleted(acl_api: Client) -> None:
    anonymous = await acl_api.delete(f"/v1/acl/token/{ANONYMOUS}")
    assert (anonymous.status, anonymous.text) == (500, "Delete operation not permitted on the anonymous token")
    admin = await make_token(acl_api, 'acl = "write"')
    own = await admin.api.delete(f"/v1/acl/token/{admin.accessor}")
    assert (own.status, own.text) == (500, "Deletion of the request's authorization token is not permitted")


async def test_token_update_keeps_secret_and_replaces_policies(acl_api: Client) -> None:
    token = await make_token(acl_api, 'key "a" { policy = "read" }')
    other = await make_policy(acl_api, 'key "b" { policy = "read" }')
    reply = await acl_api.put(
        f"/v1/acl/token/{token.accessor}", json_body={"Description": "changed", "Policies": [{"ID": other["ID"]}]}
    )
    assert reply.status == 200, reply
    assert reply.json()["SecretID"] == token.secret
    assert reply.json()["Policies"] == [{"ID": other["ID"], "Name": other["Name"]}]
    mismatch = await acl_api.put(f"/v1/acl/token/{token.accessor}", json_body={"AccessorID": ANONYMOUS})
    assert (mismatch.status, mismatch.text) == (400, "Token Accessor ID in URL and payload do not match")


# ---------------------------------------------------------------------------------- enforcement: KV and rules


async def test_kv_read_write_and_longest_prefix(acl_api: Client, acl_kv_prefix: str) -> None:
    p = acl_kv_prefix
    for key in ("a", "app/one", "app/ok", "app/secret/x"):
        assert (await acl_api.kv_put(f"{p}{key}", b"v")).json() is True
    rules = (
        f'key_prefix "{p}" {{ policy = "read" }}\n'
        f'key_prefix "{p}app/" {{ policy = "write" }}\n'
        f'key_prefix "{p}app/secret/" {{ policy = "deny" }}\n'
        f'key "{p}app/ok" {{ policy = "read" }}\n'
    )
    tok = await make_token(acl_api, rules)
    assert (await tok.api.get(f"/v1/kv/{p}a")).status == 200
    assert (await tok.api.get(f"/v1/kv/{p}app/one")).status == 200
    secret = await tok.api.get(f"/v1/kv/{p}app/secret/x")
    assert (secret.status, secret.text) == (403, denied(tok.accessor, "key:read", f"{p}app/secret/x"))
    assert (await tok.api.kv_put(f"{p}app/one", b"w")).json() is True
    exact = await tok.api.kv_put(f"{p}app/ok", b"w")  # the exact rule (read) beats the longer-ago prefix (write)
    assert (exact.status, exact.text) == (403, denied(tok.accessor, "key:write", f"{p}app/ok"))
    outside = await tok.api.kv_put(f"{p}a", b"w")
    assert (outside.status, outside.text) == (403, denied(tok.accessor, "key:write", f"{p}a"))


async def test_missing_key_without_read_is_403_not_404(acl_api: Client, acl_kv_prefix: str) -> None:
    tok = await make_token(acl_api, f'key_prefix "{acl_kv_prefix}open/" {{ policy = "read" }}')
    assert (await tok.api.get(f"/v1/kv/{acl_kv_prefix}open/none")).status == 404
    closed = await tok.api.get(f"/v1/kv/{acl_kv_prefix}closed")
    assert (closed.status, closed.text) == (403, denied(tok.accessor, "key:read", f"{acl_kv_prefix}closed"))


async def test_recurse_and_keys_filter_unreadable_keys(acl_api: Client, acl_kv_prefix: str) -> None:
    p = acl_kv_prefix
    for key in ("pub/a", "pub/b", "priv/c"):
        assert (await acl_api.kv_put(f"{p}{key}", b"v")).json() is True
    tok = await make_token(acl_api, f'key_prefix "{p}pub/" {{ policy = "read" }}')
    listing = await tok.api.get(f"/v1/kv/{p}", [("recurse", None)])
    assert listing.status == 200
    assert [e["Key"] for e in listing.json()] == [f"{p}pub/a", f"{p}pub/b"]
    assert listing.headers[FILTERED] == "true"
    keys = await tok.api.get(f"/v1/kv/{p}", [("keys", None), ("separator", "/")])
    assert keys.json() == [f"{p}pub/"]
    assert keys.headers[FILTERED] == "true"
    only_private = await tok.api.get(f"/v1/kv/{p}priv/", [("recurse", None)])
    assert only_private.status == 404  # nothing readable is left: Consul's "not found", saying why
    assert only_private.headers[FILTERED] == "true"
    unfiltered = await tok.api.get(f"/v1/kv/{p}pub/", [("recurse", None)])
    assert FILTERED not in unfiltered.headers


async def test_list_policy_grants_reading_keys(acl_api: Client, acl_kv_prefix: str) -> None:
    assert (await acl_api.kv_put(f"{acl_kv_prefix}l/a", b"v")).json() is True
    tok = await make_token(acl_api, f'key_prefix "{acl_kv_prefix}l/" {{ policy = "list" }}')
    assert (await tok.api.get(f"/v1/kv/{acl_kv_prefix}l/", [("recurse", None)])).status == 200
    assert (await tok.api.get(f"/v1/kv/{acl_kv_prefix}l/a")).status == 200
    write = await tok.api.kv_put(f"{acl_kv_prefix}l/a", b"w")
    assert write.status == 403


async def test_recursive_delete_needs_write_on_everything_under_the_prefix(acl_api: Client, acl_kv_prefix: str) -> None:
    p = acl_kv_prefix
    assert (await acl_api.kv_put(f"{p}t/a", b"v")).json() is True
    tok = await make_token(acl_api, f'key_prefix "{p}t/" {{ policy = "write" }}\nkey "{p}t/keep" {{ policy = "read" }}')
    reply = await tok.api.delete(f"/v1/kv/{p}t/", [("recurse", None)])
    assert (reply.status, reply.text) == (403, denied(tok.accessor, "key:write", f"{p}t/"))
    single = await tok.api.delete(f"/v1/kv/{p}t/a")
    assert (single.status, single.json()) == (200, True)


async def test_policies_of_a_token_merge_strongest_wins(acl_api: Client, acl_kv_prefix: str) -> None:
    p = acl_kv_prefix
    assert (await acl_api.kv_put(f"{p}m/a", b"v")).json() is True
    reader = await make_policy(acl_api, f'key_prefix "{p}m/" {{ policy = "read" }}')
    writer = await make_policy(acl_api, f'key_prefix "{p}m/" {{ policy = "write" }}')
    both = await make_token(acl_api, policies=[{"ID": reader["ID"]}, {"ID": writer["ID"]}])
    assert (await both.api.kv_put(f"{p}m/a", b"w")).json() is True
    denier = await make_policy(acl_api, f'key_prefix "{p}m/" {{ policy = "deny" }}')
    vetoed = await make_token(acl_api, policies=[{"ID": writer["ID"]}, {"ID": denier["ID"]}])
    assert (await vetoed.api.get(f"/v1/kv/{p}m/a")).status == 403


async def test_blocking_kv_read_without_permission_answers_at_once(acl_api: Client, acl_kv_prefix: str) -> None:
    key = f"{acl_kv_prefix}blocked"
    put = await acl_api.kv_put(key, b"v")
    assert put.json() is True
    index = (await acl_api.get(f"/v1/kv/{key}")).index
    tok = await make_token(acl_api, f'key "{acl_kv_prefix}other" {{ policy = "read" }}')
    reply = await tok.api.get(f"/v1/kv/{key}", [("index", str(index)), ("wait", "5s")])
    assert reply.status == 403
    assert reply.elapsed < 3


async def test_blocking_query_under_acls_wakes_for_a_readable_change(acl_api: Client) -> None:
    prefix = uid("web")
    tok = await make_token(
        acl_api, f'service_prefix "{prefix}" {{ policy = "read" }}\nnode_prefix "" {{ policy = "read" }}'
    )
    first = await tok.api.get("/v1/catalog/services")
    assert first.status == 200
    waiter = asyncio.create_task(tok.api.get("/v1/catalog/services", [("index", str(first.index)), ("wait", "10s")]))
    await asyncio.sleep(0.2)
    await register(acl_api, f"{prefix}-a")
    reply = await asyncio.wait_for(waiter, 15)
    assert reply.status == 200
    assert reply.index > first.index
    assert f"{prefix}-a" in reply.json()


# ------------------------------------------------------------------------------------- enforcement: catalog


async def test_catalog_lists_are_filtered(acl_api: Client) -> None:
    prefix = uid("cat")
    await register(acl_api, f"{prefix}-visible")
    await register(acl_api, f"{prefix}-hidden")
    tok = await make_token(
        acl_api, f'service "{prefix}-visible" {{ policy = "read" }}\nnode_prefix "" {{ policy = "read" }}'
    )
    services = await tok.api.get("/v1/catalog/services")
    assert f"{prefix}-visible" in services.json()
    assert f"{prefix}-hidden" not in services.json()
    assert services.headers[FILTERED] == "true"
    visible = await tok.api.get(f"/v1/catalog/service/{prefix}-visible")
    assert len(visible.json()) == 1
    assert FILTERED not in visible.headers
    hidden = await tok.api.get(f"/v1/catalog/service/{prefix}-hidden")
    assert hidden.json() == []
    assert hidden.headers[FILTERED] == "true"


async def test_instances_need_node_read_too(acl_api: Client) -> None:
    name = uid("nodeless")
    await register(acl_api, name)
    tok = await make_token(acl_api, f'service "{name}" {{ policy = "read" }}')
    catalog = await tok.api.get(f"/v1/catalog/service/{name}")
    assert catalog.json() == []
    assert catalog.headers[FILTERED] == "true"
    health = await tok.api.get(f"/v1/health/service/{name}")
    assert health.json() == []
    assert health.headers[FILTERED] == "true"
    nodes = await tok.api.get("/v1/catalog/nodes")
    assert nodes.json() == []


async def test_catalog_register_needs_node_and_service_write(acl_api: Client) -> None:
    node, service = uid("n"), uid("s")
    body = {"Node": node, "Address": "192.0.2.10", "Service": {"Service": service, "Port": 80}}
    acl_api.cleanups.append(lambda: acl_api.put("/v1/catalog/deregister", json_body={"Node": node}))
    service_only = await make_token(acl_api, f'service "{service}" {{ policy = "write" }}')
    reply = await service_only.api.put("/v1/catalog/register", json_body=body)
    assert (reply.status, reply.text) == (403, denied(service_only.accessor, "node:write", node))
    node_only = await make_token(acl_api, f'node "{node}" {{ policy = "write" }}')
    reply = await node_only.api.put("/v1/catalog/register", json_body=body)
    assert (reply.status, reply.text) == (403, denied(node_only.accessor, "service:write", service))
    both = await make_token(
        acl_api, f'node "{node}" {{ policy = "write" }}\nservice "{service}" {{ policy = "write" }}'
    )
    assert (await both.api.put("/v1/catalog/register", json_body=body)).json() is True
    deregister = await service_only.api.put("/v1/catalog/deregister", json_body={"Node": node})
    assert (deregister.status, deregister.text) == (403, denied(service_only.accessor, "node:write", node))


async def test_gateway_services_need_read_on_the_gateway(acl_api: Client) -> None:
    gateway = uid("gw")
    tok = await make_token(acl_api, 'service "somebody-else" { policy = "read" }')
    reply = await tok.api.get(f"/v1/catalog/gateway-services/{gateway}")
    assert (reply.status, reply.text) == (403, denied(tok.accessor, "service:read", gateway))


# ---------------------------------------------------------------------------------------- enforcement: agent


async def test_agent_service_endpoints(acl_api: Client) -> None:
    mine, theirs = uid("mine"), uid("theirs")
    await register(acl_api, theirs)
    tok = await make_token(acl_api, f'service "{mine}" {{ policy = "write" }}')
    denied_register = await tok.api.put("/v1/agent/service/register", json_body={"Name": theirs, "Port": 1})
    assert (denied_register.status, denied_register.text) == (403, denied(tok.accessor, "service:write", theirs))
    await tok.api.register_service({"Name": mine, "Port": 2})
    services = await tok.api.get("/v1/agent/services")
    assert set(services.json()) == {mine}
    assert services.headers[FILTERED] == "true"
    other = await tok.api.get(f"/v1/agent/service/{theirs}")
    assert (other.status, other.text) == (403, denied(tok.accessor, "service:read", theirs))
    deregister = await tok.api.put(f"/v1/agent/service/deregister/{theirs}")
    assert (deregister.status, deregister.text) == (403, denied(tok.accessor, "service:write", theirs))
    unknown = await tok.api.put(f"/v1/agent/service/deregister/{uid('none')}")
    assert unknown.status == 404  # an unknown service is 404 before any permission check
    by_name = await tok.api.get(f"/v1/agent/health/service/name/{theirs}")
    assert (by_name.status, by_name.text) == (403, denied(tok.accessor, "service:read", theirs))


async def test_agent_check_endpoints(acl_api: Client) -> None:
    node = await node_name(acl_api)
    svc = uid("chk")
    await register(acl_api, svc)
    tok = await make_token(acl_api, f'service "{svc}" {{ policy = "write" }}')
    node_check = await tok.api.put("/v1/agent/check/register", json_body={"Name": uid("c"), "TTL": "10s"})
    assert (node_check.status, node_check.text) == (403, denied(tok.accessor, "node:write", node))
    cid = uid("c")
    acl_api.cleanups.append(lambda: acl_api.put(f"/v1/agent/check/deregister/{cid}"))
    svc_check = await tok.api.put(
        "/v1/agent/check/register", json_body={"CheckID": cid, "Name": cid, "TTL": "10s", "ServiceID": svc}
    )
    assert svc_check.status == 200, svc_check
    assert (await tok.api.put(f"/v1/agent/check/pass/{cid}")).status == 200
    checks = await tok.api.get("/v1/agent/checks")
    assert cid in checks.json()
    serf = await tok.api.put("/v1/agent/check/fail/serfHealth")
    assert serf.status in (403, 404)  # serfHealth is no agent check (404) on Consul; never writable here


async def test_agent_self_metrics_monitor_leave_and_maintenance(acl_api: Client) -> None:
    node = await node_name(acl_api)
    tok = await make_token(acl_api, 'key "x" { policy = "read" }')
    for path in ("/v1/agent/self", "/v1/agent/metrics", "/v1/agent/monitor"):
        reply = await tok.api.get(path)
        assert (reply.status, reply.text) == (403, denied(tok.accessor, "agent:read", node)), path
    leave = await tok.api.put("/v1/agent/leave")
    assert (leave.status, leave.text) == (403, denied(tok.accessor, "agent:write", node))
    maintenance = await tok.api.put("/v1/agent/maintenance", [("enable", "true")])
    assert (maintenance.status, maintenance.text) == (403, denied(tok.accessor, "node:write", node))
    reader = await make_token(acl_api, f'agent "{node}" {{ policy = "read" }}')
    assert (await reader.api.get("/v1/agent/self")).status == 200
    assert (await reader.api.get("/v1/agent/metrics")).status == 200


async def test_agent_members_are_filtered_by_node_read(acl_api: Client) -> None:
    tok = await make_token(acl_api, 'key "x" { policy = "read" }')
    reply = await tok.api.get("/v1/agent/members")
    assert reply.status == 200
    assert reply.json() == []
    assert reply.headers[FILTERED] == "true"


# --------------------------------------------------------------------------------- sessions, txn, operator


async def test_sessions_need_session_write_and_are_filtered(acl_api: Client) -> None:
    node = await node_name(acl_api)
    tok = await make_token(acl_api, 'key "x" { policy = "read" }')
    create = await tok.api.put("/v1/session/create", json_body={})
    assert (create.status, create.text) == (403, denied(tok.accessor, "session:write", node))
    session_id = await acl_api.create_session({"Name": uid("s")})
    listed = await tok.api.get("/v1/session/list")
    assert session_id not in {s["ID"] for s in listed.json()}
    assert listed.headers[FILTERED] == "true"
    destroy = await tok.api.put(f"/v1/session/destroy/{session_id}")
    assert (destroy.status, destroy.text) == (403, denied(tok.accessor, "session:write", node))


async def test_txn_reports_denied_operations(acl_api: Client, acl_kv_prefix: str) -> None:
    tok = await make_token(acl_api, f'key_prefix "{acl_kv_prefix}ok/" {{ policy = "write" }}')
    ops = [
        {"KV": {"Verb": "set", "Key": f"{acl_kv_prefix}ok/a", "Value": "eA=="}},
        {"KV": {"Verb": "set", "Key": f"{acl_kv_prefix}no/b", "Value": "eA=="}},
    ]
    reply = await tok.api.put("/v1/txn", json_body=ops)
    assert reply.status == 409, reply
    assert reply.json()["Errors"] == [{"OpIndex": 1, "What": denied(tok.accessor, "key:write", f"{acl_kv_prefix}no/b")}]
    assert (await acl_api.get(f"/v1/kv/{acl_kv_prefix}ok/a")).status == 404  # nothing was applied


async def test_operator_and_event_permissions(acl_api: Client) -> None:
    tok = await make_token(acl_api, 'key "x" { policy = "read" }')
    raft = await tok.api.get("/v1/operator/raft/configuration")
    assert (raft.status, raft.text) == (403, denied(tok.accessor, "operator:read"))
    name = uid("ev")
    fire = await tok.api.put(f"/v1/event/fire/{name}")
    assert (fire.status, fire.text) == (403, denied(tok.accessor, "event:write", name))
    operator = await make_token(acl_api, 'operator = "read"')
    assert (await operator.api.get("/v1/operator/raft/configuration")).status == 200


async def test_status_and_datacenters_need_no_token(acl_api: Client) -> None:
    stranger = acl_api.with_token(uid("nobody"))
    assert (await stranger.get("/v1/status/leader")).status == 200
    assert (await stranger.get("/v1/catalog/datacenters")).status == 200


async def test_agent_token_endpoint_needs_agent_write(acl_api: Client) -> None:
    node = await node_name(acl_api)
    tok = await make_token(acl_api, 'key "x" { policy = "read" }')
    reply = await tok.api.put("/v1/agent/token/default", json_body={"Token": "x"})
    assert (reply.status, reply.text) == (403, denied(tok.accessor, "agent:write", node))
