"""Cross-cutting HTTP behaviour: routing, 405/OPTIONS, 404 texts, decode errors, headers, tokens, dc, consistency.

Reference: consul-api.md sections 1.1-1.5, 2.1, 2.5, 7 and 12 items 4, 5, 17.
"""

from __future__ import annotations

import pytest

from tests.conformance.support import QUERY_META_HEADERS, Client, uid

pytestmark = pytest.mark.asyncio


# --------------------------------------------------------------------------------------------- routing (1.1)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        pytest.param("GET", "/v1/agent/check/pass/some-check", "OPTIONS,PUT", id="check-pass-get"),
        pytest.param("GET", "/v1/agent/check/warn/some-check", "OPTIONS,PUT", id="check-warn-get"),
        pytest.param("GET", "/v1/agent/check/fail/some-check", "OPTIONS,PUT", id="check-fail-get"),
        pytest.param("GET", "/v1/agent/check/update/some-check", "OPTIONS,PUT", id="check-update-get"),
        pytest.param("GET", "/v1/agent/service/register", "OPTIONS,PUT", id="service-register-get"),
        pytest.param(
            "PUT", "/v1/agent/service/register/extra", "OPTIONS,GET", id="register-subpath-falls-into-service-get"
        ),
        pytest.param("DELETE", "/v1/agent/services", "OPTIONS,GET", id="agent-services-delete"),
        pytest.param("POST", "/v1/kv/some/key", "OPTIONS,GET,PUT,DELETE", id="kv-post"),
        pytest.param("POST", "/v1/txn", "OPTIONS,PUT", id="txn-post"),
        pytest.param("GET", "/v1/catalog/register", "OPTIONS,PUT", id="catalog-register-get"),
        pytest.param("PUT", "/v1/catalog/services", "OPTIONS,GET", id="catalog-services-put"),
        pytest.param("PUT", "/v1/health/service/web", "OPTIONS,GET", id="health-service-put"),
        pytest.param("PUT", "/v1/status/leader", "OPTIONS,GET", id="status-leader-put"),
        pytest.param("GET", "/v1/session/create", "OPTIONS,PUT", id="session-create-get"),
        pytest.param("PUT", "/v1/session/list", "OPTIONS,GET", id="session-list-put"),
        pytest.param("GET", "/v1/agent/maintenance", "OPTIONS,PUT", id="node-maintenance-get"),
    ],
)
async def test_method_not_allowed(api: Client, method: str, path: str, allow: str) -> None:
    reply = await api.request(method, path)
    assert reply.status == 405, reply
    assert reply.headers["Allow"] == allow
    assert reply.text == f"method {method} not allowed"
    assert "json" not in reply.headers.get("Content-Type", "")
    assert reply.headers["X-Consul-Default-ACL-Policy"] == "allow"


@pytest.mark.parametrize(
    ("path", "allow"),
    [
        pytest.param("/v1/agent/check/pass/x", "OPTIONS,PUT", id="check-pass"),
        pytest.param("/v1/kv/x", "OPTIONS,GET,PUT,DELETE", id="kv"),
        pytest.param("/v1/catalog/services", "OPTIONS,GET", id="catalog-services"),
        pytest.param("/v1/agent/service/register", "OPTIONS,PUT", id="service-register"),
    ],
)
async def test_options_answers_allow_with_empty_body(api: Client, path: str, allow: str) -> None:
    reply = await api.request("OPTIONS", path)
    assert reply.status == 200, reply
    assert reply.headers["Allow"] == allow
    assert reply.body == b""


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/v1/no/such/endpoint", "Invalid URL path: not a recognized HTTP API endpoint\n", id="under-v1"),
        pytest.param("/v1/", "Invalid URL path: not a recognized HTTP API endpoint\n", id="v1-root"),
        pytest.param(
            "/nope",
            "Invalid URL path: if attempting to use the HTTP API, ensure the path starts with '/v1/'\n",
            id="outside-v1",
        ),
        pytest.param(
            "/api/v1-ish/kv",
            "Invalid URL path: if attempting to use the HTTP API, ensure the path starts with '/v1/'\n",
            id="no-v1-segment",
        ),
    ],
)
async def test_unknown_path_404_texts(api: Client, path: str, body: str) -> None:
    reply = await api.get(path)
    assert reply.status == 404, reply
    assert reply.text == body


async def test_root_redirects_to_ui(api: Client) -> None:
    reply = await api.get("/")
    assert reply.status == 301, reply
    assert reply.headers["Location"] == "/ui/"


