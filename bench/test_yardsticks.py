"""The benchmark's own yardsticks relay correctly: bench/yardsticks/naive_proxy.py and bench/yardsticks/raw_relay.py.

Each runs as a real process in front of a real aiohttp upstream on 127.0.0.1 (free ports). Nothing here measures a
speed; `make bench` does. A yardstick that answered wrongly would make every ratio in the report meaningless.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

YARDSTICKS = Path(__file__).resolve().parent / "yardsticks"
BODY = b'{"ok":true,"service":"users"}'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Upstream:
    """An aiohttp upstream that remembers the client port of every request (one port = one connection)."""

    def __init__(self) -> None:
        self.ports: list[int] = []
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self.url = ""

    def app(self) -> web.Application:
        async def remember(request: web.Request) -> None:
            peer = request.transport.get_extra_info("peername") if request.transport else None
            self.ports.append(peer[1] if peer else -1)
            self.seen.append((request.method, request.raw_path, dict(request.headers)))

        async def json_answer(request: web.Request) -> web.StreamResponse:
            await remember(request)
            return web.Response(body=BODY, content_type="application/json", headers={"X-Upstream": "yes"})

        async def chunked(request: web.Request) -> web.StreamResponse:
            await remember(request)
            response = web.StreamResponse(headers={"Content-Type": "text/plain"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            for part in (b"one,", b"two,", b"three"):
                await response.write(part)
            await response.write_eof()
            return response

        async def echo(request: web.Request) -> web.StreamResponse:
            await remember(request)
            return web.Response(body=await request.read(), content_type="application/octet-stream")

        async def status(request: web.Request) -> web.StreamResponse:
            await remember(request)
            return web.Response(status=int(request.match_info["code"]))

        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_get("/chunked", chunked)
        app.router.add_post("/echo", echo)
        app.router.add_get("/status/{code}", status)
        app.router.add_get("/{tail:.*}", json_answer)
        return app


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    runner = web.AppRunner(up.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    up.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield up
    finally:
        await runner.cleanup()


def start(script: str, upstream_url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(YARDSTICKS / script), "--listen", f"127.0.0.1:{port}", "--upstream", upstream_url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _, err = proc.communicate(timeout=10)  # reads and closes the pipe
            raise AssertionError(f"{script} exited: {err.decode(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    proc.communicate(timeout=10)
    raise AssertionError(f"{script} did not listen within 30 s")


@pytest.fixture(params=["naive_proxy.py", "raw_relay.py"])
def relay(request: pytest.FixtureRequest, upstream: Upstream) -> Iterator[str]:
    proc, url = start(request.param, upstream.url)
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


async def test_small_json_answer_is_relayed(relay: str, upstream: Upstream) -> None:
    async with aiohttp.ClientSession() as http, http.get(URL(relay + "/users/1?x=%2F&y=1", encoded=True)) as resp:
        body = await resp.read()
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json"
        assert resp.headers["X-Upstream"] == "yes"
        assert resp.headers["Content-Length"] == str(len(BODY))
    assert body == BODY
    method, path, headers = upstream.seen[-1]
    assert (method, path) == ("GET", "/users/1?x=%2F&y=1")  # path and query exactly as sent
    assert headers["Host"].startswith("127.0.0.1:")


async def test_chunked_answer_arrives_whole(relay: str) -> None:
    async with aiohttp.ClientSession() as http, http.get(relay + "/chunked") as resp:
        assert resp.status == 200
        assert await resp.read() == b"one,two,three"


@pytest.mark.parametrize("chunked", [pytest.param(False, id="content-length"), pytest.param(True, id="chunked")])
async def test_request_body_is_relayed(relay: str, chunked: bool) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB

    async def parts() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 65536):
            yield payload[i : i + 65536]

    async with aiohttp.ClientSession() as http:
        data = parts() if chunked else payload
        async with http.post(relay + "/echo", data=data) as resp:
            assert resp.status == 200
            assert await resp.read() == payload


@pytest.mark.parametrize("code", [204, 404, 503])
async def test_status_is_relayed(relay: str, code: int) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{relay}/status/{code}") as resp:
        assert resp.status == code
        assert await resp.read() == b""


async def test_sequential_requests_reuse_one_upstream_connection(relay: str, upstream: Upstream) -> None:
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as http:
        for _ in range(20):
            async with http.get(relay + "/") as resp:
                assert await resp.read() == BODY
    assert len(upstream.ports) == 20
    assert len(set(upstream.ports)) == 1  # keep-alive upstream


async def test_a_client_asking_to_close_is_answered_then_closed(relay: str) -> None:
    host, port = relay.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=30)  # read() returns at EOF: the relay closed
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.endswith(BODY)


async def test_raw_relay_answers_502_when_the_upstream_is_gone() -> None:
    proc, url = start("raw_relay.py", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    try:
        async with aiohttp.ClientSession() as http, http.get(url + "/") as resp:
            assert resp.status == 502
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()
