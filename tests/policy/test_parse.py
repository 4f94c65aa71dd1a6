"""parse_policy / parse_consumer: every key accepted, every refusal names KV key + JSON path + value."""

from __future__ import annotations

import json
from typing import Any

import pytest

from consulgw.errors import PolicyError
from consulgw.policy.consumers import api_key_digest, hash_password
from consulgw.policy.model import (
    DEFAULT_POLICY,
    ApiKeyAuth,
    BasicAuth,
    BreakerPolicy,
    ConsumerRateLimit,
    CorsPolicy,
    Fallback,
    HeaderPolicy,
    HeaderRules,
    JwtAuth,
    RateLimitPolicy,
    Retries,
    ServicePolicy,
    Timeouts,
)
from consulgw.policy.parse import merge_documents, parse_consumer, parse_policy
from tests.policy import keys

KEY = "consulgw/services/users"
CKEY = "consulgw/consumers/alice"


def policy(doc: Any) -> ServicePolicy:
    return parse_policy(json.dumps(doc).encode(), key=KEY)


def refusal(doc: Any, *, key: str = KEY) -> str:
    with pytest.raises(PolicyError) as info:
        parse_policy(doc if isinstance(doc, bytes | str) else json.dumps(doc).encode(), key=key)
    return str(info.value)


