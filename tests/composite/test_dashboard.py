"""The dashboard shows composite routes (in the route table and with their calls) in a real headless Chromium."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from consulgw.devagent import DevAgent
from consulgw.server.gateway import Gateway
from tests.composite.conftest import BRIEF
from tests.dashboard.cdp import Chromium, Page, find_chromium
from tests.dashboard.test_dashboard_browser import poll
from tests.gateway.conftest import Consul, gateway_settings_for

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed (make test installs it)"),
]


@pytest.fixture
async def page(tmp_path: Path) -> AsyncIterator[Page]:
    async with Chromium.launch(tmp_path / "chromium-profile") as browser:
        yield await browser.new_page()


async def test_the_dashboard_lists_composites_and_their_calls(page: Page, dev_agent: DevAgent) -> None:
    async with (
        Gateway(gateway_settings_for(dev_agent.url), consul_wait=5.0) as gateway,
        aiohttp.ClientSession() as session,
    ):
        await gateway.wait_ready()
        await page.navigate(f"{gateway.admin_url}/")
        await poll(page, "document.querySelector('#composites .empty') !== null", True, timeout=10)
        await Consul(session, dev_agent.url).kv_put("consulgw/composites/user-dashboard", json.dumps(BRIEF))
        calls = "[...document.querySelectorAll('[data-composite=\"user-dashboard\"] tr[data-call]')].map(r => r.dataset.call)"
        await poll(page, calls, ["user", "orders", "notifications"], timeout=10)
        route = "[...document.querySelectorAll('#routes tbody tr[data-route]')].map(r => r.cells[1].textContent)"
        assert await page.evaluate(route) == ["composite:user-dashboard"]
        facts = await page.evaluate("document.querySelector('[data-composite=\"user-dashboard\"] .facts').textContent")
        assert facts == "GET, HEAD · merge nest · deadline 0.8s · partial status 200 · auth jwt"
        cells = await page.evaluate(
            "[...document.querySelector('[data-call=\"orders\"]').cells].map(c => c.textContent)"
        )
        assert cells == ["orders", "orders", "/orders?user={sub}&limit=5", "optional, default []", "0.5s"]
        assert page.events("Runtime.exceptionThrown") == []
