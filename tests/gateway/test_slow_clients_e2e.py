"""Slow, idle and greedy clients never take an upstream out of service (issue findings 3 and 4 of the hardening
review), and request bodies reach the upstream byte for byte.

The upstream here is what nginx's docs warn about for gunicorn: a server with a few synchronous workers, each busy
with one connection from its first byte to its last. Such a server is only safe behind a proxy that receives whole
requests before passing them on and takes whole answers at the server's pace.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import io
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from consulgw.server.gateway import Gateway
from consulgw.settings import ClientLimits

from .conftest import Consul, routed, wait_for

BIG = 8 * 1024 * 1024  # an answer larger than any socket buffer


@dataclass
class WorkerUpstream:
    """``workers`` synchronous workers, like gunicorn's sync worker: each takes one connection, serves one request
    and closes it. A connection waits in the accept queue while every worker is busy."""

    workers: int
    server: asyncio.Server | None = None
    port: int = 0
    bodies: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    served: int = 0
    _slots: asyncio.Semaphore = field(init=False)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> WorkerUpstream:
        self._slots = asyncio.Semaphore(self.workers)
        self.server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            async with self._slots:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                target = lines[0].split(" ")[1]
                headers = {
                    k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                body = await _read_body(reader, headers)
                self.bodies.append((headers, body))
                if target.startswith("/big"):
                    writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % BIG)
                    for _ in range(BIG // 65536):
                        writer.write(b"\x00" * 65536)
                        await writer.drain()
                else:
                    digest = hashlib.sha256(body).hexdigest().encode()
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(digest), digest)
                    )
                await writer.drain()
                self.served += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return body
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    length = int(headers.get("content-length", "0"))
    return await reader.readexactly(length) if length else b""


@pytest.fixture
async def worker_upstream() -> AsyncIterator[Callable[[int], Awaitable[WorkerUpstream]]]:
    started: list[WorkerUpstream] = []

    async def factory(workers: int) -> WorkerUpstream:
        upstream = await WorkerUpstream(workers).start()
        started.append(upstream)
        return upstream

    yield factory
    for upstream in started:
        await upstream.stop()


LIMITS = ClientLimits(header_timeout=1.0, body_timeout=2.0, send_timeout=2.0, max_connections=1000)


@pytest.fixture
async def guarded(gateway_factory: Callable[..., Awaitable[Gateway]]) -> Gateway:
    return await gateway_factory(clients=LIMITS)


async def _trickle(port: int, total: int, pause: float) -> bytes:
    """A POST whose body arrives 10 bytes at a time; returns whatever the gateway answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = asyncio.create_task(reader.readuntil(b"\r\n\r\n"))  # the head, as soon as it comes
    try:
        writer.write(b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % total)
        sent = 0
        while sent < total and not answer.done():
            writer.write(b"x" * 10)
            sent += 10
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            await asyncio.sleep(pause)
        return await asyncio.wait_for(answer, 30)
    except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
        return b""
    finally:
        answer.cancel()
        writer.close()


async def _never_read(port: int, stop: asyncio.Event) -> None:
    """Asks for a large answer and never reads a byte of it."""
    _reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1024)
    transport = writer.transport
    transport.pause_reading()
    writer.write(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
    try:
        await stop.wait()
    finally:
        writer.close()


async def test_slow_senders_and_non_readers_leave_other_clients_served(
    guarded: Gateway, consul: Consul, http: aiohttp.ClientSession, worker_upstream: Any
) -> None:
    up = await worker_upstream(4)
    await consul.register("fragile", up.port, tags=["gw.route=/"])
    await wait_for(lambda: routed(guarded, "fragile", 1))
    stop = asyncio.Event()
    tricklers = [asyncio.create_task(_trickle(guarded.port, 100_000, 1.0)) for _ in range(40)]
    readers = [asyncio.create_task(_never_read(guarded.port, stop)) for _ in range(20)]
    try:
        await asyncio.sleep(0.5)
        ok = 0
        for i in range(24):
            async with http.post(f"{guarded.url}/normal", data=f"request {i}".encode()) as resp:
                assert resp.status == 200
                assert await resp.text() == hashlib.sha256(f"request {i}".encode()).hexdigest()
                ok += 1
        assert ok == 24  # every normal request served while 40 senders trickle and 20 clients read nothing
        # The slow senders are cut by the body timeout (408) and never reached the upstream.
        answers = await asyncio.wait_for(asyncio.gather(*tricklers), 60)
        assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers)
        assert not any(headers.get("content-length") == "100000" for headers, _ in up.bodies)
        # The non-readers were disconnected by the send timeout, and the upstream finished their answers.
        await wait_for(lambda: guarded.connections.send_timed_out >= 20, timeout=30)
        assert sum(1 for headers, _ in up.bodies if not headers.get("content-length")) >= 20
    finally:
        stop.set()
        for task in [*tricklers, *readers]:
            task.cancel()
        await asyncio.gather(*tricklers, *readers, return_exceptions=True)


async def test_a_connection_that_sends_no_head_in_time_is_closed(guarded: Gateway) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", guarded.port)
    try:
        assert await asyncio.wait_for(reader.read(), 10) == b""  # nothing sent: closed without a word
    finally:
        writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", guarded.port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ")  # half a head, then silence
        answer = await asyncio.wait_for(reader.read(), 10)
        assert answer.startswith(b"HTTP/1.1 408")
    finally:
        writer.close()
    assert guarded.connections.timed_out >= 2


