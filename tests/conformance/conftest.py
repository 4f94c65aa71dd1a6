"""Fixtures for the black-box conformance suite.

``consul`` yields a target with ``.url`` and ``.kind``: always the in-process ``DevAgent`` ("dev-agent"), and a
real Consul ("real") when ``CONSUL_HTTP_ADDR`` is set or a Docker engine can run ``hashicorp/consul:1.22``
(``agent -dev -client 0.0.0.0``). Without either, the real parametrisation is skipped with a one-line reason.

``acl_consul`` is the same pair with ACLs enabled (``default_policy = "deny"``): a dev agent started with an
``initial_management`` token, and a real Consul when ``CONSUL_HTTP_ADDR`` and ``CONSUL_HTTP_TOKEN`` (a management
token of an ACL-enabled Consul) are set, or when Docker can run the image with ``CONSUL_LOCAL_CONFIG`` enabling ACLs.
``acl_api`` is a client of it carrying the management token.

Markers (registered here):
- ``dev_agent_only(reason)``: the test needs the dev agent's time knobs; skipped against real Consul.
- ``dev_agent(**knobs)``: keyword arguments passed to ``DevAgent(...)`` (e.g. ``reap_interval=0.5``, seconds).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web

from tests.conformance.support import Client, uid

REAL_IMAGE = "hashicorp/consul:1.22"


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsulTarget:
    url: str
    kind: str  # "dev-agent" or "real"
    # Address a check run *by the agent* uses to reach a server started by the test, and where that server binds.
    check_host: str = "127.0.0.1"
    bind_host: str = "127.0.0.1"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "dev_agent_only(reason): needs the dev agent's time knobs; skipped on real Consul"
    )
    config.addinivalue_line("markers", "dev_agent(**knobs): keyword arguments for DevAgent(...) in this test")


def _docker_unavailable() -> str | None:
    """None when a Docker engine answers, else a short reason."""
    host = os.environ.get("DOCKER_HOST", "")
    if not host and not os.path.exists("/var/run/docker.sock"):
        return "no Docker engine"
    client = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import docker  # type: ignore[import-untyped]

            client = docker.from_env()
            client.ping()
    except Exception:  # any failure means "no usable engine"
        return "no Docker engine"
    finally:
        if client is not None:
            client.close()
    return None


def _wait_for_leader(url: str, deadline_s: float = 60.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/v1/status/leader", timeout=2) as resp:
                if json.loads(resp.read()) not in ("", None):
                    return
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"real Consul at {url} elected no leader within {deadline_s:.0f}s")


@pytest.fixture(scope="session")
def real_consul() -> Iterator[ConsulTarget]:
    addr = os.environ.get("CONSUL_HTTP_ADDR", "").strip()
    if addr:
        if "://" not in addr:
            addr = "http://" + addr
        _wait_for_leader(addr.rstrip("/"), 10.0)
        yield ConsulTarget(url=addr.rstrip("/"), kind="real")
        return
    reason = _docker_unavailable()
    if reason is not None:
        pytest.skip(f"real Consul: CONSUL_HTTP_ADDR unset and {reason}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from testcontainers.core.container import DockerContainer

    container = (
        DockerContainer(REAL_IMAGE)
        .with_command("agent -dev -client 0.0.0.0")
        .with_exposed_ports(8500)
        .with_kwargs(extra_hosts={"host.docker.internal": "host-gateway"})
    )
    container.start()
    try:
        url = f"http://{container.get_container_host_ip()}:{container.get_exposed_port(8500)}"
        _wait_for_leader(url)
        # Checks run inside the container; test upstreams listen on all interfaces to be reachable from it.
        yield ConsulTarget(url=url, kind="real", check_host="host.docker.internal", bind_host="0.0.0.0")
    finally:
        container.stop()


ACL_MANAGEMENT = "a0c1d2e3-0000-4000-8000-00000000c0de"  # the initial_management token of the ACL targets


@dataclass(frozen=True, slots=True, kw_only=True)
class AclTarget:
    url: str
    kind: str  # "dev-agent" or "real"
    management: str  # a token with the global-management policy
    default_policy: str  # "allow" or "deny", as the agent reports it


def _agent_acl_state(url: str, token: str) -> tuple[bool, str]:
    request = urllib.request.Request(f"{url}/v1/agent/self", headers={"X-Consul-Token": token})
    with urllib.request.urlopen(request, timeout=5) as resp:
        debug = json.loads(resp.read()).get("DebugConfig", {})
    return bool(debug.get("ACLsEnabled")), str(debug.get("ACLDefaultPolicy", ""))


@pytest.fixture(scope="session")
def real_acl_consul() -> Iterator[AclTarget]:
    addr = os.environ.get("CONSUL_HTTP_ADDR", "").strip()
    token = os.environ.get("CONSUL_HTTP_TOKEN", "").strip()
    if addr:
        if not token:
            pytest.skip("real Consul with ACLs: CONSUL_HTTP_TOKEN (a management token) is unset")
        if "://" not in addr:
            addr = "http://" + addr
        url = addr.rstrip("/")
        _wait_for_leader(url, 10.0)
        enabled, policy = _agent_acl_state(url, token)
        if not enabled:
            pytest.skip(f"real Consul with ACLs: ACLs are not enabled on {url}")
        yield AclTarget(url=url, kind="real", management=token, default_policy=policy)
        return
    reason = _docker_unavailable()
    if reason is not None:
        pytest.skip(f"real Consul with ACLs: CONSUL_HTTP_ADDR unset and {reason}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from testcontainers.core.container import DockerContainer

    local = {"acl": {"enabled": True, "default_policy": "deny", "tokens": {"initial_management": ACL_MANAGEMENT}}}
    container = (
        DockerContainer(REAL_IMAGE)
        .with_command("agent -dev -client 0.0.0.0")
        .with_env("CONSUL_LOCAL_CONFIG", json.dumps(local))
        .with_exposed_ports(8500)
    )
    container.start()
    try:
        url = f"http://{container.get_container_host_ip()}:{container.get_exposed_port(8500)}"
        _wait_for_leader(url)
        yield AclTarget(url=url, kind="real", management=ACL_MANAGEMENT, default_policy="deny")
    finally:
        container.stop()


@pytest.fixture(params=["dev-agent", "real"])
async def acl_consul(request: pytest.FixtureRequest) -> AsyncIterator[AclTarget]:
    if request.param == "real":
        only = request.node.get_closest_marker("dev_agent_only")
        if only is not None:
            pytest.skip(f"dev-agent only: {only.args[0] if only.args else only.kwargs.get('reason', '')}")
        yield request.getfixturevalue("real_acl_consul")
        return
    from consulgw.devagent import DevAgent
    from consulgw.devagent.agent_config import AclConfig

    acl = AclConfig(enabled=True, default_policy="deny", initial_management=ACL_MANAGEMENT)
    async with DevAgent(node="test-node", port=0, acl=acl) as agent:
        yield AclTarget(url=agent.url, kind="dev-agent", management=ACL_MANAGEMENT, default_policy="deny")


@pytest.fixture
async def acl_api(acl_consul: AclTarget) -> AsyncIterator[Client]:
    """A client of the ACL-enabled target carrying its management token."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        client = Client(acl_consul.url, session, token=acl_consul.management)
        try:
            yield client
        finally:
            if acl_consul.kind == "real":
                await client.run_cleanups()


