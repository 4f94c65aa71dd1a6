"""Live policy edits through a real gateway: applied without restart, in-flight requests keep the policy they started
under, invalid documents change nothing (and are reported once), deleting a policy falls back to the defaults, and no
JSON document written to the key makes the gateway answer 500.

The Consul watches are rate-limited (consulgw/discovery/watcher.py: one blocking query per second per watch after a
burst of two), so a test that writes KV many times would spend a second per write waiting for the watch. Where that
matters the gateway runs on a ``SkewedClock`` that the test moves two seconds forward before each write: the watch's
token bucket is full again, exactly as if the test had waited, and no duration is asserted.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from consulgw.policy.parse import merge_documents, parse_policy
from consulgw.server.gateway import Gateway

from .conftest import (
    Consul,
    SkewedClock,
    Switchable,
    admin_routes,
    metric_value,
    policy_of,
    put_policy,
    routed_service,
    unique,
    wait_for,
    wait_policy,
)


def _tagged(version: str) -> dict[str, Any]:
    return {
        "headers": {
            "request": {"set": {"X-Policy-Request": version}},
            "response": {"set": {"X-Policy": version}},
        }
    }


async def test_live_edit_applies_to_new_requests_and_in_flight_requests_keep_their_policy(
    make_gateway: Any, consul: Consul, switchables: Any, http: aiohttp.ClientSession
) -> None:
    gateway: Gateway = await make_gateway()
    up: Switchable = await switchables("live")
    service = unique("live")
    await routed_service(gateway, consul, service, up.port, _tagged("v1"))
    async with http.get(f"{gateway.url}/") as resp:
        assert (resp.status, resp.headers["X-Policy"]) == (200, "v1")

    # A request starts under v1 and is held in the upstream ...
    up.hold = asyncio.Event()
    in_flight = asyncio.create_task(http.get(f"{gateway.url}/slow"))
    await wait_for(lambda: len(up.received) == 2)
    assert _sent(up.received[-1], "X-Policy-Request") == ["v1"]

    # ... v2 (new header values, and an API key now required) is written and taken into use, no restart ...
    v2 = {**_tagged("v2"), "auth": {"type": "api_key"}}
    await put_policy(consul, service, v2)
    await wait_policy(gateway, service, v2)
    async with http.get(f"{gateway.url}/") as resp:
        body = await resp.json()
        assert (resp.status, body["error"]) == (401, "unauthorized")  # new requests: v2
    assert len(up.received) == 2  # the 401 never reached the upstream
    assert not in_flight.done()

    # ... and the request that started under v1 finishes under v1.
    up.hold.set()
    up.hold = None
    resp = await in_flight
    async with resp:
        assert resp.status == 200
        assert resp.headers["X-Policy"] == "v1"
        assert await resp.json() == {"upstream": "live"}

    # Back to a public v3: the edit applies again, without restart.
    await put_policy(consul, service, _tagged("v3"))
    await wait_policy(gateway, service, _tagged("v3"))
    async with http.get(f"{gateway.url}/") as resp:
        assert (resp.status, resp.headers["X-Policy"]) == (200, "v3")
    assert _sent(up.received[-1], "X-Policy-Request") == ["v3"]


def _sent(received: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in received["headers"] if k.lower() == name.lower()]


_NOT_A_KEY = "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5IGF0IGFsbA==\n-----END PUBLIC KEY-----\n"

INVALID = [
    pytest.param(b'{"headers": {"response": ', "not valid JSON", id="bad-json"),
    pytest.param(json.dumps({"rate_limit": {"requests": "ten", "per": "1m"}}).encode(), "rate_limit.requests",
                 id="schema-violation"),
    pytest.param(
        json.dumps({"auth": {"type": "jwt", "algorithms": ["XS512"], "secret": "x" * 64}}).encode(),
        "auth.algorithms[0]",
        id="unknown-algorithm",
    ),
    pytest.param(
        json.dumps({"auth": {"type": "jwt", "algorithms": ["RS256"], "public_key": _NOT_A_KEY}}).encode(),
        "auth.public_key",
        id="unreadable-pem",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("document", "names"), INVALID)
async def test_invalid_edit_changes_nothing_is_reported_once_and_delete_falls_back_to_defaults(
    make_gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession, document: bytes, names: str
) -> None:
    clock = SkewedClock()
    with capture_logs() as logs:
        gateway: Gateway = await make_gateway(clock=clock)
        up = await upstreams("svc")
        service = unique("svc")
        rel = f"services/{service}"
        defaults = {"headers": {"response": {"set": {"X-Policy": "defaults"}}}}
        clock.offset += 2.0  # (see the module docstring)
        await consul.kv_put("consulgw/defaults", json.dumps(defaults))
        good = _tagged("good")
        await routed_service(gateway, consul, service, up.port)
        clock.offset += 2.0
        await put_policy(consul, service, good)
        expected_good = parse_policy(json.dumps(merge_documents(defaults, good)), key="expected")
        await wait_for(lambda: policy_of(gateway, service) == expected_good)

        async def answered_by() -> str:
            async with http.get(f"{gateway.url}/") as resp:
                assert resp.status == 200
                return resp.headers["X-Policy"]

        assert await answered_by() == "good"

        clock.offset += 2.0
        await consul.kv_put(f"consulgw/{rel}", document)

        async def rejected() -> bool:
            return rel in (await admin_routes(http, gateway.admin_url))["policy_errors"]

        await wait_for(rejected)
        error = (await admin_routes(http, gateway.admin_url))["policy_errors"][rel]
        assert error.startswith(f"consulgw/{rel}: ")
        assert names in error
        assert "bm90IGEga2V5" not in error  # key material is never echoed
        assert policy_of(gateway, service) == expected_good  # the previous policy stays in force
        assert await answered_by() == "good"
        assert await metric_value(http, gateway.admin_url, "consulgw_policy_rejected", key=rel) == 1.0

        # Another KV change rebuilds the book; the same rejection is not logged again.
        clock.offset += 2.0
        await consul.kv_put("consulgw/consumers/someone", json.dumps({"scopes": ["x"]}))
        await wait_for(lambda: "someone" in gateway.view().book.consumers)  # type: ignore[union-attr]
        assert await answered_by() == "good"
        assert rel in (await admin_routes(http, gateway.admin_url))["policy_errors"]

        # Deleting the document: the service runs with consulgw/defaults, and the rejection is cleared.
        clock.offset += 2.0
        await consul.kv_delete(f"consulgw/{rel}")
        await wait_policy(gateway, service, defaults)
        assert await answered_by() == "defaults"
        assert rel not in (await admin_routes(http, gateway.admin_url))["policy_errors"]
        assert await metric_value(http, gateway.admin_url, "consulgw_policy_rejected", key=rel) == 0.0

    rejections = [e for e in logs if e.get("event") == "policy_rejected" and e.get("key") == rel]
    assert len(rejections) == 1, rejections
    assert rejections[0]["reason"] == error
    assert rejections[0]["log_level"] == "warning"


# -- hypothesis: whatever JSON lands in the policy key, the gateway keeps answering ---------------------------------

VOCABULARY = [
    "lb", "timeouts", "connect", "read", "retries", "attempts", "on", "auth", "type", "algorithms", "secret",
    "issuer", "audience", "required_scopes", "leeway", "header", "realm", "rate_limit", "requests", "per", "key",
    "backend", "on_backend_error", "burst", "circuit_breaker", "failure_threshold", "recovery_timeout",
    "failure_statuses", "fallback", "status", "body", "content_type", "headers", "cors", "origins", "methods",
    "expose_headers", "credentials", "max_age", "request", "response", "add", "set", "remove", "max_body_bytes",
    "subsets", "split", "sticky", "slow_start", "mirror", "meta", "tags", "service", "default", "weights", "match",
    "to", "cookie", "query", "hash", "on_empty", "response_header", "on_unavailable", "keep_draining", "window",
    "percent", "max_in_flight",
]  # fmt: skip
SCALARS = [
    "round_robin", "ip_hash", "least_conn", "HS256", "RS256", "none", "jwt", "api_key", "basic", "*", "1s", "10 s",
    "-1s", "250ms", "0", "ip", "consumer", "header:X-Tenant", "redis", "local", "deny", "allow", "502", "503",
    "connect_failure", "timeout", "Host", "X-Test", "https://app.example.com", "GET", "x" * 40,
    "hash", "cookie", "stable", "canary", "!canary", "repick", "fail", "header:X-User-ID", "cookie:sid", "30s",
]  # fmt: skip
_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(SCALARS),
)
_json = st.recursive(
    _leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(VOCABULARY), st.text(max_size=8)), children, max_size=4),
    ),
    max_leaves=20,
)
_SECTIONS = st.fixed_dictionaries(
    {},
    optional={
        "lb": st.sampled_from(["round_robin", "least_conn", "ip_hash", {"type": "hash", "key": "header:X-Test"},
                               {"type": "hash", "key": "cookie:sid"}, {"type": "least_conn", "key": "ip"},
                               {"type": "hash", "key": "consumer"}]),
        "timeouts": st.fixed_dictionaries({}, optional={"connect": st.sampled_from(["1s", "250ms"]), "read": _json}),
        "retries": st.fixed_dictionaries({"attempts": st.integers(-1, 11)}),
        "rate_limit": st.fixed_dictionaries(
            {"requests": st.integers(-1, 1000), "per": st.sampled_from(["1s", "1m", "0s", 5])},
            optional={"backend": st.sampled_from(["local", "redis"]), "burst": st.integers(-1, 5)},
        ),
        "circuit_breaker": st.fixed_dictionaries({}, optional={"failure_threshold": st.integers(0, 5)}),
        "headers": st.fixed_dictionaries({"response": st.fixed_dictionaries({"set": st.dictionaries(
            st.sampled_from(["X-Test", "Host", "Bad Name", "Server"]), st.text(max_size=8), max_size=2)})}),
        "max_body_bytes": st.one_of(st.none(), st.integers(-1, 10)),
        "cors": st.fixed_dictionaries(
            {"origins": st.lists(st.sampled_from(["*", "https://a.example", "https://*.example", "x"]))},
            optional={"methods": st.lists(st.sampled_from(["*", "GET", "PUT", "get"])), "credentials": st.booleans(),
                      "headers": st.lists(st.sampled_from(["*", "Content-Type", "Bad Name"])), "max_age": _json},
        ),
        "auth": st.sampled_from([{"type": "api_key"}, {"type": "basic"}, {"type": "jwt"}, None]),
        # Traffic management (issue 9): the instance under test has no Meta, so "stable" is empty.
        "subsets": st.sampled_from([{"all": {}, "stable": {"meta": {"version": "v1"}}},
                                    {"all": {}, "stable": {"service": "no-such-service"}}, {"bad name": {}}]),
        "split": st.fixed_dictionaries(
            {"default": st.sampled_from(["all", "stable", "nope"])},
            optional={"weights": st.dictionaries(st.sampled_from(["all", "stable", "x"]), st.integers(-1, 3), max_size=2),
                      "hash": st.sampled_from(["cookie", "none", "ip", "consumer", "header:X-Test", "cookie:sid"]),
                      "on_empty": st.sampled_from(["default", "fail", "x"]), "response_header": st.booleans(),
                      "match": st.lists(st.fixed_dictionaries({"to": st.sampled_from(["all", "stable"])}, optional={
                          "header": st.dictionaries(st.sampled_from(["X-Test", "Bad Name"]), st.text(max_size=4), max_size=1),
                          "query": st.dictionaries(st.sampled_from(["v", ""]), st.text(max_size=3), max_size=1),
                          "cookie": st.dictionaries(st.sampled_from(["beta", "a b"]), st.text(max_size=3), max_size=1)}),
                          max_size=2)},
        ),
        "sticky": st.fixed_dictionaries({}, optional={"secure": st.booleans(), "on_unavailable": st.sampled_from(
            ["repick", "fail"]), "cookie": st.sampled_from(["pin", "gw_split", "a b"]), "max_age": _json,
            "same_site": st.sampled_from(["lax", "none", None])}),
        "slow_start": st.fixed_dictionaries({"window": st.sampled_from(["30s", "1ms", "0s", -1, "2h", None])}),
        "mirror": st.fixed_dictionaries(
            {"to": st.lists(st.sampled_from([{"subset": "all"}, {"subset": "nope"}, {"service": "no-such-service"},
                                             {"service": "a", "subset": "all"}, {"subset": "all", "percent": 50}]),
                            max_size=2)},
            optional={"methods": st.lists(st.sampled_from(["GET", "POST", "get", "bad method"]), max_size=2),
                      "max_body_bytes": st.integers(-1, 10), "timeout": st.sampled_from(["1s", "0s", "x"]),
                      "max_in_flight": st.integers(0, 2)},
        ),
    },
)  # fmt: skip
policy_documents = st.one_of(_json, st.dictionaries(st.sampled_from(VOCABULARY), _json, max_size=5), _SECTIONS)


async def test_arbitrary_policy_documents_never_make_the_gateway_answer_500(
    make_gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession
) -> None:
    clock = SkewedClock()
    gateway: Gateway = await make_gateway(clock=clock)
    up = await upstreams("prop")
    service = unique("prop")
    rel = f"services/{service}"
    await routed_service(gateway, consul, service, up.port)
    loop = asyncio.get_running_loop()
    outcomes: dict[str, int] = {"accepted": 0, "rejected": 0}

    async def check(document: object) -> None:
        raw = json.dumps(document).encode()
        clock.offset += 2.0  # (see the module docstring)
        await consul.kv_put(f"consulgw/{rel}", raw)
        await wait_for(lambda: gateway.view().book.sources.get(rel) == raw)  # type: ignore[union-attr]
        routes = await admin_routes(http, gateway.admin_url)  # valid JSON, or admin_routes fails
        assert service in routes["services"]
        outcomes["rejected" if rel in routes["policy_errors"] else "accepted"] += 1
        requests: list[tuple[str, dict[str, str], bytes | None]] = [
            ("GET", {}, None),
            ("POST", {"Origin": "https://app.example.com", "Content-Type": "application/json"}, b'{"a": 1}'),
            ("OPTIONS", {"Origin": "https://a.example", "Access-Control-Request-Method": "PUT"}, None),
        ]
        for method, headers, data in requests:  # enough to run every stage a policy can switch on
            async with http.request(method, f"{gateway.url}/probe", headers=headers, data=data) as resp:
                body = await resp.read()
                assert resp.status != 500, (document, method, body)
                if resp.status >= 400 and resp.headers.get("X-Upstream") is None:
                    assert set(json.loads(body)) == {"error", "message", "request_id"}, body

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(policy_documents)
    def prop(document: object) -> None:
        asyncio.run_coroutine_threadsafe(check(document), loop).result(timeout=30)

    await asyncio.to_thread(prop)
    assert outcomes["accepted"], outcomes  # both paths were exercised
    assert outcomes["rejected"], outcomes
