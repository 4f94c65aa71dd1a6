"""Checks the agent runs itself: HTTP and TCP checks against real sockets, and DeregisterCriticalServiceAfter.

Reference: consul-api.md sections 3.1 (interval floor, initial critical), 9 (interval checks, reaper) and 12 item 19.
The reaping tests need the dev agent's time knobs (real Consul raises the timeout to >= 1m and reaps every 30s).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from tests.conformance.support import Client, eventually, uid

pytestmark = pytest.mark.asyncio

REAP_REASON = "needs a sub-second reaper; real Consul raises DeregisterCriticalServiceAfter to 1m and reaps every 30s"


async def status_of(api: Client, check_id: str) -> str | None:
    check = (await api.agent_checks()).get(check_id)
    return None if check is None else str(check["Status"])


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        pytest.param("/ok", "passing", id="200-passing"),
        pytest.param("/created", "passing", id="201-passing"),
        pytest.param("/warn", "warning", id="429-warning"),
        pytest.param("/fail", "critical", id="500-critical"),
        pytest.param("/missing", "critical", id="404-critical"),
    ],
)
async def test_http_check_status_follows_upstream(api: Client, upstream: Any, path: str, expected: str) -> None:
    name = uid("httpchk")
    # A 100ms interval is legal and silently raised to 1s (py-consul registers one).
    await api.register_service({"Name": name, "Check": {"HTTP": f"{upstream.url}{path}", "Interval": "100ms"}})
    check_id = f"service:{name}"
    assert await status_of(api, check_id) == "critical"  # critical until the first run
    code = {"/ok": "200", "/created": "201", "/warn": "429", "/fail": "500", "/missing": "404"}[path]
    # Wait until the check has run (its output names the upstream's status code), then read the status.
    check = await eventually(
        lambda: api.agent_checks(), lambda c: code in c[check_id]["Output"], timeout=5, interval=0.1
    )
    assert code in check[check_id]["Output"], check[check_id]
    await status_of(api, check_id)
    check = (await api.agent_checks())[check_id]
    assert check["Type"] == "http"
    entries = (await api.get(f"/v1/health/service/{name}")).json()
    assert entries[0]["Checks"][-1]["Status"] == expected


async def test_http_check_recovers_when_upstream_appears(api: Client, consul: Any) -> None:
    """Connection refused is critical; the same URL turning healthy flips the check to passing."""
    from aiohttp import web

    port = closed_port()
    name = uid("httprecover")
    await api.register_check({"Name": name, "HTTP": f"http://{consul.check_host}:{port}/", "Interval": "1s"})
    await asyncio.sleep(2.5)
    assert await status_of(api, name) == "critical"

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, consul.bind_host, port).start()
        got = await eventually(lambda: status_of(api, name), lambda s: s == "passing", timeout=5)
        assert got == "passing"
    finally:
        await runner.cleanup()


async def test_tcp_check_open_port_passes(api: Client, upstream: Any) -> None:
    name = uid("tcpopen")
    await api.register_check(
        {"Name": name, "TCP": f"{upstream.host}:{upstream.port}", "Interval": "1s", "Timeout": "1s"}
    )
    got = await eventually(lambda: status_of(api, name), lambda s: s == "passing", timeout=5)
    assert got == "passing"
    assert (await api.agent_checks())[name]["Type"] == "tcp"


async def test_tcp_check_closed_port_is_critical(api: Client, consul: Any) -> None:
    name = uid("tcpclosed")
    await api.register_check(
        {"Name": name, "TCP": f"{consul.check_host}:{closed_port()}", "Interval": "1s", "Timeout": "1s"}
    )
    await asyncio.sleep(2.5)
    assert await status_of(api, name) == "critical"


async def test_interval_given_in_nanoseconds(api: Client, upstream: Any) -> None:
    name = uid("nsint")
    await api.register_check(
        {"Name": name, "HTTP": f"{upstream.url}/ok", "Interval": 1_000_000_000, "Timeout": 2_000_000_000}
    )
    got = await eventually(lambda: status_of(api, name), lambda s: s == "passing", timeout=5)
    assert got == "passing"


# --------------------------------------------------------------------------------------------- reaping (9)


@pytest.mark.dev_agent_only(REAP_REASON)
@pytest.mark.dev_agent(reap_interval=0.25, min_deregister_after=0.5)
@pytest.mark.parametrize(
    "key",
    [
        pytest.param("DeregisterCriticalServiceAfter", id="camel"),
        pytest.param("deregister_critical_service_after", id="snake"),
        pytest.param("deregistercriticalserviceafter", id="lowercase"),
    ],
)
async def test_critical_service_is_reaped_with_all_checks(api: Client, key: str) -> None:
    name = uid("reap")
    await api.register_service(
        {"Name": name, "Checks": [{"TTL": "30s", key: "1s"}, {"TTL": "30s", "Status": "passing"}]}
    )
    services = await eventually(
        lambda: api.get("/v1/agent/services"), lambda r: name not in r.json(), timeout=6, interval=0.1
    )
    assert name not in services.json()
    assert not [c for c in await api.agent_checks() if name in c]
    assert (await api.get(f"/v1/catalog/service/{name}")).json() == []


@pytest.mark.dev_agent_only(REAP_REASON)
@pytest.mark.dev_agent(reap_interval=0.25, min_deregister_after=0.5)
async def test_reaping_accepts_nanosecond_timeout(api: Client) -> None:
    name = uid("reapns")
    await api.register_service({"Name": name, "Check": {"TTL": "30s", "DeregisterCriticalServiceAfter": 1_000_000_000}})
    services = await eventually(lambda: api.get("/v1/agent/services"), lambda r: name not in r.json(), timeout=6)
    assert name not in services.json()


@pytest.mark.dev_agent_only(REAP_REASON)
@pytest.mark.dev_agent(reap_interval=0.25, min_deregister_after=0.5)
async def test_critical_since_resets_when_check_leaves_critical(api: Client) -> None:
    name = uid("reapreset")
    await api.register_service({"Name": name, "Check": {"TTL": "30s", "DeregisterCriticalServiceAfter": "2s"}})
    for _ in range(4):  # keep flipping: never continuously critical for 2s
        await asyncio.sleep(0.8)
        assert (await api.put(f"/v1/agent/check/pass/service:{name}")).status == 200
        await asyncio.sleep(0.2)
        assert (await api.put(f"/v1/agent/check/fail/service:{name}")).status == 200
    assert name in (await api.get("/v1/agent/services")).json()
    assert (await api.put(f"/v1/agent/check/pass/service:{name}")).status == 200
    await asyncio.sleep(3)
    assert name in (await api.get("/v1/agent/services")).json()  # passing services are never reaped
    assert (await api.put(f"/v1/agent/check/fail/service:{name}")).status == 200
    services = await eventually(lambda: api.get("/v1/agent/services"), lambda r: name not in r.json(), timeout=6)
    assert name not in services.json()


@pytest.mark.dev_agent_only("needs the fast reaper knob to show the 1m floor within seconds")
@pytest.mark.dev_agent(reap_interval=0.25)
async def test_deregister_after_is_raised_to_one_minute(api: Client) -> None:
    """Without ``min_deregister_after`` the default 1m floor applies: a 1s timeout does not reap within seconds."""
    name = uid("floor")
    await api.register_service({"Name": name, "Check": {"TTL": "30s", "DeregisterCriticalServiceAfter": "1s"}})
    await asyncio.sleep(3)
    assert name in (await api.get("/v1/agent/services")).json()


# --------------------------------------------------------------------------------------------- check runner details


async def test_http_check_interval_is_raised_to_one_second(api: Client, upstream: Any) -> None:
    name = uid("floor1s")
    await api.register_check({"Name": name, "HTTP": f"{upstream.url}/ok", "Interval": "100ms"})
    await eventually(lambda: status_of(api, name), lambda s: s == "passing", timeout=5)
    first = len(upstream.seen)
    await asyncio.sleep(3.2)
    runs = len(upstream.seen) - first
    assert 1 <= runs <= 6, f"{runs} runs in 3.2 s: a 100ms interval must run at most about once a second"


async def test_http_check_sends_method_header_and_body(api: Client, upstream: Any) -> None:
    name = uid("httpdef")
    await api.register_check(
        {
            "Name": name,
            "HTTP": f"{upstream.url}/created",
            "Method": "POST",
            "Header": {"X-Probe": ["one"], "Authorization": ["Bearer probe-token"]},
            "Body": "ping",
            "Interval": "1s",
        }
    )
    await eventually(lambda: status_of(api, name), lambda s: s == "passing", timeout=5)
    request = upstream.seen[0]
    assert (request.method, request.path, request.body) == ("POST", "/created", b"ping")
    assert request.headers["X-Probe"] == "one"
    assert request.headers["Authorization"] == "Bearer probe-token"


async def test_http_check_default_request(api: Client, upstream: Any) -> None:
    name = uid("httpget")
    await api.register_check({"Name": name, "HTTP": f"{upstream.url}/ok", "Interval": "1s"})
    await eventually(lambda: status_of(api, name), lambda s: s == "passing", timeout=5)
    request = upstream.seen[0]
    assert request.method == "GET"
    assert request.headers.get("User-Agent") == "Consul Health Check"


async def test_http_check_timeout_is_critical(api: Client, upstream: Any) -> None:
    name = uid("httpslow")
    await api.register_check({"Name": name, "HTTP": f"{upstream.url}/slow", "Interval": "1s", "Timeout": "300ms"})
    check = await eventually(lambda: api.agent_checks(), lambda c: c[name]["Output"] != "", timeout=5, interval=0.1)
    assert check[name]["Status"] == "critical"
