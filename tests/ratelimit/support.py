"""Test helpers shared by tests/ratelimit and tests/auth: a manual clock and StageDeps. Stages run on a real server
through ``tests.support.pipeline.serve_stages`` (re-exported here with ``CLIENT_IP_HEADER``)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import aiohttp
from redis.asyncio import Redis

from consulgw.auth.jwks import JwksCache
from consulgw.metrics import GatewayMetrics
from consulgw.pipeline.stages.deps import StageDeps
from consulgw.policy.model import PolicyBook
from consulgw.ratelimit.local import LocalLimiter
from consulgw.ratelimit.outage import BackendOutage
from tests.support.pipeline import CLIENT_IP_HEADER, serve_stages

__all__ = ["CLIENT_IP_HEADER", "FakeClock", "make_deps", "serve_stages"]


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
