"""CatalogWatcher against a scripted Consul on a real socket, for faults the dev agent cannot produce on demand:
a 5xx on one endpoint, an index that goes backwards without a restart (KV tombstone reaping), an index of 0, and a
malformed health entry.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web

from consulgw.clock import SystemClock
from consulgw.discovery.consul_api import ConsulClient
from consulgw.discovery.watcher import CatalogWatcher
from consulgw.model.snapshot import CatalogSnapshot, Health
from consulgw.settings import ConsulSettings
from tests.discovery.conftest import RequestLog, Running, eventually, routed


@dataclass
class ScriptedConsul:
    """Just enough of Consul's blocking reads: one global index; every endpoint reports it, or a forced value."""

    url: str = ""
    index: int = 20
    catalog: dict[str, list[str]] = field(default_factory=dict)
    health: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    kv: dict[str, bytes] = field(default_factory=dict)
    faults: dict[str, tuple[int, str]] = field(default_factory=dict)  # path -> (status, body)
    forced_index: dict[str, int] = field(default_factory=dict)  # path -> X-Consul-Index to report
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    closing: bool = False

    async def bump(self) -> None:
        async with self.changed:
            self.index += 1
            self.changed.notify_all()

    def reported(self, path: str) -> int:
        return self.forced_index.get(path, self.index)

    async def handle(self, request: web.Request) -> web.Response:
        path = request.path
        index = int(request.query.get("index", "0"))
        wait = float(request.query.get("wait", "1000ms").removesuffix("ms")) / 1000
        if index:
            async with self.changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self.changed.wait_for(
                            lambda: self.reported(path) > index or path in self.faults or self.closing
                        ),
                        wait,
                    )
        if path in self.faults:
            status, body = self.faults[path]
            return web.Response(status=status, text=body)
        headers = {"X-Consul-Index": str(self.reported(path))}
        if path == "/v1/catalog/services":
            return web.json_response(self.catalog, headers=headers)
        if path.startswith("/v1/health/service/"):
            entries = self.health.get(path.rsplit("/", 1)[1], [])
            if "filter" in request.query:  # the watcher's index probe: a filter nothing matches
                entries = []
            return web.json_response(entries, headers=headers)
        if path.startswith("/v1/health/state/"):
            state = path.rsplit("/", 1)[1]
            checks = [
                {
                    **check,
                    "Node": e["Node"]["Node"],
                    "ServiceName": e["Service"]["Service"] if check["ServiceID"] else "",
                }
                for entries in self.health.values()
                for e in entries
                for check in e["Checks"]
                if check["Status"] == state
            ]
            return web.json_response(checks, headers=headers)
        if path.startswith("/v1/kv/"):
            prefix = path.removeprefix("/v1/kv/")
            entries = [
                {"Key": k, "Value": base64.b64encode(v).decode(), "Flags": 0}
                for k, v in sorted(self.kv.items())
                if k.startswith(prefix)
            ]
            if not entries:
                return web.Response(status=404, headers=headers)
            return web.json_response(entries, headers=headers)
        return web.Response(status=404, text="Invalid URL path: not a recognized HTTP API endpoint")


def entry(service: str, sid: str, port: int, status: str = "passing") -> dict[str, Any]:
    return {
        "Node": {"Node": "n1", "Address": "10.0.0.1"},
        "Service": {"ID": sid, "Service": service, "Tags": ["gw"], "Address": "", "Port": port, "Meta": {}},
        "Checks": [
            {"CheckID": "serfHealth", "Status": "passing", "ServiceID": ""},
            {"CheckID": f"service:{sid}", "Status": status, "ServiceID": sid},
        ],
    }


