"""The seam between the request pipeline and the wire: ``UpstreamTransport.send(endpoint, request) -> response``.

Everything above it speaks in these small values; everything below it is one HTTP/1.1 client
(:mod:`consulgw.upstream.http1`, pooled by :mod:`consulgw.upstream.connections`). Every failure of an exchange — OS
and TLS errors, timeouts, resets, invalid answers — is translated into the gateway's ``UpstreamError`` tree here, in
:func:`translate`, and nowhere else.

Framing is the transport's job: the caller gives end-to-end fields only (no ``Content-Length``,
``Transfer-Encoding``, ``Connection`` or ``Upgrade``), and the transport frames the body it is given: bytes with
their length, a stream with the declared ``length`` or chunked.

A request is sent once; if a *reused* connection turns out to have been closed by the upstream before any byte of
the answer arrived, and the request can be sent again (its body is in memory and its method is idempotent), it is
sent once more on a fresh connection (the keep-alive race every client has; Go's net/http does the same).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from consulgw.errors import UpstreamError, UpstreamTimeout, UpstreamUnreachable
from consulgw.model.http import IDEMPOTENT_METHODS
from consulgw.upstream.connections import ConnectionPools, Endpoint, PoolLimits
from consulgw.upstream.http1 import ConnectionClosed, Http1Connection, ProtocolError, ReadTimeout
from consulgw.upstream.spool import Spool


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamRequest:
    method: str
    target: str  # origin-form request-target (path and query), sent as is
    headers: Sequence[tuple[str, str]]  # end-to-end fields in order; Host is added from the endpoint when absent
    body: bytes | AsyncIterable[bytes] | None = None
    length: int | None = None  # length of a streamed body; None: chunked (ignored for bytes bodies)
    upgrade: str | None = None  # the Upgrade field to ask for (a tunnel follows a 101)
    expect_continue: bool = False  # hold a streamed body until the upstream says 100 Continue

    @property
    def replayable(self) -> bool:
        return self.body is None or isinstance(self.body, bytes)


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamTimeouts:
    connect: float
    read: float


class UpstreamResponse:
    """An answer whose body arrives in ``body`` (a Spool). ``tunnel`` is set after a 101: a byte tunnel end."""

    __slots__ = ("body", "headers", "reason", "status", "tunnel")

    def __init__(
        self,
        status: int,
        reason: str,
        headers: list[tuple[str, str]],
        body: Spool,
        tunnel: Http1Connection | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.tunnel = tunnel


class UpstreamTransport(Protocol):
    async def send(
        self, endpoint: Endpoint, request: UpstreamRequest, timeouts: UpstreamTimeouts
    ) -> UpstreamResponse: ...

    async def close(self) -> None: ...


def upstream_ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """Verify HTTPS upstreams against the system CAs, or against ``--upstream-ca`` when given."""
    return ssl.create_default_context(cafile=ca_file)


class Http1Transport:
    """The gateway's upstream client: keep-alive pools per endpoint, HTTP/1.1 over asyncio Protocols."""

    def __init__(self, *, limits: PoolLimits | None = None, ca_file: str | None = None) -> None:
        self._pools = ConnectionPools(limits or PoolLimits(), upstream_ssl_context(ca_file))

    async def send(self, endpoint: Endpoint, request: UpstreamRequest, timeouts: UpstreamTimeouts) -> UpstreamResponse:
        pool = self._pools.pool(endpoint)
        head = request_head(request, endpoint)
        body = request.body
        chunked = body is not None and not isinstance(body, bytes) and request.length is None
        try:
            conn = pool.take_idle()
            if conn is not None:
                try:
                    return await _exchange(conn, request, head, chunked, timeouts)
                except ConnectionClosed as exc:
                    if exc.received or not (request.replayable and request.method in IDEMPOTENT_METHODS):
                        raise
                    # The upstream had closed this idle connection: the one retry, on a fresh connection.
            conn = await pool.connect(timeouts.connect)
            return await _exchange(conn, request, head, chunked, timeouts)
        except (OSError, TimeoutError, ConnectionClosed, ReadTimeout, ProtocolError) as exc:
            raise translate(exc, endpoint.authority) from exc

    def forget_unused(self) -> None:
        self._pools.forget_unused()

    def stats(self) -> dict[str, tuple[int, int]]:
        return self._pools.stats()

    async def close(self) -> None:
        await self._pools.close()