async def test_a_kept_alive_connection_has_header_timeout_for_each_head(
    guarded: Gateway, consul: Consul, worker_upstream: Any
) -> None:
    """Requests answered on one connection for longer than the header timeout, then half a head: a 408 in time.
    (The guard keeps one timer per connection and checks the time when it fires, instead of a timer per request.)"""
    up = await worker_upstream(1)
    await consul.register("kept", up.port, tags=["gw.route=/"])
    await wait_for(lambda: routed(guarded, "kept", 1))
    reader, writer = await asyncio.open_connection("127.0.0.1", guarded.port)
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        while loop.time() - start < 2.5 * LIMITS.header_timeout:  # heads keep arriving, each promptly
            writer.write(b"GET /kept HTTP/1.1\r\nHost: t\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200"), head
            length = int(
                next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")).split(b":")[1]
            )
            await reader.readexactly(length)
            await asyncio.sleep(0.1)
        sent = loop.time()
        writer.write(b"GET /kept HTTP/1.1\r\nHost: t\r\nX-Slow: ")  # half a head, then silence
        answer = await asyncio.wait_for(reader.read(), 10)
        assert answer.startswith(b"HTTP/1.1 408")
        assert loop.time() - sent < 3 * LIMITS.header_timeout
    finally:
        writer.close()


async def test_connections_beyond_the_cap_are_refused_not_queued(
    gateway_factory: Callable[..., Awaitable[Gateway]],
    consul: Consul,
    http: aiohttp.ClientSession,
    worker_upstream: Any,
) -> None:
    gateway = await gateway_factory(clients=ClientLimits(max_connections=3))
    up = await worker_upstream(4)
    await consul.register("capped", up.port, tags=["gw.route=/"])
    await wait_for(lambda: routed(gateway, "capped", 1))
    held = [await asyncio.open_connection("127.0.0.1", gateway.port) for _ in range(3)]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 503")
        assert gateway.connections.refused == 1
    finally:
        for _, held_writer in held:
            held_writer.close()
    await wait_for(lambda: gateway.connections.open == 0)
    async with http.get(f"{gateway.url}/x") as resp:  # the cap is a count, not a state: room again
        assert resp.status == 200


async def test_max_in_flight_answers_overloaded_beyond_the_limit(
    guarded: Gateway, consul: Consul, http: aiohttp.ClientSession, worker_upstream: Any
) -> None:
    up = await worker_upstream(1)  # one worker: the second request waits at the upstream
    await consul.kv_put("consulgw/services/narrow", json.dumps({"max_in_flight": 1}))
    await consul.register("narrow", up.port, tags=["gw.route=/"])
    await wait_for(lambda: routed(guarded, "narrow", 1))
    await wait_for(lambda: (v := guarded.view()) is not None and v.services["narrow"].policy.max_in_flight == 1)
    statuses = await asyncio.gather(*(_status(http, f"{guarded.url}/q{i}") for i in range(8)))
    assert set(statuses) == {200, 503}  # the first is served; those that came while it was out are refused at once


async def _status(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url) as resp:
        body = await resp.read()
        if resp.status == 503:
            assert json.loads(body)["error"] == "overloaded"
        return resp.status


# -- request bodies are the client's bytes -------------------------------------------------------------------------------

BODIES = [
    pytest.param("gzip", False, id="gzip-content-length"),
    pytest.param("gzip", True, id="gzip-chunked"),
    pytest.param("bomb", True, id="gzip-that-inflates-to-30MB-chunked"),
    pytest.param("corrupt", False, id="corrupt-gzip"),
    pytest.param("large", False, id="3MB-buffered-through-a-file"),
]


@pytest.mark.parametrize(("kind", "chunked"), BODIES)
async def test_request_bodies_arrive_byte_identical(
    guarded: Gateway, consul: Consul, http: aiohttp.ClientSession, worker_upstream: Any, kind: str, chunked: bool
) -> None:
    up = await worker_upstream(2)
    await consul.register("bytes", up.port, tags=["gw.route=/"])
    await wait_for(lambda: routed(guarded, "bytes", 1))
    if kind == "gzip":
        body = gzip.compress(json.dumps({"hello": "world" * 1000}).encode())
    elif kind == "bomb":
        body = gzip.compress(b"\x00" * (30 * 1024 * 1024))
    elif kind == "corrupt":
        body = gzip.compress(b"payload")[:-6] + b"garbage"
    else:
        body = os.urandom(3 * 1024 * 1024)
    headers = {"Content-Encoding": "gzip"} if kind != "large" else {}

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 7000):
            yield body[i : i + 7000]

    data: Any = chunks() if chunked else io.BytesIO(body)
    async with http.post(f"{guarded.url}/upload", data=data, headers=headers) as resp:
        assert resp.status == 200
        assert await resp.text() == hashlib.sha256(body).hexdigest()
    received_headers, received = up.bodies[-1]
    assert received == body
    if kind != "large":
        assert received_headers["content-encoding"] == "gzip"
    if chunked:
        assert received_headers["transfer-encoding"] == "chunked"
    else:
        assert received_headers["content-length"] == str(len(body))
