"""`consulgw run --workers 2`: SO_REUSEPORT workers, shared metrics, local limits never exceeded, crash restart."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.processes import gateway_process

from .conftest import Consul, start_upstream, wait_for
from .test_resilience_e2e import _has_route, _ready

pytestmark = pytest.mark.slow


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


async def _fresh_get(url: str) -> int:
    """One request on a new connection, so the kernel may hand it to any worker."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http, http.get(url) as resp:
        await resp.read()
        return resp.status


async def _fresh_text(url: str) -> str:
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http, http.get(url) as resp:
        return await resp.text()


def _requests_total(text: str, route: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("consulgw_requests_total{") and f'route="{route}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_two_workers_share_the_port_metrics_and_limits(
    dev_agent: Any, consul: Consul, http: aiohttp.ClientSession
) -> None:
    up = await start_upstream("a")
    try:
        await consul.register("svc", up.port, tags=["gw.route=/svc", "gw.route=/limited"])
        await consul.kv_put("consulgw/services/svc", json.dumps({"rate_limit": {"requests": 4, "per": "60s"}}))
        async with gateway_process(dev_agent.url, "--workers", "2") as gw:
            proc, url, admin = gw.proc, gw.url, gw.admin_url
            await wait_for(lambda: _ready(http, admin), timeout=30)
            await wait_for(lambda: len(_children(proc.pid)) == 2, timeout=10)
            await wait_for(lambda: _has_route(http, admin, "svc"))

            statuses = await asyncio.gather(*(_fresh_get(f"{url}/limited") for _ in range(12)))
            admitted = statuses.count(200)
            assert set(statuses) <= {200, 429}
            assert 2 <= admitted <= 4, statuses  # each worker enforces its share: never more than the limit

            # Every worker's /metrics shows the sum over both workers.
            for _ in range(6):
                text = await _fresh_text(f"{admin}/metrics")
                assert _requests_total(text, "*/limited") == 12
            # Each worker writes its own asyncio task count every 5 s; /metrics shows one sample, the sum.
            tasks = [line for line in text.splitlines() if line.startswith("consulgw_event_loop_tasks")]
            assert len(tasks) == 1, tasks
            assert float(tasks[0].split()[-1]) >= 4  # two workers, each with a watcher or receiver and a builder

            # A worker that dies is replaced; the port keeps answering.
            victim = _children(proc.pid)[0]
            os.kill(victim, signal.SIGKILL)
            await wait_for(lambda: victim not in _children(proc.pid) and len(_children(proc.pid)) == 2, timeout=15)
            await wait_for(lambda: _ready(http, admin), timeout=30)

            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 20) == 0
            assert _children(proc.pid) == []
    finally:
        await up.stop()


def test_metrics_help_lines_are_unique() -> None:
    """Guard: every metric family name in consulgw.metrics is declared once (multiprocess mode merges by name)."""
    source = Path(__file__).resolve().parents[2].joinpath("consulgw/metrics.py").read_text()
    names = re.findall(r'"(consulgw_[a-z_]+)"', source)
    assert len(names) == len(set(names))


async def test_workers_stop_when_the_supervisor_is_killed(dev_agent: Any, http: aiohttp.ClientSession) -> None:
    """kill -9 (or the OOM killer) on the supervisor must not leave workers holding the port with no one to stop
    them: each worker gets SIGTERM from the kernel when its parent dies, drains and exits."""
    async with gateway_process(dev_agent.url, "--workers", "2") as gw:
        await wait_for(lambda: len(_children(gw.proc.pid)) == 2, timeout=10)
        workers = _children(gw.proc.pid)
        await wait_for(lambda: _ready(http, gw.admin_url), timeout=30)
        gw.proc.kill()
        await gw.proc.wait()

        def gone() -> bool:
            return not any(Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid) for pid in workers)

        await wait_for(gone, timeout=15)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:", 1)[1].split("\n", 1)[0].lower()
    except (OSError, IndexError):
        return "zombie"
