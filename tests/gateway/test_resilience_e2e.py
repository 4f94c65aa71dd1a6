"""Staying up: rolling restarts under load, Consul outages and restarts, graceful drain, WebSockets, big bodies."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from consulgw.devagent import DevAgent
from tests.support.processes import gateway_process

from .conftest import Consul, gateway_settings_for, routed, start_upstream, wait_for

pytestmark = pytest.mark.slow


class LoadGenerator:
    """Continuous GETs from several concurrent clients; records every failure."""

    def __init__(self, http: aiohttp.ClientSession, url: str, concurrency: int = 6) -> None:
        self.http, self.url, self.concurrency = http, url, concurrency
        self.ok = 0
        self.failures: list[str] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                async with self.http.get(self.url) as resp:
                    await resp.read()
                    if resp.status == 200:
                        self.ok += 1
                    else:
                        self.failures.append(f"{resp.status}: {(await resp.text())[:200]}")
            except aiohttp.ClientError as exc:
                self.failures.append(repr(exc))

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run()) for _ in range(self.concurrency)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


async def test_rolling_restart_of_three_instances_under_load_has_zero_errors(
    gateway: Any, consul: Consul, http: aiohttp.ClientSession
) -> None:
    ups = [await start_upstream(f"v1-{i}") for i in range(3)]
    ids = [await consul.register("svc", up.port, tags=["gw.route=/"]) for up in ups]
    await wait_for(lambda: routed(gateway, "svc", 3))
    load = LoadGenerator(http, f"{gateway.url}/")
    load.start()
    try:
        for i, up in enumerate(ups):
            served_before = load.ok
            if i == 0:  # the orderly way: deregister, let the gateway notice, then stop
                await consul.deregister(ids[i])
                await wait_for(lambda: routed(gateway, "svc", 2))
                await up.stop()
            elif i == 1:  # maintenance first
                await consul.maintenance(ids[i], True)
                await wait_for(lambda: routed(gateway, "svc", 2))
                await up.stop()
            else:  # the rude way: the process dies before Consul knows; retries on connect failure cover it
                await up.stop()
                await consul.deregister(ids[i])
                await wait_for(lambda: routed(gateway, "svc", 2))
            ups[i] = await start_upstream(f"v2-{i}", port=up.port)
            ids[i] = await consul.register("svc", up.port, service_id=f"svc-v2-{i}", tags=["gw.route=/"])
            await wait_for(lambda: routed(gateway, "svc", 3))
            await wait_for(lambda b=served_before: load.ok > b + 40)  # load runs through every step
    finally:
        await load.stop()
        for up in ups:
            await up.stop()
    assert load.failures == []
    assert load.ok > 100


class CuttableProxy:
    """A TCP relay in front of the dev agent that can drop every connection and refuse new ones (an outage)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.server: asyncio.Server | None = None
        self.port = 0
        self.writers: set[asyncio.StreamWriter] = set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def start(self, port: int = 0) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        if self.server is None or not self.server.is_serving():
            return
        self.server.close()
        for writer in self.writers:
            writer.close()
        self.writers.clear()
        await self.server.wait_closed()


async def test_consul_outage_keeps_routes_and_recovers(
    dev_agent: Any, consul: Consul, http: aiohttp.ClientSession, gateway_factory: Any
) -> None:
    relay = CuttableProxy(dev_agent.port)
    await relay.start()
    up = await start_upstream("a")
    try:
        await consul.register("svc", up.port, tags=["gw.route=/"])
        from consulgw.server.gateway import Gateway

        gateway = Gateway(gateway_settings_for(f"http://127.0.0.1:{relay.port}"), consul_wait=5.0)
        await gateway.start()
        try:
            await gateway.wait_ready(10)
            await wait_for(lambda: routed(gateway, "svc", 1))
            await relay.cut()
            await wait_for(lambda: not gateway.status().consul_reachable)
            for _ in range(20):  # last good routes keep serving
                async with http.get(f"{gateway.url}/") as resp:
                    assert resp.status == 200
            async with http.get(f"{gateway.admin_url}/-/routes") as resp:
                body = await resp.json()
                assert body["consul"]["reachable"] is False
                assert body["routes"]
            b = await start_upstream("b")
            await consul.register("svc", b.port, tags=["gw.route=/"])  # a change made during the outage
            await relay.start(relay.port)
            await wait_for(lambda: routed(gateway, "svc", 2), timeout=30)
            # Each watch recovers on its own request: the one that routed svc may be first among several.
            await wait_for(lambda: gateway.status().consul_reachable, timeout=10)
            await b.stop()
        finally:
            await gateway.stop()
    finally:
        await relay.cut()
        await up.stop()


async def test_dev_agent_restart_resets_indexes_and_the_gateway_converges(
    unused_tcp_port: int, http: aiohttp.ClientSession, gateway_factory: Any
) -> None:
    """A `consul agent -dev` restart loses all state and resets indexes; services re-register, nothing is lost."""
    from consulgw.server.gateway import Gateway

    up = await start_upstream("a")
    agent = DevAgent(node="test-node", port=unused_tcp_port)
    await agent.start()
    gateway = Gateway(gateway_settings_for(agent.url), consul_wait=5.0)
    try:
        await Consul(http, agent.url).register("svc", up.port, tags=["gw.route=/"])
        await gateway.start()
        await gateway.wait_ready(10)
        await wait_for(lambda: routed(gateway, "svc", 1))
        index_before = gateway.status().services_index
        await agent.stop()
        for _ in range(10):
            async with http.get(f"{gateway.url}/") as resp:
                assert resp.status == 200
        agent = DevAgent(node="test-node", port=unused_tcp_port)
        await agent.start()
        await Consul(http, agent.url).register("svc", up.port, tags=["gw.route=/"])
        await wait_for(lambda: gateway.status().consul_reachable, timeout=30)
        await wait_for(lambda: routed(gateway, "svc", 1), timeout=30)
        assert gateway.status().services_index != index_before or index_before <= 20
        async with http.get(f"{gateway.url}/") as resp:
            assert resp.status == 200
    finally:
        await gateway.stop()
        await agent.stop()
        await up.stop()