# ---------------------------------------------------------------------------------------------------------- valid


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        pytest.param({}, DEFAULT_POLICY, id="empty-document-is-defaults"),
        pytest.param({"lb": "least_conn"}, ServicePolicy(lb="least_conn"), id="lb"),
        pytest.param({"lb": None}, ServicePolicy(), id="lb-null"),
        pytest.param(
            {"$schema": "./schema.json", "description": "why this policy exists"}, DEFAULT_POLICY, id="annotations"
        ),
        pytest.param(
            {"timeouts": {"connect": "250ms", "read": "1m30s"}},
            ServicePolicy(timeouts=Timeouts(connect=0.25, read=90.0)),
            id="timeouts-strings",
        ),
        pytest.param(
            {"timeouts": {"read": 5}}, ServicePolicy(timeouts=Timeouts(connect=2.0, read=5.0)), id="timeouts-seconds"
        ),
        pytest.param(
            {"retries": {"attempts": 2, "on": ["connect_failure", "502", "503"]}},
            ServicePolicy(retries=Retries(attempts=2, on=frozenset({"connect_failure", "502", "503"}))),
            id="retries",
        ),
        pytest.param({"retries": {"attempts": 0}}, ServicePolicy(retries=Retries(attempts=0)), id="retries-off"),
        pytest.param(
            {"auth": {"type": "api_key"}}, ServicePolicy(auth=ApiKeyAuth(header="X-API-Key")), id="auth-api-key"
        ),
        pytest.param(
            {"auth": {"type": "api_key", "header": "X-Token-Id"}},
            ServicePolicy(auth=ApiKeyAuth(header="X-Token-Id")),
            id="auth-api-key-header",
        ),
        pytest.param(
            {"auth": {"type": "basic", "realm": "staff"}}, ServicePolicy(auth=BasicAuth(realm="staff")), id="basic"
        ),
        pytest.param(
            {
                "auth": {
                    "type": "jwt",
                    "algorithms": ["HS256", "HS256"],
                    "secret": keys.HS256_SECRET,
                    "issuer": "https://issuer.example",
                    "audience": "users-api",
                    "required_scopes": ["users:read"],
                    "leeway": "30s",
                }
            },
            ServicePolicy(
                auth=JwtAuth(
                    algorithms=("HS256",),
                    secret=keys.HS256_SECRET,
                    issuer="https://issuer.example",
                    audience=("users-api",),
                    required_scopes=frozenset({"users:read"}),
                    leeway=30.0,
                )
            ),
            id="jwt-hs256",
        ),
        pytest.param(
            {
                "auth": {
                    "type": "jwt",
                    "algorithms": ["RS256"],
                    "jwks_url": "https://idp.example/jwks.json",
                    "audience": ["a", "b"],
                }
            },
            ServicePolicy(
                auth=JwtAuth(algorithms=("RS256",), jwks_url="https://idp.example/jwks.json", audience=("a", "b"))
            ),
            id="jwt-jwks",
        ),
        pytest.param(
            {"rate_limit": {"requests": 100, "per": "1m"}},
            ServicePolicy(rate_limit=RateLimitPolicy(requests=100, per=60.0)),
            id="rate-limit-minimal",
        ),
        pytest.param(
            {
                "rate_limit": {
                    "requests": 5,
                    "per": 1,
                    "key": "header:X-Tenant",
                    "backend": "redis",
                    "on_backend_error": "deny",
                    "burst": 3,
                }
            },
            ServicePolicy(
                rate_limit=RateLimitPolicy(
                    requests=5, per=1.0, key="header:x-tenant", backend="redis", on_backend_error="deny", burst=3
                )
            ),
            id="rate-limit-full",
        ),
        pytest.param(
            {"rate_limit": {"requests": 5, "per": "1s", "key": "consumer"}},
            ServicePolicy(rate_limit=RateLimitPolicy(requests=5, per=1.0, key="consumer")),
            id="rate-limit-consumer",
        ),
        pytest.param({"circuit_breaker": {}}, ServicePolicy(circuit_breaker=BreakerPolicy()), id="breaker-defaults"),
        pytest.param(
            {
                "circuit_breaker": {
                    "failure_threshold": 3,
                    "recovery_timeout": "10s",
                    "failure_statuses": [500, 503],
                    "fallback": {
                        "status": 503,
                        "body": '{"error": "try later"}',
                        "content_type": "application/json",
                        "headers": {"Retry-After": "10"},
                    },
                }
            },
            ServicePolicy(
                circuit_breaker=BreakerPolicy(
                    failure_threshold=3,
                    recovery_timeout=10.0,
                    failure_statuses=frozenset({500, 503}),
                    fallback=Fallback(
                        status=503,
                        body='{"error": "try later"}',
                        content_type="application/json",
                        headers=(("Retry-After", "10"),),
                    ),
                )
            ),
            id="breaker-full",
        ),
        pytest.param(
            {"cors": {"origins": ["https://App.Example.com:443", "http://localhost:3000"]}},
            ServicePolicy(cors=CorsPolicy(origins=("https://app.example.com", "http://localhost:3000"))),
            id="cors-origins-normalized",
        ),
        pytest.param(
            {
                "cors": {
                    "origins": ["https://*.example.com"],
                    "methods": ["get", "PUT"],
                    "headers": ["Content-Type", "Authorization"],
                    "expose_headers": ["X-Request-ID"],
                    "credentials": True,
                    "max_age": "10m",
                }
            },
            ServicePolicy(
                cors=CorsPolicy(
                    origins=("https://*.example.com",),
                    methods=("GET", "PUT"),
                    headers=("Content-Type", "Authorization"),
                    expose_headers=("X-Request-ID",),
                    credentials=True,
                    max_age=600,
                )
            ),
            id="cors-full",
        ),
        pytest.param(
            {"cors": {"origins": ["*"], "max_age": 120}},
            ServicePolicy(cors=CorsPolicy(origins=("*",), max_age=120)),
            id="cors-any-origin",
        ),
        pytest.param(
            {
                "headers": {
                    "request": {"add": {"X-Via": "gw"}, "set": {"X-Env": "prod"}, "remove": ["X-Debug"]},
                    "response": {"set": {"Strict-Transport-Security": "max-age=63072000"}, "remove": ["Server"]},
                }
            },
            ServicePolicy(
                headers=HeaderPolicy(
                    request=HeaderRules(add=(("X-Via", "gw"),), set=(("X-Env", "prod"),), remove=("X-Debug",)),
                    response=HeaderRules(set=(("Strict-Transport-Security", "max-age=63072000"),), remove=("Server",)),
                )
            ),
            id="headers",
        ),
        pytest.param({"max_body_bytes": 1048576}, ServicePolicy(max_body_bytes=1048576), id="max-body"),
        pytest.param({"max_body_bytes": 0}, ServicePolicy(max_body_bytes=0), id="max-body-zero"),
        pytest.param(
            {"auth": None, "rate_limit": None, "circuit_breaker": None, "cors": None, "max_body_bytes": None},
            DEFAULT_POLICY,
            id="nulls-switch-off",
        ),
    ],
)
def test_valid_documents(doc: Any, expected: ServicePolicy) -> None:
    assert policy(doc) == expected


