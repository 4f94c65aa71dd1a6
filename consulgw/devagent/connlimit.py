"""Consul's per-client connection limit (``limits.http_max_conns_per_client``), counted at the socket level.

Consul counts every open TCP connection of a client IP to its HTTP server -- idle keep-alive connections included --
and refuses the one past the limit the moment it is accepted, before reading anything: it writes a fixed ``429``
answer and closes. Those refusal answers are themselves rate-limited (10 per second, bursts of 100); beyond that a
refused connection is closed without a word (consul-api.md section 9.1).

:class:`LimitedProtocol` sits between the listening socket and aiohttp's protocol: admitted connections are handed to
the protocol aiohttp's ``web.Server`` makes, refused ones never reach aiohttp. Counting is a dict increment on accept
and a decrement on close: O(1) per connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from consulgw.clock import Clock

TOO_MANY_BODY = b"Your IP is issuing too many concurrent connections, please rate limit your calls\n"
TOO_MANY_RESPONSE = (
    b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\n"
    + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(TOO_MANY_BODY)
    + TOO_MANY_BODY
)
REFUSAL_RATE = 10.0  # answered refusals per second
REFUSAL_BURST = 100


class ConnectionLimiter:
    """Open connections per client IP, and the token bucket that paces refusal answers."""

    __slots__ = ("_clock", "_open", "_stamp", "_tokens", "limit", "refused")

    def __init__(self, limit: int, clock: Clock) -> None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        self.limit = limit  # 0: no limit
        self.refused = 0
        self._clock = clock
        self._open: dict[str, int] = {}
        self._tokens = float(REFUSAL_BURST)
        self._stamp = clock.monotonic()

    def acquire(self, ip: str) -> bool:
        count = self._open.get(ip, 0)
        if self.limit and count >= self.limit:
            self.refused += 1
            return False
        self._open[ip] = count + 1
        return True

    def release(self, ip: str) -> None:
        count = self._open.get(ip, 0) - 1
        if count > 0:
            self._open[ip] = count
        else:
            self._open.pop(ip, None)

    def may_answer_refusal(self) -> bool:
        now = self._clock.monotonic()
        self._tokens = min(float(REFUSAL_BURST), self._tokens + (now - self._stamp) * REFUSAL_RATE)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def open_connections(self, ip: str) -> int:
        return self._open.get(ip, 0)


def peer_ip(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer or "")


class LimitedProtocol(asyncio.Protocol):
    """Admits a connection (then forwards every callback to aiohttp's protocol) or refuses it as Consul does."""

    __slots__ = ("_factory", "_inner", "_ip", "_limiter")

    def __init__(self, limiter: ConnectionLimiter, factory: Callable[[], asyncio.Protocol]) -> None:
        self._limiter = limiter
        self._factory = factory
        self._inner: asyncio.Protocol | None = None
        self._ip = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ip = peer_ip(transport)
        if not self._limiter.acquire(ip):
            if self._limiter.may_answer_refusal():
                cast(asyncio.Transport, transport).write(TOO_MANY_RESPONSE)  # uvloop's transports are not subclasses
            transport.close()
            return
        self._ip = ip
        self._inner = self._factory()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            return self._inner.eof_received()
        return None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        inner, self._inner = self._inner, None
        if inner is None:
            return
        self._limiter.release(self._ip)
        inner.connection_lost(exc)


def protocol_factory(limiter: ConnectionLimiter, inner: Callable[[], Any]) -> Callable[[], LimitedProtocol]:
    return lambda: LimitedProtocol(limiter, inner)
