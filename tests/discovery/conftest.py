"""Fixtures for discovery tests: an HTTP session sized for many blocking watches, a snapshot recorder, agent helpers."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from yarl import URL

from consulgw.clock import SystemClock
from consulgw.discovery.consul_api import ConsulClient
from consulgw.discovery.watcher import CatalogWatcher
from consulgw.model.snapshot import CatalogSnapshot
from consulgw.settings import ConsulSettings, Secret

TIMEOUT = 20.0  # generous: only ever a ceiling, never an assertion on duration


def routed(name: str, tags: tuple[str, ...]) -> bool:
    """The routing team's predicate, simplified: a ``gw`` or ``gw.*`` tag routes the service."""
    return any(tag == "gw" or tag.startswith("gw.") for tag in tags)


@dataclass
class RequestLog:
    """Every request the watcher's session sends (method, path, query)."""

    entries: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    def trace_config(self) -> aiohttp.TraceConfig:
        config = aiohttp.TraceConfig()

        async def on_start(_session: Any, _ctx: Any, params: aiohttp.TraceRequestStartParams) -> None:
            url = URL(params.url)
            self.entries.append((params.method, url.raw_path, dict(url.query)))

        config.on_request_start.append(on_start)
        return config

    def health_paths(self, since: int = 0) -> list[str]:
        return [p for _m, p, _q in self.entries[since:] if p.startswith("/v1/health/service/")]


@dataclass
class Recorder:
    """The ``publish`` callback: keeps every snapshot and lets tests wait for one that satisfies a predicate."""

    snapshots: list[CatalogSnapshot] = field(default_factory=list)
    _event: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, snapshot: CatalogSnapshot) -> None:
        self.snapshots.append(snapshot)
        self._event.set()

    @property
    def last(self) -> CatalogSnapshot:
        return self.snapshots[-1]

    async def wait_for(
        self, predicate: Callable[[CatalogSnapshot], bool], *, after: int = 0, timeout: float = TIMEOUT
    ) -> CatalogSnapshot:
        """The first snapshot at position >= ``after`` that satisfies ``predicate``."""
        async with asyncio.timeout(timeout):
            while True:
                for snapshot in self.snapshots[after:]:
                    if predicate(snapshot):
                        return snapshot
                self._event.clear()
                await self._event.wait()


async def eventually(condition: Callable[[], bool], *, timeout: float = TIMEOUT) -> None:
    """Poll ``condition`` (watcher status, request logs: nothing to wait on) until it holds."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - polling public state that has no event to await
            await asyncio.sleep(0.02)


@dataclass
class Agent:
    """Writes to a Consul agent the way services and operators do."""

    url: str
    session: aiohttp.ClientSession

    async def put(self, path: str, *, json: Any = None, data: bytes | None = None, **params: str) -> Any:
        async with self.session.put(self.url + path, json=json, data=data, params=params) as response:
            body = await response.text()
            assert response.status == 200, f"PUT {path}: {response.status} {body}"
            return body

    async def register(
        self,
        name: str,
        *,
        service_id: str | None = None,
        tags: tuple[str, ...] = ("gw",),
        port: int = 8080,
        **extra: Any,
    ) -> str:
        sid = service_id or name
        definition = {
            "Name": name,
            "ID": sid,
            "Tags": list(tags),
            "Address": "127.0.0.1",
            "Port": port,
            "Check": {"CheckID": f"service:{sid}", "TTL": "10m", "Status": "passing"},
            **extra,
        }
        await self.put("/v1/agent/service/register", json=definition)
        return sid

    async def deregister(self, service_id: str) -> None:
        await self.put(f"/v1/agent/service/deregister/{service_id}")

    async def ttl(self, service_id: str, state: str, note: str = "") -> None:
        params = {"note": note} if note else {}
        await self.put(f"/v1/agent/check/{state}/service:{service_id}", **params)

    async def maintenance(self, service_id: str, enable: bool) -> None:
        await self.put(
            f"/v1/agent/service/maintenance/{service_id}", enable="true" if enable else "false", reason="deploy"
        )

    async def kv_put(self, key: str, value: bytes) -> None:
        await self.put(f"/v1/kv/{key}", data=value)

    async def kv_delete(self, key: str) -> None:
        async with self.session.delete(f"{self.url}/v1/kv/{key}") as response:
            assert response.status == 200


@pytest.fixture
def requests_log() -> RequestLog:
    return RequestLog()


@pytest.fixture
async def session(requests_log: RequestLog) -> AsyncIterator[aiohttp.ClientSession]:
    # One connection per blocking watch: no connector limit (docs/architecture-discovery.md).
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, trace_configs=[requests_log.trace_config()]) as s:
        yield s


@pytest.fixture
async def admin_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        yield s


@dataclass
class Running:
    watcher: CatalogWatcher
    recorder: Recorder
    task: asyncio.Task[None]


@pytest.fixture
async def start_watcher(
    session: aiohttp.ClientSession,
) -> AsyncIterator[Callable[..., Running]]:
    """Start a CatalogWatcher on ``url``; every one started is cancelled (and awaited) at teardown."""
    running: list[Running] = []

    def start(url: str, **options: Any) -> Running:
        settings = {"kv_prefix": "consulgw/", "coalesce_window": 0.05, "wait": 2.0, "max_backoff": 0.5, "rate": 50.0}
        settings.update(options)
        token = Secret(value=settings.pop("token", ""))
        client = ConsulClient(ConsulSettings(address=url, token=token), session)
        watcher = CatalogWatcher(
            client, is_routed=settings.pop("is_routed", routed), clock=SystemClock(), rng=random.Random(7), **settings
        )
        recorder = Recorder()
        task = asyncio.create_task(watcher.run(recorder))
        item = Running(watcher, recorder, task)
        running.append(item)
        return item

    yield start
    for item in running:
        item.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await item.task