async def test_ui_is_served_in_dev_mode(api: Client) -> None:
    """The dev agent enables the UI (9): following the root redirect ends in a 200 page.

    py-consul's own agent test registers an HTTP check on the agent's root URL and expects it to pass.
    """
    reply = await api.get("/", allow_redirects=True)
    assert reply.status == 200, reply
    assert reply.headers["Content-Type"].startswith("text/html")


# --------------------------------------------------------------------------------------------- decode errors (1.4)


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        pytest.param("/v1/agent/service/register", b"", "Request decode failed: EOF", id="service-empty-body"),
        pytest.param("/v1/agent/service/register", b"{", None, id="service-truncated-json"),
        pytest.param("/v1/agent/service/register", b'{"Name": 5}', None, id="service-name-wrong-type"),
        pytest.param("/v1/agent/service/register", b'{"Name": "x", "Port": "80"}', None, id="service-port-string"),
        pytest.param("/v1/agent/check/register", b"", "Request decode failed: EOF", id="check-empty-body"),
        pytest.param("/v1/agent/check/register", b"[1,2]", None, id="check-array-body"),
        pytest.param("/v1/agent/check/update/whatever", b"", "Request decode failed: EOF", id="check-update-empty"),
    ],
)
async def test_request_decode_failed(api: Client, path: str, body: bytes, expected: str | None) -> None:
    reply = await api.put(path, data=body)
    assert reply.status == 400, reply
    if expected is not None:
        assert reply.text == expected
    else:
        assert reply.text.startswith("Request decode failed: "), reply
    assert reply.headers["X-Consul-Default-ACL-Policy"] == "allow"


async def test_get_with_body_is_accepted_and_ignored(api: Client) -> None:
    reply = await api.get("/v1/catalog/services", data=b'{"ignored": true}')
    assert reply.status == 200, reply
    assert "consul" in reply.json()


# --------------------------------------------------------------------------------------------- headers (1.3)


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/v1/catalog/services", id="catalog-services"),
        pytest.param("/v1/catalog/nodes", id="catalog-nodes"),
        pytest.param("/v1/catalog/service/consul", id="catalog-service"),
        pytest.param("/v1/health/service/consul", id="health-service"),
        pytest.param("/v1/health/state/any", id="health-state"),
        pytest.param("/v1/health/checks/consul", id="health-checks"),
        pytest.param("/v1/kv/conformance-never-written-key", id="kv-404"),
        pytest.param("/v1/session/list", id="session-list"),
    ],
)
async def test_blocking_reads_carry_query_meta(api: Client, path: str) -> None:
    reply = await api.get(path)
    assert reply.status in (200, 404), reply
    for name in QUERY_META_HEADERS:
        assert name in reply.headers, f"{name} missing on {path}"
    assert reply.index >= 1
    assert reply.headers["X-Consul-KnownLeader"] == "true"
    assert reply.headers["X-Consul-LastContact"] == "0"
    assert reply.headers["X-Consul-Effective-Consistency"] == "leader"
    assert reply.headers["X-Consul-Default-ACL-Policy"] == "allow"


@pytest.mark.parametrize(
    ("flag", "consistency"),
    [
        pytest.param("stale", "stale", id="stale"),
        pytest.param("consistent", "consistent", id="consistent"),
        pytest.param("leader", "leader", id="leader"),
        pytest.param("max_stale=5s", "stale", id="max-stale"),
    ],
)
async def test_effective_consistency_header(api: Client, flag: str, consistency: str) -> None:
    key, _, value = flag.partition("=")
    reply = await api.get("/v1/catalog/services", [(key, value or None)])
    assert reply.status == 200, reply
    assert reply.headers["X-Consul-Effective-Consistency"] == consistency


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/v1/agent/services", id="agent-services"),
        pytest.param("/v1/agent/checks", id="agent-checks"),
        pytest.param("/v1/agent/self", id="agent-self"),
        pytest.param("/v1/agent/members", id="agent-members"),
        pytest.param("/v1/status/leader", id="status-leader"),
        pytest.param("/v1/status/peers", id="status-peers"),
        pytest.param("/v1/catalog/datacenters", id="catalog-datacenters"),
    ],
)
async def test_agent_local_reads_carry_no_index_headers(api: Client, path: str) -> None:
    reply = await api.get(path)
    assert reply.status == 200, reply
    for name in (*QUERY_META_HEADERS, "X-Consul-Effective-Consistency"):
        assert name not in reply.headers, f"{name} present on {path}"
    assert reply.headers["X-Consul-Default-ACL-Policy"] == "allow"
    assert reply.headers["Content-Type"].startswith("application/json")


