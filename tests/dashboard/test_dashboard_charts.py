"""The dashboard's charts in a real headless Chromium: under load, the service's charts move.

The gateway samples its time series every 0.5 s here (5 s in production). Load goes through the public listener
with a rate limit low enough that some requests are rejected, so the request, latency and rejection charts all
have something to draw. The effective policy is shown with its secret redacted. Screenshot:
``test-artifacts/dashboard-charts.png`` (docs/images/dashboard.png is a copy of one).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from consulgw.devagent import DevAgent
from consulgw.server.gateway import Gateway
from tests.gateway.conftest import Consul, Upstream, gateway_settings_for, start_upstream

from .cdp import Chromium, Page, find_chromium
from .test_dashboard_browser import ARTIFACTS, js, png_facts, poll

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed (make test installs it)"),
]

UPSTREAM_TOKEN = "Bearer upstream-token-that-must-not-show"
POLICY = {
    "rate_limit": {"requests": 40, "per": "1s"},
    "circuit_breaker": {"failure_threshold": 5, "recovery_timeout": "10s"},
    "headers": {"request": {"set": {"Authorization": UPSTREAM_TOKEN, "X-Env": "test"}}},
}


@pytest.fixture
async def consul(dev_agent: DevAgent) -> AsyncIterator[Consul]:
    async with aiohttp.ClientSession() as session:
        yield Consul(session, dev_agent.url)


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = await start_upstream("users")
    yield up
    await up.stop()


@pytest.fixture
async def gateway(dev_agent: DevAgent) -> AsyncIterator[Gateway]:
    async with Gateway(gateway_settings_for(dev_agent.url), consul_wait=5.0, history_interval=0.5) as gw:
        await gw.wait_ready()
        yield gw


@pytest.fixture
async def page(tmp_path: Path) -> AsyncIterator[Page]:
    async with Chromium.launch(tmp_path / "chromium-profile") as browser:
        yield await browser.new_page(height=1000)


def chart(service: str, metric: str) -> str:
    """JS: [data-max, polyline points] of one chart of a service, or null while it is not drawn."""
    selector = f'[data-service="{service}"] svg[data-metric="{metric}"]'
    return (
        f"(() => {{ const s = document.querySelector({js(selector)}); if (!s) return null; "
        "return [Number(s.dataset.max), [...s.querySelectorAll('polyline')].map(p => p.getAttribute('points')).join('|')]; })()"
    )


async def load(url: str, *, seconds: float, concurrency: int = 4) -> dict[int, int]:
    """GET ``url`` from ``concurrency`` clients for ``seconds``; count the statuses (a bounded loop)."""
    statuses: dict[int, int] = {}
    deadline = asyncio.get_running_loop().time() + seconds
    async with aiohttp.ClientSession() as http:

        async def client() -> None:
            for _ in range(10_000):
                if asyncio.get_running_loop().time() > deadline:
                    return
                async with http.get(url) as resp:
                    await resp.read()
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return statuses


async def test_charts_move_under_load(page: Page, gateway: Gateway, consul: Consul, upstream: Upstream) -> None:
    await consul.kv_put("consulgw/services/users", json.dumps(POLICY))
    await consul.register("users", upstream.port, service_id="users-1", tags=["gw.route=/users"])
    await page.navigate(f"{gateway.admin_url}/")
    await poll(page, "document.title", "consulgw", timeout=10)
    await poll(page, f"({chart('users', 'requests')}) !== null", True, timeout=15)
    idle = await page.evaluate(chart("users", "requests"))
    assert idle[0] == 0  # no traffic yet: a flat line

    statuses = await load(f"{gateway.url}/users/1", seconds=3)
    assert statuses.get(200, 0) > 50, statuses
    assert statuses.get(429, 0) > 0, statuses  # the rate limit rejected some: the rejection chart has data

    await poll(page, f"({chart('users', 'requests')})[0] > 0", True, timeout=15)
    await poll(page, f"({chart('users', 'rejections')})[0] > 0", True, timeout=15)
    await poll(page, f"({chart('users', 'latency')})[0] > 0", True, timeout=15)
    moved = await page.evaluate(chart("users", "requests"))
    assert moved[1] != idle[1]
    instance = '[data-instance="test-node/users-1"] svg[data-metric="instance-requests"]'
    await poll(page, f"Number(document.querySelector({js(instance)})?.dataset.max ?? 0) > 0", True, timeout=15)

    # The effective policy, secrets redacted the way log lines are.
    details = '[data-service="users"] details[data-testid="policy"]'
    await page.evaluate(f"document.querySelector({js(details)}).open = true")
    await poll(
        page, f"document.querySelector({js(details + ' pre')}).textContent.includes('[redacted]')", True, timeout=15
    )
    shown = await page.evaluate(f"document.querySelector({js(details + ' pre')}).textContent")
    assert "upstream-token-that-must-not-show" not in shown
    assert '"X-Env": "test"' in shown
    assert '"requests": 40' in shown

    assert page.events("Runtime.exceptionThrown") == []
    await asyncio.sleep(1.5)  # a few more samples after the load: the screenshot shows it ending
    await page.evaluate(f"document.querySelector({js(details)}).open = false")
    png = await page.screenshot()
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "dashboard-charts.png").write_bytes(png)
    width, _, variety = png_facts(png)
    assert width >= 1200
    assert variety > 20
