"""Test helpers shared by tests/ratelimit and tests/auth: a manual clock, StageDeps, a real aiohttp server that
runs a stage chain the way the gateway does (errors rendered with their headers, upstream edits echoed back), and a
private redis-server that tests stop and restart."""

from __future__ import annotations

import asyncio
import contextvars
import random
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict
from redis.asyncio import Redis

from consulgw.auth.jwks import JwksCache
from consulgw.errors import GatewayError
from consulgw.metrics import GatewayMetrics
from consulgw.pipeline.context import RequestContext, Stage, build_chain
from consulgw.pipeline.stages.deps import StageDeps
from consulgw.policy.model import PolicyBook
from consulgw.ratelimit.local import LocalLimiter
from consulgw.ratelimit.outage import BackendOutage

CLIENT_IP_HEADER = "X-Test-Client-IP"  # lets one test client act as many addresses


class FakeClock:
    def __init__(self, *, monotonic: float = 1000.0, wall: float = 1_700_000_000.0) -> None:
        self.mono = monotonic
        self.wall = wall

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return self.wall

    async def sleep(self, seconds: float) -> None:
        self.advance(seconds)
        await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


def make_deps(
    *,
    service: str,
    http: aiohttp.ClientSession,
    clock: Any,
    book: Callable[[], PolicyBook] = PolicyBook,
    redis: Redis | None = None,
    metrics: GatewayMetrics | None = None,
    local_limits: LocalLimiter | None = None,
    jwks: JwksCache | None = None,
    worker_index: int = 0,
    worker_count: int = 1,
    outage: BackendOutage | None = None,
) -> StageDeps:
    return StageDeps(
        service=service,
        clock=clock,
        rng=random.Random(7),
        metrics=metrics or GatewayMetrics(),
        http=http,
        redis=redis,
        consumers=book,
        jwks=jwks or JwksCache(http=http, clock=clock),
        local_limits=local_limits if local_limits is not None else LocalLimiter(clock=clock),
        redis_outage=outage or BackendOutage(),
        worker_index=worker_index,
        worker_count=worker_count,
    )


@asynccontextmanager
async def serve_stages(stages: tuple[Stage, ...], *, service: str = "svc") -> AsyncIterator[str]:
    """Run ``stages`` in front of an echo terminal on 127.0.0.1; yields the base URL."""

    request_headers: contextvars.ContextVar[CIMultiDict[str]] = contextvars.ContextVar("request_headers")

    async def terminal(ctx: RequestContext) -> web.StreamResponse:
        upstream = CIMultiDict(request_headers.get())
        ctx.upstream_edits.apply(upstream)
        response = web.json_response(
            {
                "consumer": ctx.consumer,
                "upstream": {k: upstream.getall(k) for k in upstream if k.lower().startswith("x-")},
            }
        )
        ctx.response_edits.apply(response.headers)
        return response

    async def handler(request: web.Request) -> web.StreamResponse:
        request_headers.set(CIMultiDict(request.headers))
        ctx = RequestContext(
            request_id="test",
            client_ip=request.headers.get(CLIENT_IP_HEADER, request.remote or "127.0.0.1"),
            service=service,
            route=f"{service}/",
            started=0.0,
        )
        try:
            return await build_chain(stages, terminal, request)(ctx)
        except GatewayError as exc:
            return web.json_response(
                {"error": exc.code, "message": exc.message}, status=exc.status, headers=exc.headers
            )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A redis-server of the test's own on a free port (no persistence): stop() and start() simulate an outage."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (make services installs it)")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(7).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not come up")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None