async def test_agent_writes_answer_200_with_empty_body_and_acl_header(api: Client) -> None:
    name = uid("hdr")
    reply = await api.put("/v1/agent/service/register", json_body={"Name": name})
    api.cleanups.append(lambda: api.put(f"/v1/agent/service/deregister/{name}"))
    assert reply.status == 200, reply
    assert reply.body == b""
    assert "json" not in reply.headers.get("Content-Type", "")
    assert reply.headers["X-Consul-Default-ACL-Policy"] == "allow"
    assert "X-Consul-Index" not in reply.headers


async def test_pretty_json_in_dev_mode(api: Client) -> None:
    """Dev mode always indents JSON with 4 spaces and a trailing newline (1.2)."""
    reply = await api.get("/v1/catalog/datacenters")
    assert reply.text == '[\n    "dc1"\n]\n'


# --------------------------------------------------------------------------------------------- tokens (7)


@pytest.mark.parametrize(
    ("params", "headers"),
    [
        pytest.param([("token", "some-secret")], {}, id="query-param"),
        pytest.param([], {"X-Consul-Token": "some-secret"}, id="x-consul-token"),
        pytest.param([], {"Authorization": "Bearer some-secret"}, id="authorization-bearer"),
        pytest.param([], {"Authorization": "bearer some-secret extra"}, id="bearer-lowercase-extra-words"),
        pytest.param([], {"Authorization": "Basic dXNlcjpwYXNz"}, id="basic-ignored"),
    ],
)
async def test_tokens_accepted_when_acls_disabled(
    api: Client, kv_prefix: str, params: list[tuple[str, str]], headers: dict[str, str]
) -> None:
    key = f"{kv_prefix}token"
    put = await api.put(f"/v1/kv/{key}", params, data=b"v", headers=headers)
    assert put.status == 200, put
    assert put.json() is True
    got = await api.get(f"/v1/kv/{key}", params, headers=headers)
    assert got.status == 200, got
    assert "X-Consul-Results-Filtered-By-ACLs" not in got.headers  # ACLs disabled: nothing is ever filtered
    me = await api.get("/v1/agent/self", params, headers=headers)
    assert me.status == 200, me
    name = uid("tok")
    reg = await api.put("/v1/agent/service/register", params, json_body={"Name": name}, headers=headers)
    api.cleanups.append(lambda: api.put(f"/v1/agent/service/deregister/{name}"))
    assert reg.status == 200, reg


async def test_agent_token_endpoint_with_acls_disabled(api: Client) -> None:
    reply = await api.put("/v1/agent/token/default", json_body={"Token": "x"})
    assert reply.status == 401, reply
    assert reply.text == "ACL support disabled"


# --------------------------------------------------------------------------------------------- dc (1.5, 12.17)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param("GET", "/v1/catalog/services", None, id="catalog-services"),
        pytest.param("GET", "/v1/catalog/nodes", None, id="catalog-nodes"),
        pytest.param("GET", "/v1/catalog/service/consul", None, id="catalog-service"),
        pytest.param("GET", "/v1/catalog/node/whatever", None, id="catalog-node"),
        pytest.param("GET", "/v1/health/service/consul", None, id="health-service"),
        pytest.param("GET", "/v1/health/state/any", None, id="health-state"),
        pytest.param("GET", "/v1/kv/some/key", None, id="kv-get"),
        pytest.param("PUT", "/v1/kv/some/key", b"v", id="kv-put"),
        pytest.param("PUT", "/v1/catalog/register", b'{"Node": "n-dc2", "Address": "10.1.1.1"}', id="catalog-register"),
        pytest.param("PUT", "/v1/catalog/deregister", b'{"Node": "n-dc2"}', id="catalog-deregister"),
        pytest.param("GET", "/v1/session/list", None, id="session-list"),
        pytest.param("PUT", "/v1/session/create", None, id="session-create"),
        pytest.param("GET", "/v1/status/leader", None, id="status-leader"),
        pytest.param("GET", "/v1/status/peers", None, id="status-peers"),
    ],
)
async def test_unknown_datacenter_is_500_no_path(api: Client, method: str, path: str, body: bytes | None) -> None:
    reply = await api.request(method, path, [("dc", "dc-nowhere")], data=body)
    assert reply.status == 500, reply
    assert "No path to datacenter" in reply.text


async def test_own_datacenter_is_accepted(api: Client) -> None:
    reply = await api.get("/v1/catalog/services", [("dc", "dc1")])
    assert reply.status == 200, reply


