"""The dashboard in a real headless Chromium: it follows Consul live (register, fail a check) and renders.

The gateway runs in process against the dev agent; Chromium loads the admin listener's ``/`` and the test reads
the DOM through ``Runtime.evaluate`` (the page marks its parts with ``data-testid``, ``data-service`` and
``data-instance``). Screenshots are left in ``test-artifacts/dashboard.png`` (live) and
``test-artifacts/dashboard-consul-down.png`` (after the agent stopped).
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from consulgw.devagent import DevAgent
from consulgw.server.gateway import Gateway
from tests.gateway.conftest import Consul, Upstream, gateway_settings_for, start_upstream

from .cdp import Chromium, Page, find_chromium

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed (make test installs it)"),
]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"


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
    async with Gateway(gateway_settings_for(dev_agent.url), consul_wait=5.0) as gw:
        await gw.wait_ready()
        yield gw


@pytest.fixture
async def page(tmp_path: Path) -> AsyncIterator[Page]:
    async with Chromium.launch(tmp_path / "chromium-profile") as browser:
        yield await browser.new_page()


async def poll(page: Page, expression: str, expected: Any, *, timeout: float) -> float:
    """Evaluate ``expression`` until it equals ``expected``; return the seconds it took."""
    started = time.monotonic()
    last: Any = None
    while True:
        last = await page.evaluate(expression)
        if last == expected:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            pytest.fail(f"after {timeout}s, {expression} is {last!r}, expected {expected!r}")
        await asyncio.sleep(0.05)


def js(selector: str) -> str:
    """A JavaScript string literal for ``selector``."""
    return json.dumps(selector)


def instance_health(instance: str) -> str:
    cell = f'[data-instance="{instance}"] [data-testid="health"] .pill'
    return (
        f"(() => {{ const p = document.querySelector({js(cell)}); return p ? [p.textContent, p.className] : null; }})()"
    )


def png_facts(data: bytes) -> tuple[int, int, int]:
    """(width, height, distinct sampled bytes of the decoded image) of a PNG, with the standard library."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    idat, offset = b"", 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        if kind == b"IDAT":
            idat += data[offset + 8 : offset + 8 + length]
        offset += 12 + length
    raw = zlib.decompress(idat)
    return width, height, len(set(raw[::7]))


async def test_dashboard_follows_consul_live(
    page: Page, gateway: Gateway, consul: Consul, upstream: Upstream, dev_agent: DevAgent
) -> None:
    await page.navigate(f"{gateway.admin_url}/")
    await poll(page, "document.title", "consulgw", timeout=10)
    await poll(page, "document.querySelector('#services .empty')?.textContent ?? null", "no routed services", timeout=5)

    # Register an instance: it appears (the page polls /-/routes every 500 ms).
    tags = ["gw.route=/users strip=/users methods=GET,POST", "gw.lbb=ip_hash"]
    sid = await consul.register("users", upstream.port, service_id="users-1", tags=tags)
    instance = f"test-node/{sid}"
    appeared = await poll(page, instance_health(instance), ["passing", "pill passing"], timeout=5)
    await consul.register("users", upstream.port, service_id="users-2", tags=tags)  # a second, healthy one
    await poll(page, "document.querySelectorAll('[data-service=\"users\"] [data-instance]').length", 2, timeout=5)

    # Fail its TTL check: its health pill turns critical, and its weight to 0.
    await consul.check(sid, "critical")
    turned = await poll(page, instance_health(instance), ["critical", "pill critical"], timeout=5)
    row = f'[data-instance="{instance}"]'
    cells = await page.evaluate(f"[...document.querySelector({js(row)}).cells].map(c => c.textContent)")
    assert cells[1] == f"127.0.0.1:{upstream.port}"
    assert cells[3] == "0"  # effective weight
    assert await page.evaluate(instance_health("test-node/users-2")) == ["passing", "pill passing"]

    # The rest of the page: the route, the rejected tag, the sync state.
    route = await page.evaluate(
        "[...document.querySelectorAll('#routes tbody tr[data-route]')].map(r => [...r.cells].map(c => c.textContent))"
    )
    assert route == [["*/users", "users", "GET, HEAD, POST", "/users", "gw.route=/users strip=/users methods=GET,POST"]]
    problems = await page.evaluate("document.querySelector('[data-testid=problems]').textContent")
    assert "gw.lbb=ip_hash" in problems
    assert "did you mean 'gw.lb=ip_hash'?" in problems
    assert (await page.evaluate("document.querySelector('[data-testid=sync] .pill').textContent")) == (
        "in sync with Consul"
    )
    assert page.events("Runtime.exceptionThrown") == []
    assert [e for e in page.events("Runtime.consoleAPICalled") if e.get("type") == "error"] == []

    png = await page.screenshot()
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "dashboard.png").write_bytes(png)
    width, height, variety = png_facts(png)
    assert width == 1280
    assert height >= 600
    assert len(png) > 20_000
    assert variety > 20  # text, pills, lines: not a blank page
    print(f"instance shown after {appeared:.2f}s, critical after {turned:.2f}s; screenshot {len(png)} bytes")

    # Consul goes away: the page says so, and still shows the last good view (which the gateway keeps serving).
    await dev_agent.stop()
    sync = "(() => { const p = document.querySelector('[data-testid=sync] .pill'); return p.className; })()"
    await poll(page, sync, "pill down", timeout=15)
    text = await page.evaluate("document.querySelector('[data-testid=sync] .pill').textContent")
    assert text.startswith("Consul unreachable")
    assert await page.evaluate(instance_health("test-node/users-2")) == ["passing", "pill passing"]
    (ARTIFACTS / "dashboard-consul-down.png").write_bytes(await page.screenshot())