@pytest.mark.parametrize(
    ("algorithm", "pem"),
    [
        pytest.param("RS256", keys.rsa_public_pem, id="rs256"),
        pytest.param("PS384", keys.rsa_public_pem, id="ps384"),
        pytest.param("ES256", keys.ec_public_pem, id="es256"),
        pytest.param("EdDSA", keys.ed_public_pem, id="eddsa"),
    ],
)
def test_public_keys_that_load(algorithm: str, pem: Any) -> None:
    parsed = policy({"auth": {"type": "jwt", "algorithms": [algorithm], "public_key": pem()}})
    assert isinstance(parsed.auth, JwtAuth)
    assert parsed.auth.algorithms == (algorithm,)


def test_input_forms_are_equivalent() -> None:
    doc = {"lb": "ip_hash", "max_body_bytes": 10}
    text = json.dumps(doc)
    assert parse_policy(text, key=KEY) == parse_policy(text.encode(), key=KEY) == parse_policy(doc, key=KEY)
    assert parse_policy(b"\xef\xbb\xbf" + text.encode(), key=KEY) == parse_policy(doc, key=KEY)  # UTF-8 BOM


# -------------------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        pytest.param(
            {"rate_limit": {"requests": 10, "per": "10 s"}},
            "consulgw/services/users: rate_limit.per: '10 s' is not a duration",
            id="bad-duration",
        ),
        pytest.param(
            {"rate_limit": {"requests": 10, "per": "0s"}},
            "rate_limit.per: '0s' must be greater than zero",
            id="zero-window",
        ),
        pytest.param(
            {"rate_limit": {"requests": 0, "per": "1s"}},
            "rate_limit.requests: 0 must be at least 1",
            id="zero-requests",
        ),
        pytest.param({"rate_limit": {"per": "1s"}}, "rate_limit: missing required key 'requests'", id="missing"),
        pytest.param(
            {"rate_limit": {"requests": 1, "per": "1s", "pre": 1}},
            "rate_limit.pre: unknown key (did you mean 'per'?",
            id="typo-in-section",
        ),
        pytest.param({"ratelimit": {}}, "ratelimit: unknown key (did you mean 'rate_limit'?", id="typo-top-level"),
        pytest.param(
            {"rate_limit": {"requests": 1, "per": "1s", "key": "header:bad header"}},
            "rate_limit.key: 'header:bad header' names 'bad header', which is not a valid header name",
            id="rate-limit-header-key",
        ),
        pytest.param(
            {"rate_limit": {"requests": 1, "per": "1s", "key": "user"}},
            "rate_limit.key: 'user' is not one of: ip, consumer, header:<name>",
            id="rate-limit-key",
        ),
        pytest.param(
            {"rate_limit": {"requests": 1, "per": "1s", "backend": "memcached"}},
            "rate_limit.backend: 'memcached' is not one of: local, redis",
            id="rate-limit-backend",
        ),
        pytest.param(
            {"rate_limit": {"requests": 1.5, "per": "1s"}},
            "rate_limit.requests: 1.5 is not a whole number",
            id="float-requests",
        ),
        pytest.param(
            {"rate_limit": {"requests": True, "per": "1s"}},
            "rate_limit.requests: true is not a whole number",
            id="bool-requests",
        ),
        pytest.param({"lb": "random"}, "lb: 'random' is not one of: null, round_robin, least_conn, ip_hash", id="lb"),
        pytest.param(
            {"timeouts": {"connect": -1}}, "timeouts.connect: -1 must be greater than zero", id="negative-timeout"
        ),
        pytest.param(
            {"timeouts": {"read": "forever"}}, "timeouts.read: 'forever' is not a duration", id="word-timeout"
        ),
        pytest.param({"timeouts": {"read": 1e300}}, "timeouts.read: 1e+300 is too long", id="huge-timeout"),
        pytest.param(
            {"timeouts": {"read": [1]}}, "timeouts.read: a list of 1 item is not a duration", id="list-timeout"
        ),
        pytest.param({"retries": {"attempts": 11}}, "retries.attempts: 11 must be at most 10", id="retries-max"),
        pytest.param(
            {"retries": {"on": ["429"]}},
            "retries.on[0]: '429' is not one of: connect_failure, timeout, 500, 502, 503, 504",
            id="retry-condition",
        ),
        pytest.param(
            {"auth": {"type": "oauth"}}, "auth.type: 'oauth' is not one of: jwt, api_key, basic", id="auth-type"
        ),
        pytest.param({"auth": {}}, "auth: missing required key 'type'", id="auth-no-type"),
        pytest.param(
            {"auth": {"type": "api_key", "realm": "x"}},
            "auth.realm: unknown key (allowed: header, hide_credentials, required_scopes, type)",
            id="auth-key-mixup",
        ),
        pytest.param(
            {"auth": {"type": "jwt", "algorithms": ["none"], "secret": keys.HS256_SECRET}},
            "auth.algorithms[0]: 'none' is never accepted",
            id="alg-none",
        ),
        pytest.param(
            {"auth": {"type": "jwt", "algorithms": ["HS257"], "secret": keys.HS256_SECRET}},
            "auth.algorithms[0]: 'HS257' is not a JWT algorithm (supported: ES256",
            id="alg-unknown",
        ),
        pytest.param(
            {"auth": {"type": "jwt", "algorithms": ["HS256", "HS256", "none"], "secret": keys.HS256_SECRET}},
            "auth.algorithms[2]: 'none' is never accepted",
            id="alg-index-counts-duplicates",
        ),
        pytest.param(
            {"auth": {"type": "jwt", "algorithms": ["HS256", "RS256"], "secret": keys.HS256_SECRET}},
            "auth.algorithms: mixes HMAC (HS256) with public-key algorithms (RS256)",
            id="alg-mix",
        ),
        pytest.param(
            {"auth": {"type": "jwt", "algorithms": ["HS256"]}}, "auth: HS256 needs 'secret'", id="hs-without-secret"
        ),
        pytest.param(
            {
                "auth": {
                    "type": "jwt",
                    "algorithms": ["HS256"],
                    "secret": keys.HS256_SECRET,
                    "jwks_url": "https://idp.example/jwks",
                }
            },
            "auth.jwks_url: is not allowed with HS256",
            id="hs-with-jwks",
        ),
        pytest.param(
            {"auth": {"type": "jwt", "algorithms": ["RS256"], "secret": keys.HS256_SECRET}},
            "auth.secret: is not allowed with RS256",
            id="rs-with-secret",
        ),
        pytest.param(
            {"auth": {"type": "jwt", "algorithms": ["RS256"]}},
            "auth: RS256 needs 'public_key' (PEM), 'jwks_url' or 'discovery'",
            id="rs-without-key",
        ),
        pytest.param(
            {"auth": {"type": "jwt", "algorithms": ["RS256"], "jwks_url": "ftp://idp.example/keys"}},
            "auth.jwks_url: 'ftp://idp.example/keys' must be an http:// or https:// URL",
            id="jwks-scheme",
        ),
        pytest.param(
            {"auth": {"type": "jwt", "algorithms": ["HS256"], "secret": keys.HS256_SECRET, "audience": []}},
            "auth.audience: a list of 0 items must not be empty",
            id="empty-audience",
        ),
        pytest.param(
            {"auth": {"type": "basic", "realm": 'say "hi"'}},
            "auth.realm: 'say \"hi\"' must not contain quotes",
            id="realm-quote",
        ),
        pytest.param(
            {"circuit_breaker": {"failure_statuses": [200]}},
            "circuit_breaker.failure_statuses[0]: 200 must be at least 400",
            id="breaker-status-range",
        ),
        pytest.param(
            {"circuit_breaker": {"fallback": {"status": 700}}},
            "circuit_breaker.fallback.status: 700 must be at most 599",
            id="fallback-status-range",
        ),
        pytest.param(
            {"circuit_breaker": {"fallback": {"headers": {"Content-Length": "1"}}}},
            "circuit_breaker.fallback.headers.Content-Length: 'Content-Length' cannot be changed by a policy",
            id="fallback-framing-header",
        ),
        pytest.param(
            {"circuit_breaker": {"failure_threshold": 0}},
            "circuit_breaker.failure_threshold: 0 must be at least 1",
            id="breaker-threshold",
        ),
        pytest.param({"cors": {}}, "cors: missing required key 'origins'", id="cors-no-origins"),
        pytest.param(
            {"cors": {"origins": ["*"], "credentials": True}},
            "cors.credentials: true cannot be combined with origins ['*']",
            id="cors-credentials-any",
        ),
        pytest.param(
            {"cors": {"origins": ["https://app.example.com/"]}},
            "cors.origins[0]: 'https://app.example.com/' is not an origin such as 'https://app.example.com' "
            "(an origin has no path or trailing slash: did you mean 'https://app.example.com'?)",
            id="cors-trailing-slash",
        ),
        pytest.param(
            {"cors": {"origins": ["null"]}}, "cors.origins[0]: 'null' is not an origin", id="cors-null-origin"
        ),
        pytest.param(
            {"cors": {"origins": ["*", "https://a.example"]}},
            "cors.origins: lists '*' with other origins",
            id="cors-star-and-list",
        ),
        pytest.param(
            {"cors": {"origins": ["https://a.example"], "credentials": True, "expose_headers": ["*"]}},
            "cors.expose_headers[0]: '*' means the literal header name '*'",
            id="cors-expose-star-credentials",
        ),
        pytest.param(
            {"cors": {"origins": ["https://a.example"], "max_age": "48h"}},
            "cors.max_age: '48h' is too long (at most 86400s)",
            id="cors-max-age",
        ),
        pytest.param(
            {"cors": {"origins": ["https://a.example"], "methods": ["GET POST"]}},
            "cors.methods[0]: 'GET POST' is not an HTTP method",
            id="cors-method",
        ),
        pytest.param(
            {"headers": {"request": {"set": {"Host": "evil.example"}}}},
            "headers.request.set.Host: 'Host' cannot be changed by a policy",
            id="header-host",
        ),
        pytest.param(
            {"headers": {"request": {"remove": ["Connection"]}}},
            "headers.request.remove[0]: 'Connection' cannot be changed by a policy",
            id="header-hop-by-hop",
        ),
        pytest.param(
            {"headers": {"response": {"add": {"Transfer-Encoding": "chunked"}}}},
            "headers.response.add.Transfer-Encoding: 'Transfer-Encoding' cannot be changed by a policy",
            id="header-te",
        ),
        pytest.param(
            {"headers": {"response": {"add": {"X-A": "one\r\nSet-Cookie: x=1"}}}},
            "headers.response.add.X-A: '***' contains control characters",  # header-rule values are never shown
            id="header-injection",
        ),
        pytest.param(
            {"headers": {"response": {"add": {"Bad Name": "x"}}}},
            "headers.response.add.Bad Name: 'Bad Name' is not a valid header name",
            id="header-name",
        ),
        pytest.param({"headers": {"request": {"append": {}}}}, "headers.request.append: unknown key", id="header-verb"),
        pytest.param({"max_body_bytes": -1}, "max_body_bytes: -1 must be at least 0", id="max-body-negative"),
        pytest.param(
            {"max_body_bytes": "1MB"}, "max_body_bytes: '1MB' is not a whole number or null", id="max-body-str"
        ),
        pytest.param([], "(document): a list of 0 items is not an object", id="not-an-object"),
        pytest.param(b"", "consulgw/services/users: the value is empty", id="empty-bytes"),
        pytest.param(b"{", "consulgw/services/users: not valid JSON: Expecting property name", id="bad-json"),
        pytest.param(b"\xff\xfe{}", "consulgw/services/users: the value is not UTF-8 text", id="not-utf8"),
        pytest.param(b'{"lb": NaN}', "not valid JSON: NaN is not a JSON number", id="nan"),
        pytest.param(b'{"lb": "x", "lb": "y"}', "'lb' appears twice in one object", id="duplicate-key"),
        pytest.param(b"[" * 50000, "the document is nested too deeply", id="deep-nesting"),
        pytest.param(
            {"cors": {"origins": ["https://" + "a" * 5000 + ".example"]}},
            "'https://aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa…(5016 chars)' is too long (at most 2048",
            id="huge-value-truncated",
        ),
    ],
)
def test_refusals_name_key_path_and_value(doc: Any, expected: str) -> None:
    message = refusal(doc)
    assert message.startswith(KEY + ": ")
    assert expected in message
    assert "\n" not in message
    assert len(message) < 600


