"""One HTTP/1.1 client connection to an upstream instance: an asyncio Protocol around llhttp (httptools).

One exchange at a time (no pipelining). ``exchange`` writes the request, returns the response head as soon as it is
parsed, and leaves the body to a :class:`~consulgw.upstream.spool.Spool` that the protocol feeds from
``data_received``. When the response ends the connection hands itself back to its pool at once (``on_reusable``),
whether or not anybody has read the body yet: the body waits in the spool, so a slow client never holds the
connection. If the spool reaches its cap, reading from the upstream pauses until the client catches up.

Framing follows RFC 9112: the request body goes with ``Content-Length`` when its length is known and chunked when
not; the response is read by llhttp in its strict mode (a response with both ``Content-Length`` and
``Transfer-Encoding``, differing ``Content-Length`` values or a bad chunk is an error, never guessed at). A response
to ``HEAD``, a ``1xx``, ``204`` or ``304`` has no body; interim ``1xx`` answers are consumed (``100`` releases a body
held back by ``Expect: 100-continue``); a ``101`` turns the connection into a byte tunnel.

Failures raise the small private exceptions below; :mod:`consulgw.upstream.transport` translates them (and OS/TLS
errors) into the gateway's ``UpstreamError`` tree, in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, Callable
from typing import Final, cast

import httptools

from consulgw.upstream.spool import Spool, SpoolProducer

_CHUNK_END: Final = b"0\r\n\r\n"
CONTINUE_WAIT: Final = 1.0  # seconds to wait for "100 Continue" before sending the body anyway (curl's default)


class ExchangeError(Exception):
    """Base of the connection's own failures (translated by the transport)."""