# --------------------------------------------------------------------------------------------- query params (2.1, 2.5)


@pytest.mark.parametrize(
    ("path", "params", "body"),
    [
        pytest.param(
            "/v1/kv/some/key",
            [("stale", None), ("consistent", None)],
            "Cannot specify ?stale with ?consistent, conflicting semantics.",
            id="stale-consistent-kv",
        ),
        pytest.param(
            "/v1/catalog/services",
            [("stale", None), ("consistent", None)],
            "Cannot specify ?stale with ?consistent, conflicting semantics.",
            id="stale-consistent-catalog",
        ),
        pytest.param(
            "/v1/health/service/consul",
            [("stale", ""), ("consistent", "")],
            "Cannot specify ?stale with ?consistent, conflicting semantics.",
            id="stale-consistent-empty-values",
        ),
        pytest.param(
            "/v1/catalog/services",
            [("cached", None), ("consistent", None)],
            "Cannot specify ?cached with ?consistent, conflicting semantics.",
            id="cached-consistent",
        ),
        pytest.param(
            "/v1/catalog/services", [("max_stale", "abc")], 'Invalid max_stale value "abc"', id="bad-max-stale"
        ),
        pytest.param("/v1/kv/some/key", [("index", "1"), ("wait", "10")], "Invalid wait time", id="wait-without-unit"),
        pytest.param("/v1/catalog/services", [("wait", "soon")], "Invalid wait time", id="wait-garbage"),
        pytest.param("/v1/kv/some/key", [("index", "abc")], "Invalid index", id="index-abc"),
        pytest.param("/v1/health/service/consul", [("index", "-1")], "Invalid index", id="index-negative"),
        pytest.param("/v1/catalog/nodes", [("index", "1.5")], "Invalid index", id="index-float"),
    ],
)
async def test_bad_query_parameters_are_400(
    api: Client, path: str, params: list[tuple[str, str | None]], body: str
) -> None:
    reply = await api.get(path, params)
    assert reply.status == 400, reply
    assert reply.text == body


async def test_bad_cache_control_is_400(api: Client) -> None:
    reply = await api.get("/v1/catalog/services", headers={"Cache-Control": "max-age=soon"})
    assert reply.status == 400, reply
    assert reply.text == "Invalid Cache-Control header."


@pytest.mark.parametrize(
    "wait",
    [
        pytest.param("1s", id="seconds"),
        pytest.param("1000ms", id="milliseconds-go-client-style"),
        pytest.param("0.5m", id="fractional-minutes"),
    ],
)
async def test_wait_accepts_go_durations(api: Client, wait: str) -> None:
    reply = await api.get("/v1/catalog/services", [("wait", wait)])
    assert reply.status == 200, reply


# --------------------------------------------------------------------------------------------- bad requests keep state


async def test_bad_requests_never_change_stored_state(api: Client, kv_prefix: str) -> None:
    name = uid("keep")
    await api.register_service({"Name": name, "Port": 8080, "Meta": {"version": "1"}, "Check": {"TTL": "30s"}})
    key = f"{kv_prefix}keep"
    assert (await api.kv_put(key, b"good", [("flags", "7")])).status == 200

    services_before = (await api.get("/v1/agent/services")).json()
    checks_before = await api.agent_checks()
    kv_before = (await api.get(f"/v1/kv/{key}")).json()
    catalog_before = (await api.get(f"/v1/catalog/service/{name}")).json()

    bad_requests = [
        ("PUT", "/v1/agent/service/register", [], {"Name": name, "Port": 9090, "Meta": {"consul-x": "1"}}, None),
        ("PUT", "/v1/agent/service/register", [], {"Name": name, "Port": 9090, "Address": "0.0.0.0"}, None),
        (
            "PUT",
            "/v1/agent/service/register",
            [],
            {"Name": name, "Port": 9090, "Weights": {"Passing": 0, "Warning": 1}},
            None,
        ),
        ("PUT", "/v1/agent/service/register", [], {"Name": name, "Port": 9090, "Check": {"TTL": "10"}}, None),
        ("PUT", "/v1/agent/service/register", [], {"Name": name, "Check": {"TTL": "5s", "Interval": "5s"}}, None),
        ("PUT", f"/v1/agent/check/update/service:{name}", [], {"Status": "bogus", "Output": "x"}, None),
        ("PUT", f"/v1/kv/{key}", [("cas", "0"), ("acquire", "x")], None, b"bad"),
        ("PUT", f"/v1/kv/{key}", [("flags", "abc")], None, b"bad"),
        ("PUT", f"/v1/kv/{key}", [("cas", "abc")], None, b"bad"),
        ("PUT", f"/v1/kv/{key}", [], None, b"x" * (512 * 1024 + 1)),
        ("DELETE", f"/v1/kv/{key}", [("cas", "abc")], None, None),
        ("DELETE", f"/v1/kv/{kv_prefix}", [("recurse", None), ("cas", "1")], None, None),
        ("PUT", f"/v1/agent/service/maintenance/{name}", [("enable", "maybe")], None, None),
    ]
    for method, path, params, json_body, data in bad_requests:
        reply = await api.request(method, path, params, json_body=json_body, data=data)
        assert reply.status >= 400, (method, path, params, reply)

    assert (await api.get("/v1/agent/services")).json() == services_before
    assert await api.agent_checks() == checks_before
    assert (await api.get(f"/v1/kv/{key}")).json() == kv_before
    assert (await api.get(f"/v1/catalog/service/{name}")).json() == catalog_before


