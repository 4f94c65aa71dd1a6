"""Policy keys of issue 11's identity part: ``auth.type: introspection``, ``discovery`` on JWT, ``hide_credentials``,
``required_scopes`` on API-key and Basic, scopes of consumers. Every key accepted; every refusal names the KV key,
the JSON path and the value (never a secret); a bad update keeps the previous good policy."""

from __future__ import annotations

import json
from typing import Any

import pytest

from consulgw.errors import PolicyError
from consulgw.policy.book import build_policy_book
from consulgw.policy.model import ApiKeyAuth, BasicAuth, IntrospectionAuth, JwtAuth, ServicePolicy
from consulgw.policy.parse import parse_consumer, parse_policy

KEY = "consulgw/services/users"
SECRET = "s3cr3t-client-secret-never-printed"
ENDPOINT = "https://idp.example/oauth2/introspect"
DISCOVERY = "https://idp.example/.well-known/openid-configuration"


def introspection(**extra: Any) -> dict[str, Any]:
    return {
        "auth": {"type": "introspection", "endpoint": ENDPOINT, "client_id": "gw", "client_secret": SECRET, **extra}
    }


def jwt_discovery(**extra: Any) -> dict[str, Any]:
    return {"auth": {"type": "jwt", "algorithms": ["RS256"], "discovery": DISCOVERY, **extra}}


def refusal(doc: Any) -> str:
    with pytest.raises(PolicyError) as info:
        parse_policy(json.dumps(doc).encode(), key=KEY)
    return str(info.value)


VALID = [
    pytest.param(
        introspection(),
        IntrospectionAuth(endpoint=ENDPOINT, client_id="gw", client_secret=SECRET),
        id="introspection-minimal",
    ),
    pytest.param(
        introspection(
            client_auth="post",
            token_type_hint=None,
            timeout="500ms",
            cache_ttl="0s",
            negative_cache_ttl=0,
            cache="redis",
            cache_max_entries=100,
            issuer="https://idp.example/",
            audience=["orders-api", "orders-api"],
            required_scopes=["orders:read"],
            leeway="30s",
            claims_to_headers={"X-User-Email": "email", "X-Tenant": "tenant_id"},
            header="X-Access-Token",
            hide_credentials=True,
        ),
        IntrospectionAuth(
            endpoint=ENDPOINT,
            client_id="gw",
            client_secret=SECRET,
            client_auth="post",
            token_type_hint=None,
            timeout=0.5,
            cache_ttl=0.0,
            negative_cache_ttl=0.0,
            cache="redis",
            cache_max_entries=100,
            issuer="https://idp.example/",
            audience=("orders-api",),
            required_scopes=frozenset({"orders:read"}),
            leeway=30.0,
            claims_to_headers=(("X-User-Email", "email"), ("X-Tenant", "tenant_id")),
            header="X-Access-Token",
            hide_credentials=True,
        ),
        id="introspection-every-key",
    ),
    pytest.param(
        {"auth": {"type": "introspection", "discovery": DISCOVERY, "client_id": "gw", "client_secret": SECRET}},
        IntrospectionAuth(discovery=DISCOVERY, client_id="gw", client_secret=SECRET),
        id="introspection-discovery",
    ),
    pytest.param(
        {
            "auth": {
                "type": "introspection",
                "discovery": "https://idp.example/meta.json",
                "issuer": "https://idp.example",
                "client_id": "gw",
                "client_secret": SECRET,
            }
        },
        IntrospectionAuth(
            discovery="https://idp.example/meta.json",
            issuer="https://idp.example",
            client_id="gw",
            client_secret=SECRET,
        ),
        id="introspection-discovery-any-url-with-issuer",
    ),
    pytest.param(
        jwt_discovery(hide_credentials=True),
        JwtAuth(algorithms=("RS256",), discovery=DISCOVERY, hide_credentials=True),
        id="jwt-discovery",
    ),
    pytest.param(
        jwt_discovery(issuer="https://idp.example/"),
        JwtAuth(algorithms=("RS256",), discovery=DISCOVERY, issuer="https://idp.example/"),
        id="jwt-discovery-issuer-trailing-slash",
    ),
    pytest.param(
        {"auth": {"type": "api_key", "required_scopes": ["orders:read"], "hide_credentials": True}},
        ApiKeyAuth(required_scopes=frozenset({"orders:read"}), hide_credentials=True),
        id="api-key",
    ),
    pytest.param(
        {"auth": {"type": "basic", "required_scopes": ["staff"], "hide_credentials": False}},
        BasicAuth(required_scopes=frozenset({"staff"})),
        id="basic",
    ),
]


@pytest.mark.parametrize(("doc", "expected"), VALID)
def test_valid(doc: dict[str, Any], expected: Any) -> None:
    assert parse_policy(json.dumps(doc), key=KEY) == ServicePolicy(auth=expected)


def test_the_client_secret_is_not_in_the_repr() -> None:
    policy = parse_policy(json.dumps(introspection()), key=KEY)
    assert SECRET not in repr(policy)