@pytest.fixture
async def consul() -> AsyncIterator[ScriptedConsul]:
    scripted = ScriptedConsul(
        catalog={"consul": [], "web": ["gw"], "api": ["gw"]},
        health={"web": [entry("web", "web-1", 80)], "api": [entry("api", "api-1", 81)]},
    )
    app = web.Application()
    app.router.add_get("/{tail:.*}", scripted.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    scripted.url = f"http://127.0.0.1:{port}"
    yield scripted
    async with scripted.changed:
        scripted.closing = True
        scripted.changed.notify_all()
    await runner.cleanup()


async def test_5xx_on_one_service_keeps_its_last_state(
    consul: ScriptedConsul, start_watcher: Callable[..., Running]
) -> None:
    run = start_watcher(consul.url)
    first = await run.recorder.wait_for(lambda s: True)
    errors = run.watcher.status.errors_total

    async with consul.changed:
        consul.faults["/v1/health/service/web"] = (500, "rpc error making call: No cluster leader")
        consul.changed.notify_all()
    await eventually(lambda: run.watcher.status.errors_total > errors)
    status = run.watcher.status
    assert not status.consul_reachable
    assert status.failing_watches == 1

    consul.health["api"] = [entry("api", "api-1", 81, "critical")]  # other services keep converging
    await consul.bump()
    snap = await run.recorder.wait_for(lambda s: s.services["api"].instances[0].health is Health.CRITICAL)
    assert snap.changed == frozenset({"api"})
    assert snap.services["web"] == first.services["web"]  # last good state, not empty

    consul.health["web"] = [entry("web", "web-1", 80), entry("web", "web-2", 82)]
    del consul.faults["/v1/health/service/web"]
    snap = await run.recorder.wait_for(lambda s: len(s.services["web"].instances) == 2)
    assert snap.changed == frozenset({"web"})
    await eventually(lambda: run.watcher.status.consul_reachable)
    assert run.watcher.status.failing_watches == 0


async def test_malformed_health_answer_keeps_the_last_state(
    consul: ScriptedConsul, start_watcher: Callable[..., Running]
) -> None:
    run = start_watcher(consul.url)
    first = await run.recorder.wait_for(lambda s: True)
    bad = entry("web", "web-1", 80)
    bad["Service"]["Port"] = "eighty"
    consul.health["web"] = [bad]
    with structlog.testing.capture_logs() as logs:
        await consul.bump()
        await eventually(lambda: run.watcher.status.failing_watches == 1)
    failed = [e for e in logs if e["event"] == "consul_watch_failed"]
    assert failed[0]["endpoint"] == "/v1/health/service/web"
    assert "Service.Port is 'eighty'" in failed[0]["error"]
    assert run.recorder.snapshots == [first]


async def test_index_going_backwards_resets_and_publishes_only_real_changes(
    consul: ScriptedConsul, start_watcher: Callable[..., Running], requests_log: RequestLog
) -> None:
    consul.kv["consulgw/a"] = b"1"
    run = start_watcher(consul.url)
    await run.recorder.wait_for(lambda s: True)
    with structlog.testing.capture_logs() as logs:
        async with consul.changed:  # tombstones reaped: the KV prefix index drops, the data does not change
            consul.forced_index["/v1/kv/consulgw/"] = 5
            consul.changed.notify_all()
        await eventually(lambda: any(e["event"] == "consul_index_reset" for e in logs), timeout=10)
        await eventually(lambda: run.watcher.status.kv_index == 5)
    reset = next(e for e in logs if e["event"] == "consul_index_reset")
    assert reset["endpoint"] == "/v1/kv/consulgw/"
    assert reset["returned"] == 5
    assert len(run.recorder.snapshots) == 1  # same data: nothing to publish
    # and after the reset it blocks on the new, lower index
    await eventually(lambda: any(q.get("index") == "5" for _m, p, q in requests_log.entries if p == "/v1/kv/consulgw/"))

    consul.kv["consulgw/a"] = b"2"
    consul.forced_index["/v1/kv/consulgw/"] = 6
    await consul.bump()
    snap = await run.recorder.wait_for(lambda s: s.kv.get("a") == b"2")
    assert snap.kv_changed
    assert snap.changed == frozenset()


async def test_index_zero_is_treated_as_one(
    consul: ScriptedConsul, start_watcher: Callable[..., Running], requests_log: RequestLog
) -> None:
    consul.forced_index["/v1/catalog/services"] = 0
    run = start_watcher(consul.url, rate=1000.0)
    await run.recorder.wait_for(lambda s: True)
    await eventually(lambda: sum(p == "/v1/catalog/services" for _m, p, _q in requests_log.entries) >= 2)
    catalog = [q for _m, p, q in requests_log.entries if p == "/v1/catalog/services"]
    assert "index" not in catalog[0]
    assert catalog[1]["index"] == "1"  # blocks (returns after wait), instead of spinning on index=0
    await asyncio.sleep(0.5)
    assert sum(p == "/v1/catalog/services" for _m, p, _q in requests_log.entries) <= 3


async def test_blocking_timeouts_without_change_publish_nothing(
    consul: ScriptedConsul, start_watcher: Callable[..., Running], requests_log: RequestLog
) -> None:
    run = start_watcher(consul.url, wait=0.2)
    await run.recorder.wait_for(lambda s: True)
    mark = len(requests_log.entries)
    await eventually(lambda: len(requests_log.health_paths(mark)) >= 6)  # several timed-out blocking rounds
    assert len(run.recorder.snapshots) == 1
    assert run.watcher.status.consul_reachable


async def test_services_appearing_later_are_added_incrementally(
    consul: ScriptedConsul, start_watcher: Callable[..., Running], requests_log: RequestLog
) -> None:
    run = start_watcher(consul.url)
    await run.recorder.wait_for(lambda s: True)
    consul.catalog["new"] = ["gw"]
    consul.health["new"] = [entry("new", "new-1", 90)]
    consul.catalog["db"] = []  # not routed: never watched
    await consul.bump()
    snap = await run.recorder.wait_for(lambda s: "new" in s.services)
    assert snap.changed == frozenset({"new"})
    assert set(snap.services) == {"web", "api", "new"}
    assert "/v1/health/service/db" not in requests_log.health_paths()


async def test_a_failing_consumer_gets_the_snapshot_again(
    consul: ScriptedConsul, session: aiohttp.ClientSession
) -> None:
    received: list[CatalogSnapshot] = []
    failures = [RuntimeError("route table bug")]

    def publish(snapshot: CatalogSnapshot) -> None:
        if failures:
            raise failures.pop()
        received.append(snapshot)

    watcher = CatalogWatcher(
        ConsulClient(ConsulSettings(address=consul.url), session),
        kv_prefix="consulgw/",
        is_routed=routed,
        coalesce_window=0.01,
        clock=SystemClock(),
        rng=random.Random(3),
        wait=1.0,
        max_backoff=0.1,
    )
    with structlog.testing.capture_logs() as logs:
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(watcher.run(publish))
            await eventually(lambda: bool(received))
            task.cancel()
    assert [e["error"] for e in logs if e["event"] == "catalog_publish_failed"] == ["RuntimeError: route table bug"]
    assert received[0].complete
    assert received[0].changed == frozenset({"web", "api"})  # still the first snapshot for this consumer
    assert watcher.status.complete
