"""Things in front of a Consul agent, for what the dev agent does not do (yet) on demand.

- ``CountingProxy``: a TCP relay that counts the connections its clients hold to the agent, at the socket level
  (``current``, ``peak``). With ``limit`` it also refuses a connection beyond it exactly as Consul's
  ``limits.http_max_conns_per_client`` does: ``429 Too Many Requests`` with Consul's text, then close.
- ``KvDenyingProxy``: an HTTP proxy that forwards everything to the agent except reads of a KV prefix, which it
  answers as Consul answers a token without ``key:read`` there: ``403 Permission denied`` (what Consul answers a
  single-key read, and a recursive one with ``acl_enable_key_list_policy``), or (``mode="filtered"``, Consul's
  default for a recursive read) the keys left out, ``X-Consul-Results-Filtered-By-ACLs: true``, a 404 when none
  is left.
- ``FaultyConsul``: an HTTP relay whose reads fail on demand: an error status, a body that is not JSON, a body cut
  in half, a connection closed before the answer, or no answer at all.

All listen on 127.0.0.1 with an ephemeral port; use them as async context managers.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Literal

import aiohttp
from aiohttp import web

TOO_MANY = b"Your IP is issuing too many concurrent connections, please rate limit your calls\n"
TOO_MANY_ANSWER = (
    b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\n"
    + f"Content-Length: {len(TOO_MANY)}\r\n".encode()
    + b"Connection: close\r\n\r\n"
    + TOO_MANY
)
PERMISSION_DENIED = "Permission denied"


class CountingProxy:
    """``async with CountingProxy(agent_port) as proxy:`` then point clients at ``proxy.url``."""

    def __init__(self, target_port: int, *, limit: int | None = None) -> None:
        self.target_port = target_port
        self.limit = limit
        self.current = 0
        self.peak = 0
        self.accepted = 0
        self.refused = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> CountingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):  # every relay then ends by itself
            writer.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._relay(reader, writer)
        finally:
            self._tasks.discard(task)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.limit is not None and self.current >= self.limit:
            self.refused += 1
            writer.write(TOO_MANY_ANSWER)
            with contextlib.suppress(OSError):
                await writer.drain()
            writer.close()
            return
        # A connection counts from its accept until the client's end closes (its FIN reaches us): what the client
        # holds, not how long this relay takes to tear down the agent's side afterwards.
        self.current += 1
        self.accepted += 1
        self.peak = max(self.peak, self.current)
        open_ = [True]

        def client_gone() -> None:
            if open_[0]:
                open_[0] = False
                self.current -= 1

        try:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            except OSError:
                return
            self._writers |= {writer, up_writer}

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, from_client: bool) -> None:
                with contextlib.suppress(OSError):
                    while data := await src.read(65536):
                        dst.write(data)
                        await dst.drain()
                if from_client:
                    client_gone()
                with contextlib.suppress(OSError):
                    dst.close()

            try:
                await asyncio.gather(
                    pipe(reader, up_writer, from_client=True), pipe(up_reader, writer, from_client=False)
                )
            finally:
                up_writer.close()
                self._writers -= {writer, up_writer}
        finally:
            client_gone()
            writer.close()


class KvDenyingProxy:
    """``async with KvDenyingProxy(agent_url, prefix="consulgw/") as proxy:``; ``proxy.denying`` switches it."""

    def __init__(self, target_url: str, *, prefix: str, mode: Literal["denied", "filtered"] = "denied") -> None:
        self.target_url = target_url.rstrip("/")
        self.prefix = prefix
        self.mode = mode
        self.denying = True
        self.denied = 0  # KV reads answered without the keys
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> KvDenyingProxy:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None), auto_decompress=False
        )
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = next(a[1] for a in self._runner.addresses if isinstance(a, tuple))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._runner is not None
        assert self._session is not None
        await self._runner.cleanup()
        await self._session.close()

    def _kv_read(self, request: web.Request) -> bool:
        if request.method != "GET" or not request.path.startswith("/v1/kv/"):
            return False
        key = request.path.removeprefix("/v1/kv/")
        return key.startswith(self.prefix) or (self.prefix.startswith(key) and "recurse" in request.query)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.denying and self._kv_read(request) and self.mode == "denied":
            self.denied += 1
            return web.Response(status=403, text=PERMISSION_DENIED)
        upstream = await self._forward(request)
        if self.denying and self._kv_read(request) and self.mode == "filtered" and upstream.status == 200:
            self.denied += 1  # there were keys, and this token may read none of them
            headers = {k: v for k, v in upstream.headers.items() if k.startswith("X-Consul-")}
            headers["X-Consul-Results-Filtered-By-ACLs"] = "true"
            return web.Response(status=404, headers=headers)
        return upstream

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._session is not None
        status, headers, payload = await relay(self._session, self.target_url, request)
        return web.Response(status=status, body=payload, headers=headers)


ConsulFault = Literal["500", "invalid_json", "truncated", "close", "silent"]


class FaultyConsul:
    """An HTTP relay in front of the agent whose reads (GET under ``/v1/``) fail on demand, the ways a Consul agent or
    the network in front of it fails: ``fault = "500"`` (an error status with Consul's kind of text),
    ``"invalid_json"`` (200, the real ``X-Consul-Index``, a body that is not JSON), ``"truncated"`` (the real head and
    the first half of the real body, then the connection closes), ``"close"`` (the connection closes before any answer)
    or ``"silent"`` (accepted, never answered: the client's timeout must end it). ``fault = None`` relays faithfully;
    ``faulted`` counts the reads that were spoiled. Writes always go through, so a test can change the catalog
    meanwhile. ``async with FaultyConsul(agent_url) as consul:`` then point the gateway at ``consul.url``."""

    def __init__(self, target_url: str) -> None:
        self.target_url = target_url.rstrip("/")
        self.fault: ConsulFault | None = None
        self.faulted = 0
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._changed = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_fault(self, fault: ConsulFault | None) -> None:
        self.fault = fault
        self._changed.set()  # a silent read in progress gives up now (its client has gone or will not care)
        self._changed = asyncio.Event()

    async def __aenter__(self) -> FaultyConsul:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None), auto_decompress=False
        )
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = next(a[1] for a in self._runner.addresses if isinstance(a, tuple))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.set_fault(None)
        assert self._runner is not None
        assert self._session is not None
        await self._runner.cleanup()
        await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        read = request.method == "GET" and request.path.startswith("/v1/")
        if read and self.fault == "silent":
            return await self._silence()
        # The fault that counts is the one in force when the answer is due: a blocking query that was waiting in
        # the agent when the fault began gets it too, as it would from a failing agent.
        status, headers, payload = await self._forward(request)
        fault = self.fault if read else None
        if fault == "silent":
            return await self._silence()
        if fault is not None:
            self.faulted += 1
        transport = request.transport
        assert transport is not None
        if fault == "close":
            transport.close()
            raise web.HTTPServiceUnavailable()  # never reaches the closed connection
        if fault == "500":
            return web.Response(status=500, text="rpc error making call: No cluster leader")
        if fault == "invalid_json":
            return web.Response(status=status, body=b'{"not json', headers=headers)
        if fault == "truncated":
            response = web.StreamResponse(status=status, headers=headers)
            response.content_length = len(payload)
            await response.prepare(request)
            await response.write(payload[: len(payload) // 2])
            transport.close()
            return response
        return web.Response(status=status, body=payload, headers=headers)

    async def _silence(self) -> web.StreamResponse:
        self.faulted += 1
        await self._changed.wait()  # until the fault changes (or the client gives up: the handler is cancelled)
        raise web.HTTPServiceUnavailable()

    async def _forward(self, request: web.Request) -> tuple[int, dict[str, str], bytes]:
        assert self._session is not None
        return await relay(self._session, self.target_url, request)


async def relay(
    session: aiohttp.ClientSession, target_url: str, request: web.Request
) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` on to the agent at ``target_url``: its status, the headers to answer with (framing left to
    aiohttp, Content-Type kept as the agent sent it) and its body."""
    body = await request.read()
    headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
    async with session.request(
        request.method, target_url + request.rel_url.raw_path_qs, data=body or None, headers=headers
    ) as resp:
        payload = await resp.read()
        passed = {
            k: v
            for k, v in resp.headers.items()
            if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-type")
        }
        passed["Content-Type"] = resp.headers.get("Content-Type", "application/json")
        return resp.status, passed, payload
