"""The HTTP layer: ServeMux routing, error texts, headers, JSON formatting, and the 500 for the unexpected."""

from __future__ import annotations

import gzip
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from consulgw.devagent import DevAgent
from consulgw.devagent.http import Call, HttpApi, Reply, Router
from tests.devagent.support import Api


@pytest.mark.parametrize(
    ("method", "path", "status", "text", "allow"),
    [
        pytest.param("GET", "/v1/agent/check/pass/x", 405, "method GET not allowed", "OPTIONS,PUT", id="put-only"),
        pytest.param("PUT", "/v1/agent/service/register/x", 405, "method PUT not allowed", "OPTIONS,GET",
                     id="prefix-route-wins"),
        pytest.param("POST", "/v1/kv/a", 405, "method POST not allowed", "OPTIONS,GET,PUT,DELETE", id="kv"),
        pytest.param("OPTIONS", "/v1/kv/a", 200, "", "OPTIONS,GET,PUT,DELETE", id="options"),
        pytest.param("GET", "/v1/nope", 404, "Invalid URL path: not a recognized HTTP API endpoint\n", None,
                     id="unknown-v1"),
        pytest.param("GET", "/nope", 404,
                     "Invalid URL path: if attempting to use the HTTP API, ensure the path starts with '/v1/'\n",
                     None, id="not-v1"),
        pytest.param("PUT", "/v1/agent/token/default", 401, "ACL support disabled", None, id="acl-disabled"),
        pytest.param("GET", "/v1/kv/", 400, "Missing key name", None, id="kv-root-without-recurse"),
    ],
)  # fmt: skip
async def test_routing(api: Api, method: str, path: str, status: int, text: str, allow: str | None) -> None:
    reply = await api.call(method, path)
    assert (reply.status, reply.text) == (status, text)
    assert reply.headers.get("Allow") == allow
    assert reply.headers["X-Consul-Default-ACL-Policy"] == "allow"


@pytest.mark.parametrize(
    ("path", "location"),
    [
        pytest.param("/", "/ui/", id="root-to-ui"),
        pytest.param("/v1/catalog/service", "/v1/catalog/service/", id="subtree-root"),
        pytest.param("/v1//kv/a", "/v1/kv/a", id="double-slash"),
    ],
)
async def test_redirects(api: Api, path: str, location: str) -> None:
    reply = await api.get(path)
    assert reply.status == 301
    assert reply.headers["Location"] == location


async def test_json_is_pretty_with_trailing_newline_and_html_escaped(api: Api) -> None:
    await api.call("PUT", "/v1/kv/<tag>&", data=b"x")
    reply = await api.get("/v1/kv/", {"keys": ""})
    assert reply.text == '[\n    "\\u003ctag\\u003e\\u0026"\n]\n'
    assert reply.headers["Content-Type"] == "application/json"


async def test_agent_writes_answer_an_empty_200_without_json_type(api: Api) -> None:
    reply = await api.put("/v1/agent/service/register", {"Name": "web"})
    assert (reply.status, reply.body) == (200, b"")
    assert "json" not in reply.headers.get("Content-Type", "")


async def test_decode_errors(api: Api) -> None:
    empty = await api.call("PUT", "/v1/agent/service/register", data=b"")
    assert (empty.status, empty.text) == (400, "Request decode failed: EOF")
    wrong = await api.put("/v1/agent/service/register", {"Name": "web", "Port": "80"})
    assert wrong.status == 400
    assert wrong.text.startswith("Request decode failed: json: cannot unmarshal string")
    assert wrong.headers["Content-Type"].startswith("text/plain")


@pytest.mark.parametrize(
    "headers_or_params",
    [
        pytest.param({"params": {"token": "secret"}}, id="query"),
        pytest.param({"headers": {"X-Consul-Token": "secret"}}, id="header"),
        pytest.param({"headers": {"Authorization": "Bearer secret"}}, id="bearer"),
        pytest.param({"headers": {"Authorization": "Basic dTpw"}}, id="basic-ignored"),
    ],
)
async def test_tokens_are_accepted_and_ignored(api: Api, headers_or_params: dict[str, Any]) -> None:
    reply = await api.call("PUT", "/v1/kv/t", data=b"1", **headers_or_params)
    assert (reply.status, reply.text) == (200, "true\n")


async def test_unknown_datacenter(api: Api) -> None:
    for path in ("/v1/catalog/services", "/v1/health/service/x", "/v1/kv/a", "/v1/status/leader"):
        reply = await api.get(path, {"dc": "dc2"})
        assert (reply.status, reply.text) == (500, "No path to datacenter"), path
    assert (await api.get("/v1/catalog/services", {"dc": "dc1"})).status == 200


async def test_large_answers_are_gzipped_on_request(dev_agent: DevAgent, session: aiohttp.ClientSession) -> None:
    api = Api(dev_agent.url, session)
    for n in range(30):
        await api.register({"Name": f"service-{n}", "Tags": ["a-rather-long-tag-to-grow-the-body"]})
    async with session.get(
        dev_agent.url + "/v1/catalog/services", headers={"Accept-Encoding": "gzip"}, auto_decompress=False
    ) as resp:
        raw = await resp.read()
        assert resp.headers["Content-Encoding"] == "gzip"
    assert b"service-29" in gzip.decompress(raw)


async def test_unexpected_exception_is_a_one_line_500(
    aiohttp_raw_server: Callable[..., Awaitable[Any]], session: aiohttp.ClientSession
) -> None:
    async def broken(call: Call) -> Reply:
        raise RuntimeError("boom\nsecond line")

    router = Router()
    router.add("/v1/broken", ("GET",), broken)
    server = await aiohttp_raw_server(HttpApi(router))
    async with session.get(str(server.make_url("/v1/broken"))) as resp:
        body = await resp.text()
        assert resp.status == 500
    assert body == "Internal error: RuntimeError: boom"
    assert "Traceback" not in body


async def test_compact_json_when_pretty_is_off(
    dev_agent_factory: Callable[..., Awaitable[DevAgent]], session: aiohttp.ClientSession
) -> None:
    agent = await dev_agent_factory(pretty=False)
    api = Api(agent.url, session)
    assert (await api.get("/v1/catalog/datacenters")).text == '["dc1"]'
    assert (await api.get("/v1/catalog/datacenters", {"pretty": ""})).text == '[\n    "dc1"\n]\n'


async def test_expect_100_continue_is_answered(dev_agent: DevAgent, session: aiohttp.ClientSession) -> None:
    async with session.put(dev_agent.url + "/v1/kv/big", data=b"x" * 5000, expect100=True) as resp:
        assert (resp.status, await resp.text()) == (200, "true\n")