REFUSALS = [
    pytest.param({"auth": {"type": "introspection", "endpoint": ENDPOINT,
                 "client_id": "gw"}}, "auth: missing required key 'client_secret'", id="no-secret"),
    pytest.param(introspection(discovery=DISCOVERY),
                 "auth: give exactly one of 'endpoint' (the introspection URL) and 'discovery'", id="both"),
    pytest.param({"auth": {"type": "introspection", "client_id": "gw", "client_secret": SECRET}},
                 "auth: give exactly one of 'endpoint'", id="neither"),
    pytest.param(introspection(endpoint="ftp://idp.example/i"),
                 "auth.endpoint: 'ftp://idp.example/i' must be an http:// or https:// URL", id="endpoint-scheme"),
    pytest.param(introspection(endpoint="https://gw:pw@idp.example/i"),
                 "auth.endpoint: must not carry credentials in the URL", id="endpoint-credentials"),
    pytest.param(introspection(client_auth="jwt"), "auth.client_auth: 'jwt' is not one of: basic, post",
                 id="client-auth"),
    pytest.param(introspection(timeout="0s"), "auth.timeout: '0s' must be greater than zero", id="timeout-zero"),
    pytest.param(introspection(timeout="2m"), "auth.timeout: '2m' is too long (at most 60s)", id="timeout-long"),
    pytest.param(introspection(cache_ttl="-1s"), "auth.cache_ttl: '-1s' must not be negative", id="ttl-negative"),
    pytest.param(introspection(cache_ttl="48h"), "auth.cache_ttl: '48h' is too long (at most 86400s)",
                 id="ttl-long"),
    pytest.param(introspection(cache="memcached"), "auth.cache: 'memcached' is not one of: memory, redis",
                 id="cache-backend"),
    pytest.param(introspection(cache_max_entries=0), "auth.cache_max_entries: 0 must be at least 1",
                 id="cache-size"),
    pytest.param(introspection(token_type_hint="access token"),
                 "auth.token_type_hint: '***' is not a token type name", id="hint"),
    pytest.param(introspection(client_id="gw\r\n"), "auth.client_id: 'gw\\r\\n' contains control characters",
                 id="client-id-crlf"),
    pytest.param(introspection(required_scopes=["orders read"]),
                 "auth.required_scopes[0]: 'orders read' is not a scope", id="scope-with-space"),
    pytest.param(introspection(required_scopes=['a"b']), "auth.required_scopes[0]: 'a\"b' is not a scope",
                 id="scope-with-quote"),
    pytest.param(introspection(claims_to_headers={"X-User-ID": "email"}),
                 "auth.claims_to_headers.X-User-ID: 'X-User-ID' is set by the gateway itself", id="identity-header"),
    pytest.param(introspection(claims_to_headers={"x-consumer-id": "email"}),
                 "auth.claims_to_headers.x-consumer-id: 'x-consumer-id' is set by the gateway itself",
                 id="identity-header-case"),
    pytest.param(introspection(claims_to_headers={"X-Forwarded-For": "ip"}),
                 "auth.claims_to_headers.X-Forwarded-For: 'X-Forwarded-For' is a forwarding or body header",
                 id="forwarding"),
    pytest.param(introspection(claims_to_headers={"X-Real-IP": "ip"}),
                 "auth.claims_to_headers.X-Real-IP: 'X-Real-IP' is set by the gateway itself", id="real-ip"),
    pytest.param(introspection(claims_to_headers={"Forwarded": "ip"}),
                 "auth.claims_to_headers.Forwarded: 'Forwarded' is set by the gateway itself", id="forwarded"),
    pytest.param(introspection(claims_to_headers={"Connection": "x"}),
                 "auth.claims_to_headers.Connection: 'Connection' cannot be changed by a policy (hop-by-hop",
                 id="hop-by-hop"),
    pytest.param(introspection(claims_to_headers={"Transfer-Encoding": "x"}),
                 "auth.claims_to_headers.Transfer-Encoding: 'Transfer-Encoding' cannot be changed", id="te"),
    pytest.param(introspection(claims_to_headers={"Host": "x"}),
                 "auth.claims_to_headers.Host: 'Host' cannot be changed by a policy", id="host"),
    pytest.param(introspection(claims_to_headers={"Content-Length": "x"}),
                 "auth.claims_to_headers.Content-Length: 'Content-Length' cannot be changed", id="content-length"),
    pytest.param(introspection(claims_to_headers={"Content-Type": "x"}),
                 "auth.claims_to_headers.Content-Type: 'Content-Type' is a forwarding or body header",
                 id="content-type"),
    pytest.param(introspection(claims_to_headers={"Authorization": "x"}),
                 "auth.claims_to_headers.Authorization: 'Authorization' is set by the gateway itself",
                 id="authorization"),
    pytest.param(introspection(header="X-Token", claims_to_headers={"x-token": "x"}),
                 "auth.claims_to_headers.x-token: 'x-token' is set by the gateway itself", id="credential-header"),
    pytest.param(introspection(claims_to_headers={"X-Email": "email", "x-email": "mail"}),
                 "auth.claims_to_headers.x-email: 'x-email' is listed twice", id="duplicate"),
    pytest.param(introspection(claims_to_headers={"X Email": "email"}),
                 "auth.claims_to_headers.X Email: 'X Email' is not a valid header name", id="bad-name"),
    pytest.param(introspection(claims_to_headers={"X-Email": "em\nail"}),
                 "auth.claims_to_headers.X-Email: 'em\\nail' names a claim with control characters", id="claim-crlf"),
    pytest.param(introspection(claims_to_headers={f"X-C{i}": "c" for i in range(33)}),
                 "auth.claims_to_headers: has too many entries (at most 32)", id="too-many"),
    pytest.param(introspection(claims_to_headers={"X-Email": ""}),
                 "auth.claims_to_headers.X-Email: '' must not be empty", id="empty-claim"),
    pytest.param({"auth": {"type": "introspection", "discovery": "https://idp.example/meta.json", "client_id": "gw",
                  "client_secret": SECRET}},
                 "auth.discovery: 'https://idp.example/meta.json' names no issuer", id="discovery-no-issuer"),
    pytest.param({"auth": {"type": "introspection", "discovery": DISCOVERY, "issuer": "https://other.example",
                  "client_id": "gw", "client_secret": SECRET}},
                 "auth.issuer: 'https://other.example' differs from the issuer the discovery URL is for "
                 "('https://idp.example')", id="discovery-issuer-mismatch"),
    pytest.param(introspection(typo=1), "auth.typo: unknown key", id="unknown-key"),
    pytest.param(jwt_discovery(jwks_url="https://idp.example/jwks.json"),
                 "auth: give one of 'public_key', 'jwks_url', 'discovery', not jwks_url and discovery",
                 id="jwt-discovery-and-jwks"),
    pytest.param({"auth": {"type": "jwt", "algorithms": ["HS256"], "secret": "x" * 40, "discovery": DISCOVERY}},
                 "auth.discovery: is not allowed with HS256", id="jwt-discovery-hmac"),
    pytest.param(jwt_discovery(issuer="https://other.example"),
                 "auth.issuer: 'https://other.example' differs from the issuer", id="jwt-discovery-issuer"),
    pytest.param(jwt_discovery(discovery="idp.example/.well-known/openid-configuration"),
                 "auth.discovery: 'idp.example/.well-known/openid-configuration' must be an http:// or https:// URL",
                 id="jwt-discovery-not-url"),
    pytest.param(jwt_discovery(hide_credentials="yes"), "auth.hide_credentials: 'yes' is not true or false",
                 id="hide-not-bool"),
    pytest.param({"auth": {"type": "api_key", "required_scopes": ["a b"]}},
                 "auth.required_scopes[0]: 'a b' is not a scope", id="api-key-scope"),
    pytest.param({"auth": {"type": "basic", "required_scopes": "staff"}},
                 "auth.required_scopes: 'staff' is not a list", id="basic-scope-not-list"),
]  # fmt: skip


