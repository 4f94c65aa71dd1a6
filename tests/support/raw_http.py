"""An HTTP upstream on raw sockets, so a test decides exactly what the wire carries (resets, invalid heads, stalls,
closes), and a raw client exchange with the gateway.

``raw_upstream`` is the fixture: ``up = await raw_upstream(handler)``, where ``handler(up, reader, writer, n)`` serves
the ``n``-th connection; ``up.requests`` holds the request heads received, ``up.connections`` counts connections.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

Handler = Callable[["RawUpstream", asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


@dataclass
class RawUpstream:
    """An HTTP upstream written on raw sockets, so a test decides exactly what the wire carries."""

    handler: Handler
    server: asyncio.Server | None = None
    port: int = 0
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)  # request heads, in arrival order
    finished: int = 0  # answers fully written
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> RawUpstream:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            task = asyncio.current_task()
            assert task is not None
            self.tasks.add(task)
            try:
                await self.handler(self, reader, writer, self.connections)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()
                self.tasks.discard(task)

        self.server = await asyncio.start_server(accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(head)
        length = next(
            (
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        if length:
            await reader.readexactly(length)
        return head

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.server is not None:
            await self.server.wait_closed()


@pytest.fixture
async def raw_upstream() -> AsyncIterator[Callable[[Handler], Awaitable[RawUpstream]]]:
    started: list[RawUpstream] = []

    async def factory(handler: Handler) -> RawUpstream:
        upstream = await RawUpstream(handler).start()
        started.append(upstream)
        return upstream

    yield factory
    for upstream in started:
        await upstream.stop()


OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


async def raw_exchange(port: int, data: bytes, *, timeout: float = 10.0) -> bytes:
    """Send ``data`` on a fresh connection and return everything the gateway answers until it closes or goes quiet."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    answer = b""
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), timeout if not answer else 0.5)
            if not chunk:
                break
            answer += chunk
    except TimeoutError:
        pass
    finally:
        writer.close()
    return answer