async def test_websocket_echo_through_the_gateway(gateway: Any, consul: Consul, http: aiohttp.ClientSession) -> None:
    def routes(app: web.Application) -> None:
        async def ws(request: web.Request) -> web.WebSocketResponse:
            sock = web.WebSocketResponse(protocols=("echo.v1",))
            await sock.prepare(request)
            async for msg in sock:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    await sock.send_str("echo:" + msg.data)
                elif msg.type is aiohttp.WSMsgType.BINARY:
                    await sock.send_bytes(msg.data[::-1])
            return sock

        app.router.add_get("/ws", ws)

    up = await start_upstream("ws", extra_routes=routes)
    try:
        await consul.register("svc", up.port, tags=["gw.route=/chat strip=/chat"])
        await wait_for(lambda: routed(gateway, "svc", 1))
        async with http.ws_connect(f"{gateway.url}/chat/ws", protocols=("echo.v1",)) as sock:
            assert sock.protocol == "echo.v1"
            await sock.send_str("hello")
            assert (await sock.receive(timeout=5)).data == "echo:hello"
            await sock.send_bytes(b"\x01\x02\x03")
            assert (await sock.receive(timeout=5)).data == b"\x03\x02\x01"
    finally:
        await up.stop()


# -- the gateway as a real process ------------------------------------------------------------------------------


async def _ready(http: aiohttp.ClientSession, admin: str) -> bool:
    try:
        async with http.get(f"{admin}/-/ready") as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False


async def _has_route(http: aiohttp.ClientSession, admin: str, service: str) -> bool:
    async with http.get(f"{admin}/-/routes") as resp:
        body = await resp.json()
        return any(i["weight"] > 0 for i in body["services"].get(service, {}).get("instances", []))


def _rss_kib(pid: int, field: str = "VmHWM") -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"{field} not found")


async def test_sigterm_drains_in_flight_requests_and_exits_zero(
    dev_agent: Any, consul: Consul, http: aiohttp.ClientSession
) -> None:
    slow = await start_upstream("slow", delay=1.0)
    try:
        await consul.register("svc", slow.port, tags=["gw.route=/"])
        async with gateway_process(dev_agent.url, "--drain-timeout", "10s") as gw:
            proc, url, admin = gw.proc, gw.url, gw.admin_url
            await wait_for(lambda: _ready(http, admin), timeout=20)
            await wait_for(lambda: _has_route(http, admin, "svc"))
            in_flight = asyncio.create_task(http.get(f"{url}/"))
            await wait_for(lambda: slow.inflight == 1)
            proc.send_signal(signal.SIGTERM)
            resp = await in_flight
            assert resp.status == 200
            assert (await resp.json())["upstream"] == "slow"
            resp.release()
            assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        await slow.stop()


async def test_100_megabytes_up_and_down_stream_with_bounded_memory(
    dev_agent: Any, consul: Consul, http: aiohttp.ClientSession
) -> None:
    size = 100 * 1024 * 1024
    chunk = b"\xa5" * (256 * 1024)

    def routes(app: web.Application) -> None:
        async def download(request: web.Request) -> web.StreamResponse:
            wanted = int(request.query.get("chunks", size // len(chunk)))
            resp = web.StreamResponse()
            resp.content_length = wanted * len(chunk)
            await resp.prepare(request)
            for _ in range(wanted):
                await resp.write(chunk)
            await resp.write_eof()
            return resp

        async def upload(request: web.Request) -> web.Response:
            total = 0
            async for part in request.content.iter_chunked(256 * 1024):
                total += len(part)
            return web.json_response({"received": total})

        app.router.add_get("/download", download)
        app.router.add_post("/upload", upload)

    up = await start_upstream("big", extra_routes=routes)
    try:
        await consul.register("svc", up.port, tags=["gw.route=/"])
        async with gateway_process(dev_agent.url, "--coalesce", "10ms") as gw:
            proc, url, admin = gw.proc, gw.url, gw.admin_url
            await wait_for(lambda: _ready(http, admin), timeout=20)
            await wait_for(lambda: _has_route(http, admin, "svc"))
            async with http.get(f"{url}/download?chunks=2") as resp:  # warm up imports and pools (512 KiB)
                await resp.read()
            baseline = _rss_kib(proc.pid)

            async def body() -> AsyncIterator[bytes]:
                for _ in range(size // len(chunk)):
                    yield chunk

            async with http.post(f"{url}/upload", data=body()) as resp:
                assert resp.status == 200
                assert (await resp.json())["received"] == size
            received = 0
            async with http.get(f"{url}/download") as resp:
                assert resp.status == 200
                async for part in resp.content.iter_chunked(1 << 20):
                    received += len(part)
            assert received == size
            growth_mib = (_rss_kib(proc.pid) - baseline) / 1024
            print(f"gateway peak RSS: {baseline / 1024:.1f} MiB before, grew {growth_mib:.1f} MiB for 2 x 100 MiB")
            assert growth_mib < 32, f"gateway peak RSS grew by {growth_mib:.1f} MiB"
            os.kill(proc.pid, signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        await up.stop()