def test_all_problems_are_counted() -> None:
    message = refusal({"lb": "random", "max_body_bytes": -1, "typo": 1})
    assert "(and 2 more problems)" in message


# ---------------------------------------------------------------------------------------------- secrets never shown

SECRET = "s3cr3t-value-that-must-never-be-printed"


@pytest.mark.parametrize(
    ("doc", "path"),
    [
        pytest.param(
            {"auth": {"type": "jwt", "algorithms": ["HS512"], "secret": SECRET}}, "auth.secret", id="short-secret"
        ),
        pytest.param(
            {"auth": {"type": "jwt", "algorithms": ["RS256"], "public_key": SECRET}}, "auth.public_key", id="bad-pem"
        ),
        pytest.param(
            {"auth": {"type": "jwt", "algorithms": ["RS256"], "public_key": "-----BEGIN PRIVATE KEY-----" + SECRET}},
            "auth.public_key",
            id="private-key-pasted",
        ),
        pytest.param(
            {"headers": {"request": {"set": {"Authorization": "Bearer " + SECRET + "\n"}}}},
            "headers.request.set.Authorization",
            id="authorization-header-value",
        ),
        pytest.param(
            {"headers": {"request": {"set": {"X-Upstream-Token": SECRET + "\x00"}}}},
            "headers.request.set.X-Upstream-Token",
            id="token-header-value",
        ),
        pytest.param(
            {"auth": {"type": "jwt", "algorithms": ["HS256"], "secret": SECRET, "secrett": SECRET}},
            "auth.secrett",
            id="unknown-key-holding-secret",
        ),
        pytest.param(
            {"auth": {"type": "jwt", "algorithms": ["HS256"], "secret": [SECRET]}}, "auth.secret", id="secret-list"
        ),
        # Issue 13 finding 5: a header-rule value is a credential whatever the header is called.
        pytest.param(
            {"headers": {"request": {"set": {"X-Upstream-Auth": "Bearer " + SECRET + "\r\n"}}}},
            "headers.request.set.X-Upstream-Auth",
            id="any-header-name-control-chars",
        ),
        pytest.param(
            {"headers": {"response": {"add": {"X-Partner": "Basic " + SECRET + "\x7f"}}}},
            "headers.response.add.X-Partner",
            id="response-header-value",
        ),
        pytest.param(
            {"headers": {"request": {"set": {"X-Upstream-Auth": "Bearer " + SECRET * 250}}}},
            "headers.request.set.X-Upstream-Auth",
            id="schema-error-on-a-header-value",
        ),
        pytest.param(
            {"circuit_breaker": {"fallback": {"headers": {"X-Note": SECRET + "\n"}}}},
            "circuit_breaker.fallback.headers.X-Note",
            id="fallback-header-value",
        ),
        pytest.param(
            {"auth": {"type": "jwt", "algorithms": ["RS256"], "jwks_url": "ftp://user:" + SECRET + "@idp/jwks"}},
            "auth.jwks_url",
            id="jwks-url-userinfo",
        ),
        pytest.param(
            {"auth": {"type": "jwt", "algorithms": ["RS256"], "jwks_url": "ftp://idp/jwks?api_key=" + SECRET}},
            "auth.jwks_url",
            id="jwks-url-query",
        ),
    ],
)
def test_secrets_are_never_echoed(doc: Any, path: str) -> None:
    message = refusal(doc)
    assert f"{path}:" in message
    assert SECRET not in message
    assert "s3cr3t" not in message


