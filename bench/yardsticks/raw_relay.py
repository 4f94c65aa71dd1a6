"""The ceiling: an HTTP/1.1 relay on uvloop and httptools (llhttp) alone, with keep-alive connections upstream.

    .venv/bin/python bench/yardsticks/raw_relay.py --listen 127.0.0.1:9300 --upstream http://127.0.0.1:9001

asyncio Protocols on both sides, callbacks instead of tasks, one parser per connection, no routing, no policy, no
logging: about the least work a Python process can do to relay a request and its answer. It shows how far a Python
gateway is from the limit of the runtime (the "distance to the limit" row of ``make bench``); it is not a proxy to
run anything behind.

What it does: requests on a client connection are relayed one at a time, in order (pipelined ones wait, with
reading paused beyond a few), over an idle keep-alive connection to the one upstream (a new one when none is idle;
at most ``--max-idle`` are kept). Both bodies are read whole: a chunked request or answer is de-chunked and sent with
a ``Content-Length`` (that is the framing of this benchmark's answers), 204/304 answers without one. Hop-by-hop
headers are dropped both ways; ``Host`` is passed through. A client asking ``Connection: close`` (or speaking
HTTP/1.0 without keep-alive) is answered, then closed. An upstream that fails gets a 502. Not handled, because the
benchmark never sends them: HEAD, ``Expect: 100-continue``, ``Upgrade``, answers delimited by closing the connection.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import urllib.parse
from collections import deque
from collections.abc import Callable
from typing import cast

import httptools
import uvloop

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
    }
)
BAD_GATEWAY = b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nbad gateway\n"
BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\n"
    b"bad request\n"
)
NO_BODY = frozenset({204, 304})
MAX_QUEUED = 8  # pipelined requests held per client connection before reading pauses

Answer = Callable[[bytes | None], None]


class Upstream(asyncio.Protocol):
    """One keep-alive connection to the upstream, one exchange at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.answer: Answer | None = None
        self.reason: list[bytes] = []
        self.headers: list[bytes] = []
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's TCPTransport does not subclass it

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._finish(None)

    def send(self, request: bytes, answer: Answer) -> None:
        assert self.transport is not None
        self.answer = answer
        self.reason, self.headers, self.body = [], [], []
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._finish(None)
            self._close()

    # httptools callbacks
    def on_status(self, status: bytes) -> None:
        self.reason.append(status)

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() not in HOP_BY_HOP:
            self.headers += (name, b": ", value, b"\r\n")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        head = [b"HTTP/1.1 %d " % status, *self.reason, b"\r\n", *self.headers]
        body = b"".join(self.body)
        if status not in NO_BODY and status >= 200:
            head.append(b"Content-Length: %d\r\n" % len(body))
        head += (b"\r\n", body)
        keep = self.parser.should_keep_alive()
        self._finish(b"".join(head))
        if keep:
            self.pool.release(self)
        else:
            self._close()

    def _finish(self, response: bytes | None) -> None:
        answer, self.answer = self.answer, None
        if answer is not None:
            answer(response)

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Pool:
    """Keep-alive connections to the one upstream: idle ones are reused, last in first out."""

    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, port: int, max_idle: int) -> None:
        self.loop = loop
        self.host, self.port = host, port
        self.max_idle = max_idle
        self.idle: list[Upstream] = []
        self.connecting: set[asyncio.Task[object]] = set()

    def acquire(self, use: Callable[[Upstream | None], None]) -> None:
        while self.idle:
            upstream = self.idle.pop()
            if not upstream.closed:
                use(upstream)
                return
        task = self.loop.create_task(self.loop.create_connection(lambda: Upstream(self), self.host, self.port))
        self.connecting.add(task)

        def connected(done: asyncio.Task[object]) -> None:
            self.connecting.discard(done)
            if done.cancelled() or done.exception() is not None:
                use(None)
                return
            _transport, protocol = done.result()  # type: ignore[misc]
            use(protocol)

        task.add_done_callback(connected)

    def release(self, upstream: Upstream) -> None:
        if upstream.closed:
            return
        if len(self.idle) < self.max_idle:
            self.idle.append(upstream)
        else:
            upstream._close()


class Client(asyncio.Protocol):
    """One client connection: parse requests, relay them in order, write the answers."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[tuple[bytes, bool]] = deque()
        self.busy = False
        self.paused = False
        self.keep = True
        self.url: list[bytes] = []
        self.headers: list[bytes] = []
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's TCPTransport does not subclass it

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(BAD_REQUEST)
            self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url, self.headers, self.body = [], [], []

    def on_url(self, url: bytes) -> None:
        self.url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() not in HOP_BY_HOP:
            self.headers += (name, b": ", value, b"\r\n")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        body = b"".join(self.body)
        head = [method, b" ", *self.url, b" HTTP/1.1\r\n", *self.headers]
        if body or method in (b"POST", b"PUT", b"PATCH"):
            head.append(b"Content-Length: %d\r\n" % len(body))
        head += (b"\r\n", body)
        self.queue.append((b"".join(head), self.parser.should_keep_alive()))
        if len(self.queue) > MAX_QUEUED and self.transport is not None and not self.paused:
            self.transport.pause_reading()
            self.paused = True
        if not self.busy:
            self._next()

    def _next(self) -> None:
        if not self.queue:
            self.busy = False
            return
        self.busy = True
        request, self.keep = self.queue.popleft()
        if self.paused and len(self.queue) <= MAX_QUEUED // 2 and self.transport is not None:
            self.transport.resume_reading()
            self.paused = False

        def use(upstream: Upstream | None) -> None:
            if upstream is None:
                self._answer(None)
            else:
                upstream.send(request, self._answer)

        self.pool.acquire(use)

    def _answer(self, response: bytes | None) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(response if response is not None else BAD_GATEWAY)
        if not self.keep:
            transport.close()
            return
        self._next()


async def serve(listen: str, upstream: str, max_idle: int) -> None:
    loop = asyncio.get_running_loop()
    target = urllib.parse.urlsplit(upstream)
    if target.scheme != "http" or not target.hostname:
        raise SystemExit(f"--upstream: expected http://host:port, got {upstream!r}")
    pool = Pool(loop, target.hostname, target.port or 80, max_idle)
    host, _, port = listen.rpartition(":")
    server = await loop.create_server(lambda: Client(pool), host, int(port), reuse_address=True, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:9300", help="host:port to serve on (default 127.0.0.1:9300)")
    parser.add_argument("--upstream", required=True, help="http://host:port of the one upstream")
    parser.add_argument("--max-idle", type=int, default=64, help="idle upstream connections kept (default 64)")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args.listen, args.upstream, args.max_idle))


if __name__ == "__main__":
    main()
