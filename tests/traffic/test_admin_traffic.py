"""What the admin listener and the dashboard show of a service's traffic policy (issue 9).

``/-/routes`` carries one readable line per section in force (``subsets``, ``split``, ``sticky``, ``slow_start``,
``mirror``), the subsets' pool sizes, and the sections as JSON in ``policy``; ``/-/policy/<service>`` has them too;
the dashboard (real headless Chromium) shows the lines under the service.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from consulgw.server.gateway import Gateway
from tests.dashboard.cdp import Chromium, Page, find_chromium
from tests.dashboard.test_dashboard_browser import poll
from tests.gateway.conftest import Consul
from tests.policy_e2e.conftest import admin_routes

from .support import canary_service

POLICY: dict[str, Any] = {
    "subsets": {
        "stable": {"meta": {"version": "v1"}},
        "canary": {"meta": {"version": "v2"}, "tags": ["!quarantine"]},
    },
    "split": {
        "default": "stable",
        "weights": {"stable": 90, "canary": 10},
        "match": [{"header": {"X-Canary": "always"}, "to": "canary"}],
        "hash": "cookie",
        "response_header": True,
    },
    "sticky": {"cookie": "pin", "secure": False},
    "slow_start": {"window": "30s"},
    "mirror": {"to": [{"subset": "canary", "percent": 5}], "timeout": "1s"},
    "lb": {"type": "hash", "key": "header:X-User-ID"},
}


async def test_routes_and_policy_show_the_traffic_sections(
    make_gateway: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession
) -> None:
    gateway: Gateway = await make_gateway()
    svc = await canary_service(gateway, consul, upstreams, policy=POLICY)
    facts = (await admin_routes(http, gateway.admin_url))["services"][svc.name]
    assert facts["subsets"] == "stable 2 in pool (version=v1) · canary 1 in pool (version=v2, !quarantine)"
    assert facts["split"] == (
        "stable 90 · canary 10 · header x-canary=always → canary · hash cookie:gw_split · default stable, on_empty default"
    )
    assert facts["sticky"] == "cookie pin · on_unavailable repick · keeps draining sessions"
    assert facts["slow_start"] == "window 30s"
    assert facts["mirror"] == (
        "subset:canary 5% · GET, HEAD · bodies up to 65536 bytes · timeout 1s · at most 64 in flight"
    )
    assert facts["subset_pools"]["canary"] == {"in_pool": 1, "draining": 0, "service": None}
    summary = facts["policy"]
    assert summary["lb_key"] == "header:x-user-id"
    assert summary["split"]["weights"] == {"stable": 90, "canary": 10}
    assert summary["split"]["match"] == [{"to": "canary", "header": {"x-canary": ["always"]}}]
    assert summary["subsets"]["canary"] == {"meta": {"version": ["v2"]}, "tags": ["!quarantine"]}
    assert summary["mirror"]["to"] == [{"target": "subset:canary", "percent": 5.0}]
    assert summary["slow_start"] == {"window": 30.0}
    async with http.get(f"{gateway.admin_url}/-/policy/{svc.name}") as resp:
        shown = json.loads(await resp.read())["policy"]
    assert shown["split"]["default"] == "stable"
    assert shown["slow_start"] == {"window": 30.0}


@pytest.fixture
async def page(tmp_path: Path) -> AsyncIterator[Page]:
    if find_chromium() is None:
        pytest.skip("chromium is not installed (make test installs it)")
    async with Chromium.launch(tmp_path / "chromium-profile") as browser:
        yield await browser.new_page()


@pytest.mark.browser
async def test_the_dashboard_shows_the_traffic_sections(
    make_gateway: Any, consul: Consul, upstreams: Any, page: Page
) -> None:
    gateway: Gateway = await make_gateway()
    svc = await canary_service(gateway, consul, upstreams, policy=POLICY)
    await page.navigate(f"{gateway.admin_url}/")
    facts = f"document.querySelector('[data-service=\"{svc.name}\"] [data-testid=facts]')?.textContent ?? null"
    await poll(page, f"(({facts}) || '').includes('split: stable 90 · canary 10')", True, timeout=10)
    text = await page.evaluate(facts)
    for expected in (
        "subsets: stable 2 in pool",
        "sticky: cookie pin",
        "slow start: window 30s",
        "mirror: subset:canary 5%",
    ):
        assert expected in text, text
    assert page.events("Runtime.exceptionThrown") == []