def test_private_key_in_public_key_is_refused() -> None:
    pem = keys.rsa_private_pem()
    message = refusal({"auth": {"type": "jwt", "algorithms": ["RS256"], "public_key": pem}})
    assert "auth.public_key: '***' holds a PRIVATE key" in message
    assert "MII" not in message


def test_key_of_wrong_family_is_refused() -> None:
    message = refusal({"auth": {"type": "jwt", "algorithms": ["ES256"], "public_key": keys.rsa_public_pem()}})
    assert "auth.public_key: '***' is not a PEM public key usable with ES256" in message


def test_weak_rsa_key_is_refused() -> None:
    message = refusal({"auth": {"type": "jwt", "algorithms": ["RS256"], "public_key": keys.rsa_public_pem(1024)}})
    assert "auth.public_key: '***' is too weak for RS256" in message


def test_pem_as_hmac_secret_is_refused() -> None:
    message = refusal({"auth": {"type": "jwt", "algorithms": ["HS256"], "secret": keys.rsa_public_pem()}})
    assert "auth.secret: '***' looks like a PEM key" in message


@pytest.mark.parametrize(
    ("algorithm", "length", "needed"),
    [pytest.param("HS256", 31, 32, id="hs256"), pytest.param("HS512", 63, 64, id="hs512")],
)
def test_short_hmac_secrets_are_refused(algorithm: str, length: int, needed: int) -> None:
    message = refusal({"auth": {"type": "jwt", "algorithms": [algorithm], "secret": "k" * length}})
    assert f"auth.secret: '***' is too short for {algorithm}: {length} bytes, at least {needed}" in message