class ConnectionClosed(ExchangeError):
    """The upstream closed or reset the connection. ``received`` says whether any response byte had arrived."""

    def __init__(self, message: str, *, received: bool, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.received = received
        self.cause = cause


class ReadTimeout(ExchangeError):
    """The upstream sent nothing for longer than the read timeout."""


class ProtocolError(ExchangeError):
    """The upstream's answer is not valid HTTP/1.1 (or is ambiguous), or the request could not be framed."""


class ResponseHead:
    """Status line and fields of a response, as received (field names keep the upstream's spelling)."""

    __slots__ = ("headers", "keep_alive", "reason", "status", "version")

    def __init__(
        self, status: int, reason: str, headers: list[tuple[str, str]], keep_alive: bool, version: str
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.keep_alive = keep_alive
        self.version = version


Body = bytes | AsyncIterable[bytes] | None


class Http1Connection(asyncio.Protocol, SpoolProducer):
    """The protocol object of one upstream connection. Created by :class:`~consulgw.upstream.connections.EndpointPool`."""

    def __init__(
        self,
        *,
        on_released: Callable[[Http1Connection, bool], None],
        spool_memory: int,
        spool_file: int,
        temp_dir: str | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_released = on_released
        self._leased = False  # lent out by the pool (lease()); _release() hands it back exactly once
        self._spool_memory = spool_memory
        self._spool_file = spool_file
        self._temp_dir = temp_dir
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.lost: asyncio.Future[None] = self._loop.create_future()  # done when the socket is really gone
        self.exchanges = 0  # exchanges completed on this connection (0: fresh)
        self.idle_since = 0.0  # loop time it was last put back in its pool (the pool's expiry sweep reads it)
        self._parser: httptools.HttpResponseParser | None = None
        self._active = False
        self._method = ""
        self._head_waiter: asyncio.Future[ResponseHead] | None = None
        self._continue_waiter: asyncio.Future[None] | None = None
        self._spool: Spool | None = None
        self._headers: list[tuple[str, str]] = []
        self._reason = ""
        self._interim = False
        self._received = False  # a byte of the current response arrived
        self._body_done = False  # the response ended
        self._until_eof = False  # the response body ends when the connection does
        self._discard = False  # a HEAD answer was complete at its head: the parser must not be reused
        self._garbage = False  # bytes arrived after an answer that had no body
        self._upgrade_head: ResponseHead | None = None  # a 101 head, delivered once the tunnel starts
        self._keep_alive = False
        self._send_done = True
        self._sender: asyncio.Task[None] | None = None
        self._sender_error: BaseException | None = None
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._read_timeout = 0.0
        self._last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None  # the read timer; outlives exchanges (see _arm_timer)
        self._timer_at = 0.0
        self._reading_paused = False
        self._tunnel: Callable[[bytes], None] | None = None
        self._tunnel_early: list[bytes] = []
        self._tunnel_closed: Callable[[], None] | None = None
        self._tunnel_flow: Callable[[bool], None] | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel(data)
            return
        if self._tunnel_closed is not None:  # a 101 answer, tunnel not attached yet
            self._tunnel_early.append(data)
            return
        if not self._active:
            self._fail_idle()  # an idle connection must stay silent: whatever this is, the connection is broken
            return
        self._received = True
        self._last_read = self._loop.time()
        parser = self._parser
        assert parser is not None
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = int(exc.args[0]) if exc.args else len(data)
            self._start_tunnel(data[offset:])
        except httptools.HttpParserCallbackError as exc:
            self._fail(ProtocolError(f"invalid response ({exc.__cause__ or exc})"))
        except httptools.HttpParserError as exc:
            self._fail(ProtocolError(f"invalid response ({exc})"))
        if self._upgrade_head is not None:  # a 101 without Upgrade and Connection: upgrade (RFC 9110 section 7.8)
            self._upgrade_head = None
            self._fail(ProtocolError("101 Switching Protocols without Upgrade and Connection fields"))
        if self._discard:  # HEAD: llhttp still expects the body the fields announce; never feed it again
            self._parser = None
            self._discard = False
            if self._garbage:  # bytes after a HEAD answer: this connection is not to be trusted again
                self.close()

    def eof_received(self) -> bool | None:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.lost.done():
            self.lost.set_result(None)
        self._cancel_timer()
        if self._tunnel_closed is not None:
            self._tunnel_closed()
            return
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_exception(ConnectionClosed("connection closed while sending", received=self._received))
        if not self._active:
            return
        if self._until_eof and self._head_waiter is not None and self._head_waiter.done():
            self._complete()  # a body delimited by the end of the connection (RFC 9112 section 6.3, item 8)
            return
        if self._sender_error is not None:
            self._fail(self._sender_error)
        else:
            self._fail(ConnectionClosed("the upstream closed the connection", received=self._received, cause=exc))

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._tunnel_flow is not None:
            self._tunnel_flow(True)

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._tunnel_flow is not None:
            self._tunnel_flow(False)
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- SpoolProducer (the spool's back-pressure) -----------------------------------------------------------------

    def pause(self) -> None:
        if self.transport is not None and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
            self._cancel_timer()  # we stopped reading: the upstream is not the slow one

    def resume(self) -> None:
        if self.transport is not None and self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()
            if self._active:
                self._last_read = self._loop.time()
                self._arm_timer()

    def abort(self) -> None:
        """The consumer gave up on the body: the rest of it will never be read, so the connection cannot be reused."""
        self._active = False
        self.close()
        self._release(False)

    # -- llhttp callbacks ------------------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._headers = []
        self._reason = ""

    def on_status(self, status: bytes) -> None:
        self._reason += status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._interim = True  # 100 Continue, 102 Processing, 103 Early Hints: consumed, never relayed
            if status == 100 and self._continue_waiter is not None and not self._continue_waiter.done():
                self._continue_waiter.set_result(None)
            return
        headers = self._headers
        head_only = self._method == "HEAD" or status in (204, 304)
        if status == 101:
            self._upgrade_head = ResponseHead(status, self._reason, headers, False, parser.get_http_version())
            return
        keep_alive = parser.should_keep_alive()
        if self._method == "HEAD":
            keep_alive = _keep_alive(parser.get_http_version(), headers)
        elif not head_only and not _has_length(headers):
            self._until_eof = True
        head = ResponseHead(status, self._reason, headers, keep_alive, parser.get_http_version())
        self._keep_alive = keep_alive
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(head)
        if self._method == "HEAD":
            self._discard = True
            self._complete()

    def on_body(self, body: bytes) -> None:
        if self._body_done:
            self._garbage = True
            return
        spool = self._spool
        if spool is not None:
            spool.feed(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self._upgrade_head is not None:
            return  # llhttp stops here with HttpParserUpgrade; the tunnel takes the connection
        if not self._body_done:
            self._complete()

    # -- the exchange ----------------------------------------------------------------------------------------------

    async def exchange(
        self,
        method: str,
        head: bytes,
        body: Body,
        *,
        chunked: bool,
        read_timeout: float,
        expect_continue: bool = False,
    ) -> tuple[ResponseHead, Spool]:
        """Send one request and return its response head and the spool its body arrives in.

        ``head`` is the request line and fields, ending with the empty line. ``body`` is sent after it: bytes at once
        (with the head, in one write), an async iterable chunk by chunk (chunk-encoded when ``chunked``). With
        ``expect_continue`` a streamed body waits for ``100 Continue`` (or :data:`CONTINUE_WAIT` seconds).
        """
        transport = self.transport
        if transport is None or self.closed or transport.is_closing():
            self._release(False)
            raise ConnectionClosed("the connection is closed", received=False)
        self._begin(method, read_timeout)
        spool = Spool(memory_limit=self._spool_memory, file_limit=self._spool_file, temp_dir=self._temp_dir)
        spool.attach(self)
        self._spool = spool
        waiter: asyncio.Future[ResponseHead] = self._loop.create_future()
        self._head_waiter = waiter
        try:
            if body is None or isinstance(body, bytes):
                transport.write(head + body if body else head)
                self._send_done = True
                self._last_read = self._loop.time()
                self._arm_timer()
            else:
                transport.write(head)
                self._send_done = False
                if expect_continue:
                    self._continue_waiter = self._loop.create_future()
                self._sender = self._loop.create_task(self._send(body, chunked))
            return await waiter, spool
        except BaseException:
            self._head_waiter = None
            if not waiter.done():
                waiter.cancel()
            self._active = False
            self.close()  # cancelled (client gone) or failed: the connection is in an unknown state
            spool.close()
            self._release(False)
            raise

    def attach_tunnel(
        self, on_data: Callable[[bytes], None], on_closed: Callable[[], None], on_flow: Callable[[bool], None]
    ) -> None:
        """After a 101 answer: deliver every further byte (and any that came with the head) to ``on_data``,
        report the end of the connection to ``on_closed`` and write back-pressure (paused or not) to ``on_flow``."""
        self._tunnel = on_data
        self._tunnel_closed = on_closed
        self._tunnel_flow = on_flow
        early, self._tunnel_early = self._tunnel_early, []
        for data in early:
            on_data(data)
        if self.closed:
            on_closed()

    @property
    def write_paused(self) -> bool:
        return self._write_paused

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        if not self._write_paused:
            return
        if self.closed:
            raise ConnectionClosed("connection closed while sending", received=self._received)
        waiter = self._drain_waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._drain_waiter = None

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self.closed = True
        self._cancel_timer()
        sender = self._sender
        if sender is not None and not sender.done():
            sender.cancel()

    # -- internals -------------------------------------------------------------------------------------------------

    def _begin(self, method: str, read_timeout: float) -> None:
        if self._parser is None:
            self._parser = httptools.HttpResponseParser(self)
        self._active = True
        self._method = method
        self._read_timeout = read_timeout
        self._received = False
        self._body_done = False
        self._until_eof = False
        self._interim = False
        self._keep_alive = False
        self._garbage = False
        self._upgrade_head = None
        self._sender = None
        self._sender_error = None
        self._continue_waiter = None

    async def _send(self, body: AsyncIterable[bytes], chunked: bool) -> None:
        transport = self.transport
        assert transport is not None
        try:
            if self._continue_waiter is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._continue_waiter), CONTINUE_WAIT)
                if self._body_done or self.closed:
                    return  # a final answer came first: the body is not wanted (the connection will not be reused)
            async for chunk in body:
                if not chunk:
                    continue
                if self.closed or self._body_done or transport.is_closing():
                    return
                if chunked:
                    transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
                else:
                    transport.write(chunk)
                if self._write_paused:
                    await self.drain()
            if chunked and not self.closed:
                transport.write(_CHUNK_END)
        except (ExchangeError, OSError):
            return  # the connection failed: connection_lost reports it to the exchange
        except Exception as exc:  # noqa: BLE001 - the client's body failed (too large, client gone): abort upstream
            self._sender_error = exc
            self._fail(exc)
            self.close()
            return
        self._send_done = True
        if self._body_done:
            self._after_complete()
        elif not self.closed:
            self._last_read = self._loop.time()
            self._arm_timer()

    def _complete(self) -> None:
        self._body_done = True  # the read timer stays: it finds the connection idle when it fires and lapses
        spool = self._spool
        if spool is not None:
            spool.feed_eof()
            spool.detach()  # the body is all there: the spool has nothing more to ask of this connection
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        self._after_complete()

    def _after_complete(self) -> None:
        if not self._active:
            return
        self._active = False
        self._spool = None
        self.exchanges += 1
        # An upstream that answered before taking the whole body may wait for the rest or have stopped reading:
        # either way the connection cannot carry another request.
        reusable = self._keep_alive and self._send_done and not self.closed
        if not reusable:
            self.close()
        self._release(reusable)

    def lease(self) -> None:
        """Called by the pool when it lends this connection out; one exchange (or a tunnel) follows."""
        self._leased = True

    def _release(self, reusable: bool) -> None:
        if self._leased:
            self._leased = False
            self._on_released(self, reusable)

    def _fail(self, exc: BaseException) -> None:
        self._cancel_timer()
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        elif self._spool is not None and not self._body_done:
            self._spool.set_exception(exc)
        self._body_done = True
        self._active = False
        self.close()
        self._release(False)

    def _fail_idle(self) -> None:
        self._keep_alive = False
        self.close()

    def _start_tunnel(self, rest: bytes) -> None:
        head, self._upgrade_head = self._upgrade_head, None
        if head is None:
            self._fail(ProtocolError("upgrade without a 101 answer"))
            return
        self._cancel_timer()
        self._active = False
        self._body_done = True
        self._tunnel_closed = _noop  # switch data_received to tunnel mode; the tunnel attaches itself later
        if rest:
            self._tunnel_early.append(rest)
        if self._spool is not None:
            self._spool.feed_eof()
            self._spool.detach()
        self._release(False)  # the tunnel owns the connection from here; it is never pooled again
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(head)

    def _arm_timer(self) -> None:
        """Make sure the read timer fires by ``last read + read timeout``.

        One timer serves many exchanges of a kept-alive connection: when it fires it compares the time of the last
        byte read with the timeout and either fails the exchange, re-arms itself for the new deadline, or lapses
        (no exchange is waiting). Arming and cancelling a timer per request cost about 2 us each on uvloop.
        """
        if self._read_timeout <= 0 or self._reading_paused:
            return
        deadline = self._last_read + self._read_timeout
        timer = self._timer
        if timer is not None:
            if self._timer_at <= deadline:
                return  # it fires first and checks again
            timer.cancel()  # a shorter timeout than the previous exchange's
        self._timer_at = deadline
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        if not self._active or self._reading_paused or self._body_done:
            return
        idle = self._loop.time() - self._last_read
        if idle >= self._read_timeout:
            self._fail(ReadTimeout(f"no data for {self._read_timeout:g} s"))
        else:
            self._timer_at = self._last_read + self._read_timeout
            self._timer = self._loop.call_at(self._timer_at, self._on_timer)


def _noop() -> None:
    return None


def _has_length(headers: list[tuple[str, str]]) -> bool:
    """Does the response declare how its body ends (Content-Length or chunked)? Else it is read until close."""
    for name, value in headers:
        lower = name.lower()
        if lower == "content-length":
            return True
        if lower == "transfer-encoding" and value.lower().rstrip().endswith("chunked"):
            return True
    return False


def _keep_alive(version: str, headers: list[tuple[str, str]]) -> bool:
    tokens = {
        token.strip().lower() for name, value in headers if name.lower() == "connection" for token in value.split(",")
    }
    if "close" in tokens:
        return False
    return version == "1.1" or "keep-alive" in tokens
