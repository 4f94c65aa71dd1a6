"""Check runners against real servers on 127.0.0.1, TTL expiry, the critical-service reaper and session binding."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from consulgw.devagent import DevAgent
from tests.devagent.support import Api, NoJitter


async def eventually(probe: Callable[[], Awaitable[Any]], want: Callable[[Any], bool], timeout: float = 8.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if want(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout}s; last value: {value!r}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def agent_api(dev_agent_factory: Callable[..., Awaitable[DevAgent]], session: aiohttp.ClientSession) -> Api:
    agent = await dev_agent_factory(rng=NoJitter(), reap_interval=0.2, min_deregister_after=0.5)
    return Api(agent.url, session)


@pytest.fixture
async def upstream(aiohttp_server: Callable[..., Awaitable[Any]]) -> Any:
    hits: list[str] = []

    async def status(request: web.Request) -> web.Response:
        hits.append(request.method)
        code = int(request.match_info["code"])
        return web.Response(status=code, text=f"answer {code}")

    app = web.Application()
    app.router.add_route("*", "/status/{code}", status)
    server = await aiohttp_server(app)
    server.hits = hits
    return server


async def check(api: Api, check_id: str) -> dict[str, Any]:
    checks = (await api.get("/v1/agent/checks")).json()
    result: dict[str, Any] = checks.get(check_id, {})
    return result


@pytest.mark.parametrize(
    ("code", "status"),
    [
        pytest.param(200, "passing", id="2xx-passing"),
        pytest.param(204, "passing", id="204-passing"),
        pytest.param(429, "warning", id="429-warning"),
        pytest.param(500, "critical", id="5xx-critical"),
        pytest.param(404, "critical", id="404-critical"),
    ],
)
async def test_http_check_status_from_response(agent_api: Api, upstream: Any, code: int, status: str) -> None:
    url = str(upstream.make_url(f"/status/{code}"))
    await agent_api.register({"Name": "web", "Check": {"HTTP": url, "Interval": "100ms"}})
    found = await eventually(lambda: check(agent_api, "service:web"), lambda c: c.get("Output", "") != "")
    assert found["Status"] == status
    assert found["Output"].startswith(f"HTTP GET {url}: {code} ")
    assert found["Interval"] == "100ms"


async def test_http_check_method_and_header(agent_api: Api, upstream: Any) -> None:
    url = str(upstream.make_url("/status/200"))
    body = {"Name": "hc", "HTTP": url, "Method": "POST", "Header": {"X-Probe": ["1"]}, "Interval": "1s"}
    assert (await agent_api.put("/v1/agent/check/register", body)).status == 200
    await eventually(lambda: check(agent_api, "hc"), lambda c: c.get("Status") == "passing")
    assert "POST" in upstream.hits


async def test_http_check_unreachable_is_critical(agent_api: Api, free_port: Callable[[], int]) -> None:
    url = f"http://127.0.0.1:{free_port()}/"
    await agent_api.put("/v1/agent/check/register", {"Name": "down", "HTTP": url, "Interval": "1s"})
    found = await eventually(lambda: check(agent_api, "down"), lambda c: c.get("Output", "") != "")
    assert found["Status"] == "critical"
    assert found["Output"].startswith(f'Get "{url}": dial tcp')


async def test_tcp_check(agent_api: Api, free_port: Callable[[], int]) -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await agent_api.put("/v1/agent/check/register", {"Name": "up", "TCP": f"127.0.0.1:{port}", "Interval": "1s"})
        up = await eventually(lambda: check(agent_api, "up"), lambda c: c.get("Status") == "passing")
        assert up["Output"] == f"TCP connect 127.0.0.1:{port}: Success"
    finally:
        server.close()
        await server.wait_closed()
    closed = free_port()
    await agent_api.put("/v1/agent/check/register", {"Name": "dn", "TCP": f"127.0.0.1:{closed}", "Interval": "1s"})
    down = await eventually(lambda: check(agent_api, "dn"), lambda c: c.get("Output", "") != "")
    assert down["Status"] == "critical"
    assert "connection refused" in down["Output"]


async def test_ttl_expiry_texts(agent_api: Api) -> None:
    await agent_api.put("/v1/agent/check/register", {"Name": "t", "TTL": "200ms"})
    expired = await eventually(lambda: check(agent_api, "t"), lambda c: c.get("Output") == "TTL expired")
    assert expired["Status"] == "critical"
    await agent_api.put("/v1/agent/check/pass/t", params={"note": "all good"})
    assert (await check(agent_api, "t"))["Status"] == "passing"
    last = await eventually(lambda: check(agent_api, "t"), lambda c: c.get("Status") == "critical")
    assert last["Output"] == "TTL expired (last output before timeout follows): all good"


async def test_non_ttl_check_refuses_ttl_updates(agent_api: Api, upstream: Any) -> None:
    await agent_api.put("/v1/agent/check/register", {"Name": "h", "HTTP": str(upstream.make_url("/status/200")),
                                                     "Interval": "10s"})  # fmt: skip
    reply = await agent_api.put("/v1/agent/check/pass/h")
    assert (reply.status, reply.text) == (500, 'CheckID "h" does not have associated TTL')


async def test_reaper_removes_service_critical_longer_than_minimum(agent_api: Api) -> None:
    await agent_api.register({"Name": "doomed", "Check": {"TTL": "30s", "DeregisterCriticalServiceAfter": "10ms"}})
    await agent_api.register({"Name": "kept", "Check": {"TTL": "30s", "Status": "passing",
                                                        "DeregisterCriticalServiceAfter": "10ms"}})  # fmt: skip
    started = time.monotonic()
    services = await eventually(
        lambda: agent_api.get("/v1/agent/services"), lambda r: "doomed" not in r.json(), timeout=10
    )
    assert time.monotonic() - started >= 0.5  # the minimum (here 0.5s, Consul's 1m) applies to the 10ms asked
    assert "kept" in services.json()
    catalog = await agent_api.get("/v1/catalog/service/doomed")
    assert catalog.json() == []


async def test_critical_check_invalidates_bound_session_and_releases_locks(agent_api: Api) -> None:
    await agent_api.register({"Name": "locker", "Check": {"TTL": "30s", "Status": "passing"}})
    created = await agent_api.put(
        "/v1/session/create", {"Name": "s", "ServiceChecks": [{"ID": "service:locker"}], "LockDelay": "1s"}
    )
    session = created.json()["ID"]
    assert (await agent_api.call("PUT", "/v1/kv/lock", {"acquire": session}, data=b"v")).json() is True
    await agent_api.put("/v1/agent/check/fail/service:locker")
    assert (await agent_api.get(f"/v1/session/info/{session}")).json() == []
    entry = (await agent_api.get("/v1/kv/lock")).json()[0]
    assert "Session" not in entry
    other = (await agent_api.put("/v1/session/create", {"Name": "o"})).json()["ID"]
    assert (await agent_api.call("PUT", "/v1/kv/lock", {"acquire": other}, data=b"v")).json() is False  # lock-delay


async def test_stop_cancels_check_runners(
    dev_agent_factory: Callable[..., Awaitable[DevAgent]], session: aiohttp.ClientSession, upstream: Any
) -> None:
    agent = await dev_agent_factory(rng=NoJitter())
    api = Api(agent.url, session)
    await api.register({"Name": "web", "Check": {"HTTP": str(upstream.make_url("/status/200")), "Interval": "1s"}})
    await eventually(lambda: check(api, "service:web"), lambda c: c.get("Status") == "passing")
    await agent.stop()
    seen = len(upstream.hits)
    await asyncio.sleep(1.3)
    assert len(upstream.hits) == seen


@pytest.mark.parametrize(
    ("args", "status"),
    [
        pytest.param(["sh", "-c", "echo fine"], "passing", id="exit-0"),
        pytest.param(["sh", "-c", "echo meh; exit 1"], "warning", id="exit-1"),
        pytest.param(["sh", "-c", "echo bad; exit 2"], "critical", id="exit-2"),
    ],
)
async def test_script_checks_when_enabled(
    dev_agent_factory: Callable[..., Awaitable[DevAgent]],
    session: aiohttp.ClientSession,
    args: list[str],
    status: str,
) -> None:
    agent = await dev_agent_factory(rng=NoJitter(), enable_script_checks=True)
    api = Api(agent.url, session)
    await api.put("/v1/agent/check/register", {"Name": "s", "Args": args, "Interval": "10s"})
    found = await eventually(lambda: check(api, "s"), lambda c: c.get("Output", "") != "")
    assert found["Status"] == status
    assert found["Type"] == "script"


async def test_alias_check_follows_the_aliased_service(agent_api: Api) -> None:
    await agent_api.register({"Name": "web", "Check": {"TTL": "30s"}})
    await agent_api.register({"Name": "sidecar", "Check": {"AliasService": "web"}})
    alias = await check(agent_api, "service:sidecar")
    assert (alias["Status"], alias["Type"]) == ("critical", "alias")
    assert alias["Output"] == "Aliased check \"Service 'web' check\" failing: "
    await agent_api.put("/v1/agent/check/pass/service:web")
    alias = await check(agent_api, "service:sidecar")
    assert (alias["Status"], alias["Output"]) == ("passing", "All checks passing.")
    await agent_api.put("/v1/agent/check/warn/service:web", params={"note": "slow"})
    alias = await check(agent_api, "service:sidecar")
    assert (alias["Status"], alias["Output"]) == ("warning", "Aliased check \"Service 'web' check\" failing: slow")
    await agent_api.put("/v1/agent/service/deregister/web")
    alias = await check(agent_api, "service:sidecar")
    assert alias["Status"] == "critical"
    assert alias["Output"].startswith("Service web could not be found on node")


async def test_udp_check(agent_api: Api, free_port: Callable[[], int]) -> None:
    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: Any) -> None:
            self.transport.sendto(data, addr)  # type: ignore[attr-defined]

    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    try:
        body = {"Name": "u", "UDP": f"127.0.0.1:{port}", "Interval": "1s", "Timeout": "500ms"}
        await agent_api.put("/v1/agent/check/register", body)
        up = await eventually(lambda: check(agent_api, "u"), lambda c: c.get("Status") == "passing")
        assert up["Output"] == f"UDP connect 127.0.0.1:{port}: Success"
    finally:
        transport.close()
    closed = free_port()
    body = {"Name": "d", "UDP": f"127.0.0.1:{closed}", "Interval": "1s", "Timeout": "500ms"}
    await agent_api.put("/v1/agent/check/register", body)
    down = await eventually(lambda: check(agent_api, "d"), lambda c: c.get("Output", "") != "")
    assert down["Status"] == "critical"
    assert "connection refused" in down["Output"]
