"""A scriptable origin server on 127.0.0.1 for the cache, composite and transform tests.

``Origin.replies[path]`` says how a path answers (status, headers, body, ETag, delay, chunked or not); every request
is recorded (``requests``), so tests count what reached the upstream and what it was sent. A reply with an ``etag``
answers ``304`` to a matching ``If-None-Match``, as a real origin would. A body may be a function of the request
(to echo headers back). ``failing`` makes every path answer 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
from aiohttp import web

Body = bytes | Callable[[web.Request], bytes]


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: Body = b'{"ok": true}'
    content_type: str = "application/json"
    etag: str | None = None
    delay: float = 0.0
    chunked: bool = False  # send the body in 16 KiB chunks without Content-Length
    gzip: Literal["never", "if_accepted", "always"] = "never"  # Content-Encoding: gzip (as origins do)


@dataclass
class Seen:
    method: str
    path: str  # with the query
    headers: dict[str, str]
    body: bytes


def echo(request: web.Request) -> bytes:
    """A body saying what the origin received (headers lower-cased), for requests the test wants to inspect."""
    return json.dumps({"path": request.path_qs, "headers": {k.lower(): v for k, v in request.headers.items()}}).encode()


class Origin:
    def __init__(self, name: str = "origin") -> None:
        self.name = name
        self.replies: dict[str, Reply] = {}
        self.default = Reply()
        self.requests: list[Seen] = []
        self.failing = False
        self.runner: web.AppRunner | None = None
        self.port = 0

    def count(self, path: str | None = None, method: str | None = None) -> int:
        return sum(
            1
            for seen in self.requests
            if (path is None or seen.path.partition("?")[0] == path) and (method is None or seen.method == method)
        )

    async def start(self, port: int = 0) -> None:
        async def handle(request: web.Request) -> web.StreamResponse:
            body_in = await request.read()
            self.requests.append(
                Seen(request.method, request.path_qs, {k.lower(): v for k, v in request.headers.items()}, body_in)
            )
            reply = self.replies.get(request.path, self.default)
            if reply.delay:
                await asyncio.sleep(reply.delay)
            if self.failing:
                return web.json_response({"failing": True}, status=500)
            headers = dict(reply.headers)
            if reply.etag is not None:
                headers["ETag"] = reply.etag
                wanted = request.headers.get("If-None-Match")
                if wanted is not None and reply.etag in [t.strip() for t in wanted.split(",")]:
                    return web.Response(status=304, headers=headers)
            body = reply.body(request) if callable(reply.body) else reply.body
            headers["Content-Type"] = reply.content_type
            accepts = "gzip" in request.headers.get("Accept-Encoding", "")
            if reply.gzip == "always" or (reply.gzip == "if_accepted" and accepts):
                body = gzip.compress(body)
                headers["Content-Encoding"] = "gzip"
            if not reply.chunked:
                return web.Response(status=reply.status, headers=headers, body=body)
            response = web.StreamResponse(status=reply.status, headers=headers)
            response.enable_chunked_encoding()
            await response.prepare(request)
            for start in range(0, len(body), 16384):
                await response.write(body[start : start + 16384])
            await response.write_eof()
            return response

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        await site.start()
        self.port = int(next(a[1] for a in self.runner.addresses if isinstance(a, tuple)))

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.fixture
async def origins() -> AsyncIterator[Callable[..., Awaitable[Origin]]]:
    """``await origins(name)``: a started Origin, stopped at teardown."""
    started: list[Origin] = []

    async def factory(name: str = "origin", *, port: int = 0) -> Origin:
        origin = Origin(name)
        await origin.start(port)
        started.append(origin)
        return origin

    yield factory
    for origin in started:
        with contextlib.suppress(Exception):
            await origin.stop()


def json_of(data: bytes) -> Any:
    return json.loads(data)