# ------------------------------------------------------------------------------------------------------- consumers


def test_consumer_document() -> None:
    digest = api_key_digest("key-1")
    stored = hash_password("pw")
    consumer = parse_consumer(
        json.dumps(
            {
                "api_key_sha256": [digest.upper()],
                "password_hash": stored,
                "scopes": ["users:read", "users:read"],
                "rate_limit": {"requests": 10, "per": "1s"},
            }
        ),
        key=CKEY,
        name="alice",
    )
    assert consumer.name == "alice"
    assert consumer.api_key_sha256 == frozenset({digest})
    assert consumer.password_hash == stored
    assert consumer.scopes == frozenset({"users:read"})
    assert consumer.rate_limit == ConsumerRateLimit(requests=10, per=1.0)
    assert stored not in repr(consumer)


@pytest.mark.parametrize(
    ("doc", "name", "expected"),
    [
        pytest.param(
            {"api_key_sha256": ["plaintext-key"]},
            "alice",
            "api_key_sha256[0]: '***' is not a SHA-256 hex digest",
            id="plaintext-key",
        ),
        pytest.param(
            {"password_hash": "hunter2"},
            "alice",
            "password_hash: '***' is not a password hash",
            id="plaintext-password",
        ),
        pytest.param({"password": "hunter2"}, "alice", "password: unknown key", id="password-field"),
        pytest.param(
            {"rate_limit": {"requests": 1}}, "alice", "rate_limit: missing required key 'per'", id="consumer-limit"
        ),
        pytest.param({"scopes": "admin"}, "alice", "scopes: 'admin' is not a list", id="scopes-type"),
        pytest.param({}, "a/b", "consumer name 'a/b' is not valid", id="bad-name"),
    ],
)
def test_consumer_refusals(doc: Any, name: str, expected: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_consumer(json.dumps(doc), key=CKEY, name=name)
    message = str(info.value)
    assert message.startswith(CKEY + ": ")
    assert expected in message
    assert "hunter2" not in message
    assert "plaintext-key" not in message


# ----------------------------------------------------------------------------------------------------------- merge


@pytest.mark.parametrize(
    ("base", "override", "expected"),
    [
        pytest.param({"a": 1}, {"b": 2}, {"a": 1, "b": 2}, id="union"),
        pytest.param({"a": {"x": 1, "y": 2}}, {"a": {"y": 3}}, {"a": {"x": 1, "y": 3}}, id="deep"),
        pytest.param({"a": [1, 2]}, {"a": [3]}, {"a": [3]}, id="lists-replace"),
        pytest.param({"a": {"x": 1}}, {"a": None}, {"a": None}, id="null-replaces"),
        pytest.param({"a": {"x": 1}}, {"a": 5}, {"a": 5}, id="scalar-replaces-object"),
        pytest.param({"a": 1}, [1], [1], id="non-object-replaces"),
    ],
)
def test_merge_documents(base: Any, override: Any, expected: Any) -> None:
    assert merge_documents(base, override) == expected
