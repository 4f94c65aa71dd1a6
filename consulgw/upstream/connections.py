"""Keep-alive connection pools, one per upstream endpoint (scheme, host, port).

* A request takes the most recently used idle connection (warm, least likely to have been closed by the upstream),
  or opens a new one. There is no cap on connections in use: a gateway must not queue requests behind an arbitrary
  pool size (the upstream's own limits and the policy's timeouts bound them).
* Idle connections are bounded per endpoint (``max_idle``; the oldest is closed) and in time (``idle_timeout``,
  which should stay below the upstream's own keep-alive timeout, so the gateway is the side that closes). Expiry is
  one sweep timer per endpoint, not a timer per idle period: arming and cancelling a timer for every request cost
  more than the rest of the pool's work (about 2 us each on uvloop).
* A connection that the upstream closed while idle is noticed (``connection_lost``/EOF) and never handed out.
  The race that remains, the upstream closing just as a request is written, is what the transport's single retry
  on a fresh connection is for.
* ``close`` closes every idle connection; connections in use close when their exchange ends.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from dataclasses import dataclass

from consulgw.upstream.http1 import Http1Connection


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolLimits:
    max_idle: int = 64  # idle keep-alive connections kept per endpoint
    idle_timeout: float = 30.0  # seconds an idle connection is kept
    spool_memory: int = 64 * 1024  # bytes of a response body held in memory per request before the temp file
    spool_file: int = (
        1024 * 1024 * 1024
    )  # bytes of a response body held in a temp file per request (then back-pressure)
    temp_dir: str | None = None


@dataclass(frozen=True, slots=True)
class Endpoint:
    scheme: str  # "http" or "https"
    host: str  # address as registered (IPv6 without brackets)
    port: int

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class EndpointPool:
    __slots__ = ("_closed", "_endpoint", "_idle", "_limits", "_loop", "_ssl", "_sweeper", "in_use")

    def __init__(self, endpoint: Endpoint, limits: PoolLimits, ssl_context: ssl.SSLContext | None) -> None:
        self._endpoint = endpoint
        self._limits = limits
        self._ssl = ssl_context if endpoint.scheme == "https" else None
        self._idle: collections.deque[Http1Connection] = collections.deque()  # oldest first (by idle_since)
        self._sweeper: asyncio.TimerHandle | None = None  # due when the oldest idle connection expires
        self._loop = asyncio.get_running_loop()
        self._closed = False
        self.in_use = 0

    @property
    def idle(self) -> int:
        return len(self._idle)

    def take_idle(self) -> Http1Connection | None:
        """The most recently used idle connection that is still open, or None."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                self.in_use += 1
                conn.lease()
                return conn
        return None

    async def connect(self, timeout: float) -> Http1Connection:
        """A new connection (raises OSError, ssl.SSLError or TimeoutError)."""
        limits = self._limits
        endpoint = self._endpoint

        def factory() -> Http1Connection:
            return Http1Connection(
                on_released=self._released,
                spool_memory=limits.spool_memory,
                spool_file=limits.spool_file,
                temp_dir=limits.temp_dir,
            )

        async with asyncio.timeout(timeout if timeout > 0 else None):
            _, conn = await self._loop.create_connection(
                factory,
                endpoint.host,
                endpoint.port,
                ssl=self._ssl,
                server_hostname=endpoint.host if self._ssl is not None else None,
            )
        self.in_use += 1
        conn.lease()
        return conn

    def _released(self, conn: Http1Connection, reusable: bool) -> None:
        """Called by ``conn`` exactly once per exchange, when it ends; a reusable connection goes back to idle."""
        self.in_use = max(0, self.in_use - 1)
        if not reusable:
            return
        if self._closed or conn.closed:
            conn.close()
            return
        idle = self._idle
        if len(idle) >= self._limits.max_idle:
            idle.popleft().close()
        conn.idle_since = now = self._loop.time()
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = self._loop.call_at(now + self._limits.idle_timeout, self._sweep)

    def _sweep(self) -> None:
        """Close the connections idle for ``idle_timeout``; come back when the next one is due."""
        self._sweeper = None
        idle = self._idle
        timeout = self._limits.idle_timeout
        now = self._loop.time()
        while idle and now - idle[0].idle_since >= timeout:
            idle.popleft().close()
        if idle and not self._closed:
            self._sweeper = self._loop.call_at(idle[0].idle_since + timeout, self._sweep)

    def close(self) -> list[asyncio.Future[None]]:
        """Close every idle connection; returns futures done when their sockets are gone."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        lost = []
        while self._idle:
            conn = self._idle.pop()
            conn.close()
            lost.append(conn.lost)
        return lost


class ConnectionPools:
    """Every endpoint's pool; owned by the transport, closed with it."""

    __slots__ = ("_limits", "_pools", "_ssl")

    def __init__(self, limits: PoolLimits, ssl_context: ssl.SSLContext | None) -> None:
        self._limits = limits
        self._ssl = ssl_context
        self._pools: dict[Endpoint, EndpointPool] = {}

    def pool(self, endpoint: Endpoint) -> EndpointPool:
        pool = self._pools.get(endpoint)
        if pool is None:
            pool = self._pools[endpoint] = EndpointPool(endpoint, self._limits, self._ssl)
        return pool

    def forget_unused(self) -> None:
        """Drop pools with nothing idle and nothing in use (endpoints of departed instances)."""
        for endpoint in [e for e, p in self._pools.items() if not p.idle and not p.in_use]:
            del self._pools[endpoint]

    async def close(self) -> None:
        lost = [future for pool in self._pools.values() for future in pool.close()]
        self._pools.clear()
        if lost:
            await asyncio.wait(lost, timeout=2.0)

    def stats(self) -> dict[str, tuple[int, int]]:
        """endpoint authority -> (in use, idle)"""
        return {e.authority: (p.in_use, p.idle) for e, p in self._pools.items()}
