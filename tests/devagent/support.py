"""Helpers for the dev agent's own tests: a tiny HTTP client over aiohttp and a jitter-free Random."""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass, field
from typing import Any

import aiohttp


class NoJitter(random.Random):
    """Random whose ``random()`` is always 0: no blocking-query jitter, no check stagger (UUIDs stay random)."""

    def random(self) -> float:
        return 0.0


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def index(self) -> int:
        return int(self.headers["X-Consul-Index"])


class Api:
    def __init__(self, base: str, session: aiohttp.ClientSession) -> None:
        self.base = base
        self.session = session

    async def call(
        self,
        method: str,
        path: str,
        params: list[tuple[str, str]] | dict[str, str] | None = None,
        *,
        body: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        payload = data if data is not None else (json.dumps(body).encode() if body is not None else None)
        async with self.session.request(
            method, self.base + path, params=params, data=payload, headers=headers, allow_redirects=False
        ) as resp:
            raw = await resp.read()
            return Reply(resp.status, raw, dict(resp.headers))

    async def get(self, path: str, params: list[tuple[str, str]] | dict[str, str] | None = None) -> Reply:
        return await self.call("GET", path, params)

    async def put(
        self, path: str, body: Any = None, params: list[tuple[str, str]] | dict[str, str] | None = None
    ) -> Reply:
        return await self.call("PUT", path, params, body=body)

    async def register(self, body: dict[str, Any], **params: str) -> None:
        reply = await self.put("/v1/agent/service/register", body, params or None)
        assert reply.status == 200, reply


class ManualClock:
    """A clock that only moves when told to: ``advance(seconds)`` wakes the sleepers that are due."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_800_000_000.0 + self.now

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (self.now + seconds, fut)
        self._sleepers.append(entry)
        try:
            await fut
        finally:
            if entry in self._sleepers:
                self._sleepers.remove(entry)

    async def advance(self, seconds: float) -> None:
        self.now += seconds
        for due, fut in list(self._sleepers):
            if due <= self.now and not fut.done():
                fut.set_result(None)
        for _ in range(5):  # let the woken tasks run
            await asyncio.sleep(0)