async def test_dashboard_pages_and_filters_services(
    page: Page, gateway: Gateway, consul: Consul, upstream: Upstream
) -> None:
    """/-/routes answers a page of services (issue 13: 5,000 services made 4 MB per poll); the dashboard says how
    many it shows, passes its own ?limit= and ?service= on, and filters by service name."""
    for name in ("svc-a", "svc-b", "svc-c"):
        await consul.register(name, upstream.port, service_id=f"{name}-1", tags=[f"gw.route=/{name}"])
    await page.navigate(f"{gateway.admin_url}/?limit=2")
    services = "[...document.querySelectorAll('[data-service]')].map(d => d.dataset.service)"
    await poll(page, services, ["svc-a", "svc-b"], timeout=10)
    await poll(page, "document.querySelector('[data-testid=shown]').textContent", "showing 2 of 3 (by name)", timeout=5)
    choose = (
        "(() => { const f = document.querySelector('[data-testid=filter]'); f.value = 'svc-c, svc-a';"
        " f.dispatchEvent(new Event('change')); return location.search; })()"
    )
    assert await page.evaluate(choose) == "?limit=2&service=svc-c%2C+svc-a"
    await poll(page, services, ["svc-a", "svc-c"], timeout=5)
    await poll(page, "document.querySelector('[data-testid=shown]').textContent", "", timeout=5)
    routes = "[...document.querySelectorAll('#routes tbody tr[data-route]')].map(r => r.dataset.route)"
    assert await page.evaluate(routes) == ["*/svc-a", "*/svc-c"]
    assert page.events("Runtime.exceptionThrown") == []


async def test_dashboard_names_a_token_that_lacks_kv_read(page: Page, dev_agent: DevAgent, upstream: Upstream) -> None:
    from tests.support.consul_fakes import KvDenyingProxy

    async with aiohttp.ClientSession() as session:
        await Consul(session, dev_agent.url).register("users", upstream.port, tags=["gw.route=/users"])
    async with (
        KvDenyingProxy(dev_agent.url, prefix="consulgw/") as proxy,
        Gateway(gateway_settings_for(proxy.url), consul_wait=5.0) as gateway,
    ):
        await gateway.wait_ready()
        await page.navigate(f"{gateway.admin_url}/")
        denied = "document.querySelector('[data-testid=kv-denied]')?.textContent ?? null"
        await poll(page, denied, "token lacks KV read: policies not applied", timeout=10)
        assert await page.evaluate("document.querySelector('[data-testid=sync] .pill').textContent") == (
            "in sync with Consul"  # Consul answers; only the KV prefix is out of reach
        )
        assert await page.evaluate(instance_health(f"test-node/users-{upstream.port}")) == ["passing", "pill passing"]
        proxy.denying = False
        await poll(page, denied, None, timeout=15)
        assert page.events("Runtime.exceptionThrown") == []


def group_alive(pgid: int) -> bool:
    """Is any process of the group still running (zombies waiting to be reaped do not count)?"""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


async def test_chromium_is_killed_even_when_the_test_fails(tmp_path: Path) -> None:
    class Boom(Exception):
        pass

    pgids: list[int] = []

    async def crash() -> None:
        async with Chromium.launch(tmp_path / "profile") as browser:
            pgids.append(browser.pid)
            page = await browser.new_page()
            await page.navigate("about:blank")
            assert group_alive(browser.pid)
            raise Boom

    with pytest.raises(Boom):
        await crash()
    assert pgids
    assert not group_alive(pgids[0]), "a chromium process outlived the test"