@pytest.mark.parametrize(("doc", "expected"), REFUSALS)
def test_refusals_name_key_path_and_value(doc: dict[str, Any], expected: str) -> None:
    message = refusal(doc)
    assert message.startswith(KEY + ": ")
    assert expected in message, message
    assert SECRET not in message


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param(SECRET + "\n", id="control-character"),
        pytest.param(SECRET * 200, id="too-long"),
        pytest.param([SECRET], id="not-a-string"),
        pytest.param("", id="empty"),
    ],
)
def test_client_secret_is_never_echoed(secret: object) -> None:
    message = refusal(introspection(client_secret=secret))
    assert "auth.client_secret:" in message
    assert "s3cr3t" not in message


def test_consumer_scopes_must_be_scope_tokens() -> None:
    with pytest.raises(PolicyError) as info:
        parse_consumer(json.dumps({"scopes": ["orders:read", "orders write"]}), key="consulgw/consumers/a", name="a")
    assert str(info.value).startswith("consulgw/consumers/a: scopes[1]: 'orders write' is not a scope")
    consumer = parse_consumer(json.dumps({"scopes": ["orders:read"]}), key="consulgw/consumers/a", name="a")
    assert consumer.scopes == frozenset({"orders:read"})


def test_a_bad_update_keeps_the_previous_good_policy() -> None:
    good = json.dumps(introspection(cache_ttl="30s")).encode()
    bad = json.dumps(introspection(claims_to_headers={"X-User-ID": "sub"})).encode()
    first = build_policy_book({"services/users": good}, previous=None)
    assert isinstance(first.for_service("users").auth, IntrospectionAuth)
    second = build_policy_book({"services/users": bad}, previous=first)
    assert second.for_service("users") == first.for_service("users")
    assert "auth.claims_to_headers.X-User-ID" in second.errors["services/users"]
    assert SECRET not in second.errors["services/users"]
