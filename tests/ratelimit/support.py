"""Test helpers shared by tests/ratelimit and tests/auth: a manual clock, StageDeps, and a private redis-server that
tests stop and restart. Stages run on a real server through ``tests.support.pipeline.serve_stages`` (re-exported
here with ``CLIENT_IP_HEADER``)."""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from consulgw.auth.jwks import JwksCache
from consulgw.metrics import GatewayMetrics
from consulgw.pipeline.stages.deps import StageDeps
from consulgw.policy.model import PolicyBook
from consulgw.ratelimit.local import LocalLimiter
from consulgw.ratelimit.outage import BackendOutage
from tests.support.pipeline import CLIENT_IP_HEADER, serve_stages

__all__ = ["CLIENT_IP_HEADER", "FakeClock", "PrivateRedis", "free_port", "make_deps", "serve_stages"]


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
