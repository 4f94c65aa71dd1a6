"""What the public listener gives each client connection, beyond what aiohttp enforces by itself.

aiohttp closes idle keep-alive connections (``keepalive_timeout``) but sets no limit on how long a client may take
to send a request head or to take an answer, and no limit on how many connections it accepts. :class:`ClientGuard`
sits between the transport and aiohttp's protocol for each connection (a plain asyncio Protocol that passes every
event through) and adds those, like nginx's ``client_header_timeout``, ``send_timeout`` and ``worker_connections``:

* **Header timeout.** A connection must deliver a whole request head within ``header_timeout`` of connecting, or of
  the first byte of the next head on a kept-alive connection. Otherwise it is closed, with a ``408`` when part of a
  head had arrived. (Idle kept-alive connections that send nothing are aiohttp's ``keepalive_timeout``'s business.)
* **Send timeout.** When the transport's write buffer is full (the client does not read), the connection has
  ``send_timeout`` to take data again before it is closed. Every write is covered, the gateway's and aiohttp's, at no
  cost per write: the transport tells the protocol when it pauses and resumes writing. The upstream is never held
  meanwhile: its answer is in the gateway's spool, and closing the connection frees that too.
* **Connection cap.** Beyond ``max_connections`` open client connections, a new one is answered ``503`` and closed at
  once: never an unbounded queue. The kernel's listen backlog is the only waiting room.

The request handler tells the guard when a head was complete (``request_started``) and when it is done with the
request (``request_finished``); it finds the guard with ``transport.get_protocol()``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import cast

_REFUSED = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\nRetry-After: 1\r\n\r\n"
_TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


@dataclass(slots=True)
class ConnectionCount:
    """Open client connections of one listener (runtime state, owned by the gateway)."""

    limit: int
    open: int = 0
    refused: int = 0
    timed_out: int = 0  # closed for a request head that did not arrive in time
    send_timed_out: int = 0  # closed for not reading


class ClientGuard(asyncio.Protocol):
    __slots__ = (
        "_count",
        "_head_started",
        "_header_timeout",
        "_in_request",
        "_inner",
        "_loop",
        "_refused",
        "_send_timeout",
        "_send_timer",
        "_timer",
        "_waiting_since",
        "transport",
    )

    def __init__(
        self, inner: asyncio.Protocol, count: ConnectionCount, *, header_timeout: float, send_timeout: float
    ) -> None:
        self._inner = inner
        self._count = count
        self._header_timeout = header_timeout
        self._send_timeout = send_timeout
        self._send_timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None  # the header timer; outlives requests (see _head_too_slow)
        self._waiting_since: float | None = None  # loop time a head was first awaited; None: none awaited
        self._in_request = False
        self._head_started = False  # some bytes of the next request head have arrived
        self._refused = False
        self.transport: asyncio.Transport | None = None

    # -- asyncio.Protocol, passed through -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        count = self._count
        if count.open >= count.limit:
            self._refused = True
            count.refused += 1
            self.transport.write(_REFUSED)
            self.transport.close()
            return
        count.open += 1
        self._inner.connection_made(transport)
        self._waiting_since = now = self._loop.time()
        self._timer = self._loop.call_at(now + self._header_timeout, self._head_too_slow)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if not self._in_request and not self._head_started:
            # The first bytes of a head (the next one, on a kept-alive connection): the whole head must follow in
            # time. A timer left from earlier requests may still be armed; it checks the time when it fires.
            self._head_started = True
            if self._waiting_since is None:
                self._waiting_since = self._loop.time()
            if self._timer is None:
                self._timer = self._loop.call_at(self._waiting_since + self._header_timeout, self._head_too_slow)
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._refused:
            return False
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        if self._refused:
            return
        self._count.open -= 1
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._send_timer is None:
            self._send_timer = self._loop.call_later(self._send_timeout, self._not_reading)
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        self._inner.resume_writing()

    # -- from the request handler ---------------------------------------------------------------------------------

    def request_started(self) -> None:
        self._in_request = True
        self._head_started = False
        self._waiting_since = None  # the timer, if armed, lapses when it fires

    def request_finished(self) -> None:
        self._in_request = False

    # -- internals -------------------------------------------------------------------------------------------------

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _not_reading(self) -> None:
        self._send_timer = None
        self._count.send_timed_out += 1
        if self.transport is not None:
            self.transport.abort()  # the buffered bytes will never be read: drop them, free everything now

    def _head_too_slow(self) -> None:
        """The header timer: one per connection, armed when a head is awaited and none is armed, never cancelled
        per request (that cost about 2 us per request on uvloop). When it fires it times out the head that has
        been awaited for ``header_timeout``, re-arms for a head awaited since later, or lapses."""
        self._timer = None
        transport = self.transport
        since = self._waiting_since
        if self._in_request or since is None or transport is None or transport.is_closing():
            return
        due = since + self._header_timeout
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._head_too_slow)
            return
        self._count.timed_out += 1
        if self._head_started:
            transport.write(_TIMED_OUT)
        transport.close()


def guard_of(transport: asyncio.BaseTransport | None) -> ClientGuard | None:
    """The guard of a client connection (None for a connection that is not the public listener's)."""
    if transport is None:
        return None
    protocol = transport.get_protocol()
    return protocol if isinstance(protocol, ClientGuard) else None
