"""The public listener's side of HTTP: aiohttp receives the client's request; this module writes the answer back.

aiohttp parses requests (llhttp, strict: ambiguous framing is answered 400 and never reaches the pipeline) and owns
keep-alive and TLS. The gateway answers through aiohttp's public response API, with three things a proxy needs
that a web framework does not do by itself:

* **No invented fields.** aiohttp adds ``Server`` and, for a body without one, ``Content-Type`` to every response. A
  proxy relays what the upstream sent and adds neither: the application's ``on_response_prepare`` signal (which
  runs after aiohttp filled in its defaults and before the head is written) removes the ones the answer did not
  carry.
* **100 Continue after the policy.** The route's ``expect_handler`` sends nothing when the request arrives;
  :meth:`Listener.send_continue` sends the interim answer once the pipeline has let the request through, just before
  the body is read (the pattern aiohttp documents for its expect handlers).
* **Upgrades as tunnels.** After a ``101`` from the upstream, the client connection is handed to a byte relay with
  asyncio's ``Transport.set_protocol``: WebSocket or any other protocol, both directions, with flow control.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from consulgw.pipeline.answer import Answer
from consulgw.pipeline.context import Inbound
from consulgw.upstream.http1 import ExchangeError, Http1Connection
from consulgw.upstream.spool import Spool

_NO_BODY_STATUSES = frozenset({204, 304})
_ABSENT = web.ResponseKey("consulgw_absent_defaults", tuple)  # default fields aiohttp must not add to this answer
_DEFAULTS = ("Server", "Content-Type")
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def create_public_app(handler: Handler) -> web.Application:
    """One catch-all route to the proxy handler; nothing else runs per request."""
    app = web.Application(handler_args={"max_field_size": 16 * 1024, "max_line_size": 16 * 1024})
    app.router.add_route("*", "/{path:.*}", handler, expect_handler=_defer_continue)
    app.on_response_prepare.append(_drop_invented_defaults)
    return app


async def _defer_continue(request: web.Request) -> None:
    """Send nothing yet: the pipeline answers ``Expect: 100-continue`` once its steps have passed."""
    return None


async def _drop_invented_defaults(request: web.Request, response: web.StreamResponse) -> None:
    absent = response.get(_ABSENT)
    if absent:
        for name in absent:
            response.headers.popall(name, None)


async def send_continue(request: Inbound) -> None:
    """Invite an HTTP/1.1 client that sent ``Expect: 100-continue`` to send its body (RFC 9110 section 10.1.1)."""
    if isinstance(request, web.BaseRequest) and request.version >= (1, 1):
        await request.writer.write(_CONTINUE)


async def write_answer(request: web.BaseRequest, answer: Answer) -> web.StreamResponse:
    """Send a finished answer to the client; returns the aiohttp response (already written)."""
    if answer.tunnel is not None:
        return await _tunnel(request, answer, answer.tunnel)
    headers = answer.headers
    absent = tuple(name for name in _DEFAULTS if name not in headers)
    body = answer.body
    no_body = request.method == "HEAD" or answer.status in _NO_BODY_STATUSES or answer.status < 200
    if isinstance(body, bytes) and not no_body:
        headers.popall("Content-Length", None)  # aiohttp sets it from the body
        answer.sent = len(body)
        response: web.StreamResponse = web.Response(
            status=answer.status, reason=answer.reason or None, headers=headers, body=body
        )
        if absent:
            response[_ABSENT] = absent
        return response
    response = web.StreamResponse(status=answer.status, reason=answer.reason or None, headers=headers)
    if absent:
        response[_ABSENT] = absent
    if no_body:
        if isinstance(body, Spool):
            body.close()
        await response.prepare(request)
        await response.write_eof()
        return response
    assert isinstance(body, Spool)
    headers.popall("Content-Length", None)
    if answer.length is not None:
        response.content_length = answer.length
    try:
        await response.prepare(request)
        async for chunk in body:
            answer.sent += len(chunk)
            await response.write(chunk)
    except ExchangeError as exc:
        # The upstream failed mid-body and the head is gone: cutting the connection is the only honest signal.
        answer.error = "body_interrupted"
        answer.failures += (type(exc).__name__,)
        if request.transport is not None:
            request.transport.close()
        return response
    finally:
        body.close()  # at the end of the body this only frees it; before, it also gives the upstream connection up
    await response.write_eof()
    return response


async def _tunnel(request: web.BaseRequest, answer: Answer, upstream: Http1Connection) -> web.StreamResponse:
    response = web.StreamResponse(status=101, reason=answer.reason or None, headers=answer.headers)
    response[_ABSENT] = tuple(name for name in _DEFAULTS if name not in answer.headers)
    response.force_close()
    client = request.transport
    if client is None or upstream.transport is None:
        upstream.close()
        return response
    try:
        await response.prepare(request)
    except BaseException:
        upstream.close()
        raise
    relay = _Relay(client, upstream)
    try:
        await relay.done
    finally:
        relay.close()
    return response


class _ClientSide(asyncio.Protocol):
    """The client connection's protocol once it is a tunnel."""

    def __init__(self, relay: _Relay) -> None:
        self._relay = relay

    def data_received(self, data: bytes) -> None:
        self._relay.from_client(data)

    def eof_received(self) -> bool:
        return self._relay.client_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self._relay.client_closed()

    def pause_writing(self) -> None:
        self._relay.client_flow(paused=True)

    def resume_writing(self) -> None:
        self._relay.client_flow(paused=False)


class _Relay:
    """Bytes both ways between a client transport and an upstream connection, until both directions are done."""

    def __init__(self, client: asyncio.Transport, upstream: Http1Connection) -> None:
        self._client = client
        self._upstream = upstream
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._client_eof = False
        client.set_protocol(_ClientSide(self))
        upstream.attach_tunnel(self.from_upstream, self.upstream_closed, self.upstream_flow)

    def from_client(self, data: bytes) -> None:
        transport = self._upstream.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def from_upstream(self, data: bytes) -> None:
        if not self._client.is_closing():
            self._client.write(data)

    def client_eof(self) -> bool:
        self._client_eof = True
        transport = self._upstream.transport
        if transport is not None and transport.can_write_eof():
            transport.write_eof()  # half-close: the upstream may still answer
            return True
        self._finish()
        return False

    def client_closed(self) -> None:
        self._finish()

    def upstream_closed(self) -> None:
        self._finish()  # whatever the upstream sent is flushed to the client before its transport closes

    def client_flow(self, *, paused: bool) -> None:
        transport = self._upstream.transport
        if transport is None or transport.is_closing():
            return
        if paused:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def upstream_flow(self, paused: bool) -> None:
        if self._client.is_closing():
            return
        if paused:
            self._client.pause_reading()
        else:
            self._client.resume_reading()

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def close(self) -> None:
        self._upstream.close()
        if not self._client.is_closing():
            self._client.close()