async def _exchange(
    conn: Http1Connection, request: UpstreamRequest, head: bytes, chunked: bool, timeouts: UpstreamTimeouts
) -> UpstreamResponse:
    response, spool = await conn.exchange(
        request.method,
        head,
        request.body,
        chunked=chunked,
        read_timeout=timeouts.read,
        expect_continue=request.expect_continue,
    )
    tunnel = conn if response.status == 101 else None
    return UpstreamResponse(response.status, response.reason, response.headers, spool, tunnel)


def request_head(request: UpstreamRequest, endpoint: Endpoint) -> bytes:
    """The request line and fields, framed for the body the request carries (RFC 9112 sections 3, 6 and 7)."""
    lines = [f"{request.method} {request.target} HTTP/1.1\r\n"]
    has_host = False
    for name, value in request.headers:
        if "\r" in value or "\n" in value or "\x00" in value:
            raise ProtocolError(f"field {name} has a line break in its value")
        if not has_host and name.lower() == "host":
            has_host = True
        lines.append(f"{name}: {value}\r\n")
    if not has_host:
        lines.append(f"Host: {endpoint.authority}\r\n")
    body = request.body
    if body is None:
        pass
    elif isinstance(body, bytes):
        lines.append(f"Content-Length: {len(body)}\r\n")
    elif request.length is not None:
        lines.append(f"Content-Length: {request.length}\r\n")
    else:
        lines.append("Transfer-Encoding: chunked\r\n")
    if request.upgrade is not None:
        lines.append(f"Connection: Upgrade\r\nUpgrade: {request.upgrade}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("utf-8", "surrogateescape")


def translate(exc: BaseException, endpoint: str) -> UpstreamError:
    """Map a failed exchange to the gateway's UpstreamError tree (messages carry no request data)."""
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, ReadTimeout):
        return UpstreamTimeout(f"{endpoint} did not answer in time", kind="timeout")
    if isinstance(exc, ConnectionClosed):
        return UpstreamUnreachable(f"{endpoint} closed the connection", kind="reset")
    if isinstance(exc, ProtocolError):
        return UpstreamError(f"{endpoint} sent an invalid answer", kind="protocol")
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"connecting to {endpoint} timed out", kind="connect_timeout", connect_failed=True)
    if isinstance(exc, ssl.SSLCertVerificationError):
        # TCP connected but the upstream's certificate was refused: say so (the fix is --upstream-ca or the
        # upstream's certificate, not the network). Nothing was sent, so another instance may be tried.
        reason = exc.verify_message or _ssl_reason(exc)
        return UpstreamUnreachable(
            f"TLS certificate of {endpoint} could not be verified ({reason})", kind="tls", connect_failed=True
        )
    if isinstance(exc, ssl.SSLError):  # e.g. the upstream does not speak TLS on that port
        return UpstreamUnreachable(
            f"TLS handshake with {endpoint} failed ({_ssl_reason(exc)})", kind="tls", connect_failed=True
        )
    if isinstance(exc, OSError):
        return UpstreamUnreachable(f"could not connect to {endpoint}", kind="connect", connect_failed=True)
    return UpstreamUnreachable(f"request to {endpoint} failed", kind="error")


def _ssl_reason(error: BaseException) -> str:
    """The OpenSSL reason code of an SSL error (``WRONG_VERSION_NUMBER``), never a request detail."""
    if isinstance(error, ssl.SSLError) and error.reason:
        return str(error.reason)
    return type(error).__name__