@pytest.fixture
async def acl_kv_prefix(acl_api: Client, acl_consul: AclTarget) -> AsyncIterator[str]:
    """A key prefix owned by this test on the ACL-enabled target (deleted afterwards with the management token)."""
    prefix = uid("acl").replace("-", "_") + "/"
    yield prefix
    if acl_consul.kind == "real":
        await acl_api.delete(f"/v1/kv/{prefix}", [("recurse", None)])


@pytest.fixture(params=["dev-agent", "real"])
async def consul(request: pytest.FixtureRequest) -> AsyncIterator[ConsulTarget]:
    if request.param == "real":
        only = request.node.get_closest_marker("dev_agent_only")
        if only is not None:
            pytest.skip(f"dev-agent only: {only.args[0] if only.args else only.kwargs.get('reason', '')}")
        yield request.getfixturevalue("real_consul")
        return
    from consulgw.devagent import DevAgent

    marker = request.node.get_closest_marker("dev_agent")
    knobs = dict(marker.kwargs) if marker is not None else {}
    async with DevAgent(node="test-node", port=0, **knobs) as agent:
        yield ConsulTarget(url=agent.url, kind="dev-agent")


@pytest.fixture
async def api(consul: ConsulTarget) -> AsyncIterator[Client]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=True) as session:
        client = Client(consul.url, session)
        try:
            yield client
        finally:
            if consul.kind == "real":  # a dev agent dies with the test; a real Consul keeps state
                await client.run_cleanups()


@pytest.fixture
async def kv_prefix(api: Client, consul: ConsulTarget) -> AsyncIterator[str]:
    """A key prefix (ending in '/') owned by this test; keys use only [A-Za-z0-9._/-] (valid on every 1.2x)."""
    prefix = uid("conformance").replace("-", "_") + "/"
    yield prefix
    if consul.kind == "real":
        await api.delete(f"/v1/kv/{prefix}", [("recurse", None)])


@dataclass(frozen=True, slots=True, kw_only=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Upstream:
    url: str  # as the agent must address it
    port: int
    host: str
    seen: list[Seen]  # every request received, in order


@pytest.fixture
async def upstream(consul: ConsulTarget) -> AsyncIterator[Upstream]:
    """A real aiohttp server: /ok -> 200, /created -> 201, /warn -> 429, /fail -> 500, /slow -> 200 after 3 s.

    Any method is accepted; every request is recorded in ``seen``.
    """
    seen: list[Seen] = []

    def responder(status: int, delay: float = 0.0) -> web.Handler:
        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            seen.append(Seen(method=request.method, path=request.path, headers=dict(request.headers), body=body))
            if delay:
                await asyncio.sleep(delay)
            return web.Response(status=status, text=f"status {status}")

        return handle

    app = web.Application()
    for path, status, delay in (
        ("/ok", 200, 0.0),
        ("/created", 201, 0.0),
        ("/warn", 429, 0.0),
        ("/fail", 500, 0.0),
        ("/slow", 200, 3.0),
    ):
        app.router.add_route("*", path, responder(status, delay))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((consul.bind_host, 0))
    port = sock.getsockname()[1]
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        yield Upstream(url=f"http://{consul.check_host}:{port}", port=port, host=consul.check_host, seen=seen)
    finally:
        await runner.cleanup()