# --------------------------------------------------------------------------------------------- transport details


async def test_large_responses_are_gzipped_on_request(api: Client, kv_prefix: str) -> None:
    for i in range(30):
        await api.kv_put(f"{kv_prefix}gz/{i:02d}", b"x" * 100)
    big = await api.get(f"/v1/kv/{kv_prefix}gz/", [("recurse", None)], headers={"Accept-Encoding": "gzip"})
    assert big.status == 200, big
    assert big.headers.get("Content-Encoding") == "gzip"
    assert len(big.json()) == 30  # aiohttp decompressed it
    small = await api.get(f"/v1/kv/{kv_prefix}gz/00", headers={"Accept-Encoding": "gzip"})
    assert small.status == 200, small
    assert "Content-Encoding" not in small.headers
    plain = await api.get(f"/v1/kv/{kv_prefix}gz/", [("recurse", None)], headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers


@pytest.mark.parametrize(
    ("path", "location"),
    [
        pytest.param("/v1/catalog/service", "/v1/catalog/service/", id="catalog-service"),
        pytest.param("/v1/health/service", "/v1/health/service/", id="health-service"),
        pytest.param("/v1/kv", "/v1/kv/", id="kv"),
    ],
)
async def test_subtree_root_without_slash_redirects(api: Client, path: str, location: str) -> None:
    reply = await api.get(path)
    assert reply.status == 301, reply
    assert reply.headers["Location"] == location


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/v1/catalog/services", id="catalog-services"),
        pytest.param("/v1/kv/conformance-never-written", id="kv"),
        pytest.param("/v1/health/service/consul", id="health-service-non-blocking"),
    ],
)
async def test_query_backend_header(api: Client, path: str) -> None:
    reply = await api.get(path)
    assert reply.headers["X-Consul-Query-Backend"] == "blocking-query"


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/v1/catalog/services", id="catalog-services"),
        pytest.param("/v1/health/service/consul", id="health-service"),
    ],
)
async def test_cached_reads_report_cache_status(api: Client, path: str) -> None:
    reply = await api.get(path, [("cached", None)])
    assert reply.status == 200, reply
    assert reply.headers["X-Cache"] in ("HIT", "MISS")
    if reply.headers["X-Cache"] == "HIT":
        assert int(reply.headers["Age"]) >= 0


@pytest.mark.parametrize(
    ("path", "location"),
    [
        pytest.param("/v1//catalog/services", "/v1/catalog/services", id="double-slash"),
        pytest.param("/v1/./catalog/services", "/v1/catalog/services", id="dot-segment"),
        pytest.param("/v1/kv/conformance/x/../y", "/v1/kv/conformance/y", id="dot-dot-segment"),
    ],
)
async def test_non_canonical_paths_redirect_to_the_cleaned_path(api: Client, path: str, location: str) -> None:
    """Go's ServeMux answers a non-canonical path with a 301 to the cleaned one (1.1); the handler never sees it."""
    reply = await api.get(path)
    assert reply.status == 301, reply
    assert reply.headers["Location"] == location


async def test_non_canonical_kv_write_is_redirected_not_stored(api: Client, kv_prefix: str) -> None:
    """ServeMux cleans the path for every method (not only GET), so a PUT to ``a/../b`` stores nothing."""
    reply = await api.put(f"/v1/kv/{kv_prefix}a/../b", data=b"traversal")
    assert reply.status == 301, reply
    assert reply.headers["Location"] == f"/v1/kv/{kv_prefix}b"
    assert (await api.get(f"/v1/kv/{kv_prefix}", [("recurse", None)])).status == 404
