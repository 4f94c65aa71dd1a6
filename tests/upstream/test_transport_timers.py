"""The transport's timers, which outlive single exchanges: one read timer per upstream connection and one idle
sweep per endpoint pool (not a timer armed and cancelled per request). Against a raw-socket upstream on 127.0.0.1.

- every exchange of a kept-alive connection still gets its read timeout, including a shorter one than before;
- idle connections close after ``idle_timeout``, the busy ones are kept, and a later request opens a new one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from consulgw.errors import UpstreamTimeout
from consulgw.upstream.connections import Endpoint, PoolLimits
from consulgw.upstream.transport import Http1Transport, UpstreamRequest, UpstreamTimeouts

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@dataclass
class Upstream:
    """Answers ``GET /ok`` at once and never answers ``GET /stall``; counts connections and their ends."""

    port: int = 0
    opened: int = 0
    closed: int = 0
    server: asyncio.Server | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.opened += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if head.startswith(b"GET /ok "):
                    writer.write(OK)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed += 1
            writer.close()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    up.server = await asyncio.start_server(up.serve, "127.0.0.1", 0)
    up.port = up.server.sockets[0].getsockname()[1]
    try:
        yield up
    finally:
        up.server.close()


async def get(transport: Http1Transport, up: Upstream, path: str, read: float) -> bytes:
    response = await transport.send(
        Endpoint("http", "127.0.0.1", up.port),
        UpstreamRequest(method="GET", target=path, headers=[("Host", "t")]),
        UpstreamTimeouts(connect=2.0, read=read),
    )
    return b"".join([chunk async for chunk in response.body])


async def test_each_exchange_of_a_kept_alive_connection_has_its_read_timeout(upstream: Upstream) -> None:
    transport = Http1Transport()
    loop = asyncio.get_running_loop()
    try:
        for _ in range(3):
            assert await get(transport, upstream, "/ok", read=0.3) == b"ok"
            await asyncio.sleep(0.15)  # answered quickly, for longer than the timeout in all
        start = loop.time()
        with pytest.raises(UpstreamTimeout):
            await get(transport, upstream, "/stall", read=0.3)
        assert 0.25 <= loop.time() - start < 3.0
        assert upstream.opened == 1  # all on one kept-alive connection
    finally:
        await transport.close()


async def test_a_shorter_read_timeout_than_the_last_exchange_is_honoured(upstream: Upstream) -> None:
    transport = Http1Transport()
    loop = asyncio.get_running_loop()
    try:
        assert await get(transport, upstream, "/ok", read=60.0) == b"ok"
        start = loop.time()
        with pytest.raises(UpstreamTimeout):
            await get(transport, upstream, "/stall", read=0.3)  # not the 60 s the connection's timer was set for
        assert loop.time() - start < 3.0
        assert upstream.opened == 1
    finally:
        await transport.close()


async def test_idle_connections_close_after_the_idle_timeout_and_busy_ones_stay(upstream: Upstream) -> None:
    transport = Http1Transport(limits=PoolLimits(idle_timeout=0.5))
    authority = f"127.0.0.1:{upstream.port}"
    try:
        for _ in range(6):  # used every 0.2 s: within the idle timeout each time, for longer than it in all
            assert await get(transport, upstream, "/ok", read=5.0) == b"ok"
            await asyncio.sleep(0.2)
        assert upstream.opened == 1
        assert upstream.closed == 0
        assert transport.stats()[authority] == (0, 1)
        for _ in range(40):  # then idle: the sweep closes it
            if upstream.closed:
                break
            await asyncio.sleep(0.05)
        assert upstream.closed == 1
        assert transport.stats()[authority] == (0, 0)
        assert await get(transport, upstream, "/ok", read=5.0) == b"ok"  # a new connection for the next request
        assert upstream.opened == 2
    finally:
        await transport.close()


async def test_connections_put_back_at_different_times_expire_one_by_one(upstream: Upstream) -> None:
    transport = Http1Transport(limits=PoolLimits(idle_timeout=0.6))
    authority = f"127.0.0.1:{upstream.port}"
    try:
        # Two connections at once (two exchanges in flight), then one of them used again later.
        await asyncio.gather(get(transport, upstream, "/ok", read=5.0), get(transport, upstream, "/ok", read=5.0))
        assert upstream.opened == 2
        assert transport.stats()[authority] == (0, 2)
        await asyncio.sleep(0.35)
        assert await get(transport, upstream, "/ok", read=5.0) == b"ok"  # the most recent one, idle again from now
        for _ in range(40):
            if upstream.closed:
                break
            await asyncio.sleep(0.02)
        assert upstream.closed == 1
        assert transport.stats()[authority] == (0, 1)
        for _ in range(60):
            if upstream.closed == 2:
                break
            await asyncio.sleep(0.02)
        assert upstream.closed == 2
        assert transport.stats()[authority] == (0, 0)
    finally:
        await transport.close()
