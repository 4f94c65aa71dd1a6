"""``/-/docs`` in a real headless Chromium: the reference page renders the merged document, and the browser asks
nothing of any host but the gateway's admin listener (gateways often have no internet).

Every request the page makes is read from the DevTools ``Network.requestWillBeSent`` events. The screenshot is
left in ``test-artifacts/openapi-docs.png``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from consulgw.server.gateway import Gateway
from tests.dashboard.cdp import Chromium, Page, find_chromium
from tests.dashboard.test_dashboard_browser import ARTIFACTS, png_facts, poll
from tests.gateway.conftest import Consul, Upstream, wait_for

from .support import doc, op

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed (make test installs it)"),
]

ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
PETS = doc(
    {
        "/pets": {"get": op("listPets", summary="List the pets"), "post": op("addPet", summary="Add a pet")},
        "/pets/{id}": {"get": op("getPet", summary="One pet", parameters=[ID])},
    },
    components={"schemas": {"Pet": {"type": "object", "properties": {"name": {"type": "string"}}}}},
)


@pytest.fixture
async def page(tmp_path: Path) -> AsyncIterator[Page]:
    async with Chromium.launch(tmp_path / "chromium-profile") as browser:
        yield await browser.new_page()


async def test_docs_page_renders_from_the_admin_listener_alone(
    page: Page,
    gateway_factory: Callable[..., Awaitable[Gateway]],
    consul: Consul,
    upstreams: Callable[..., Awaitable[Upstream]],
    http: aiohttp.ClientSession,
) -> None:
    def serve_document(app: aiohttp.web.Application) -> None:
        async def document(_: aiohttp.web.Request) -> aiohttp.web.Response:
            return aiohttp.web.json_response(PETS)

        app.router.add_get("/openapi.json", document)

    pets = await upstreams("pets", extra_routes=serve_document)
    await consul.register(
        "pets", pets.port, tags=["gw.route=/shop/pets strip=/shop"], meta={"gw-openapi": "/openapi.json"}
    )
    gateway = await gateway_factory()

    async def documented() -> bool:
        async with http.get(f"{gateway.admin_url}/-/openapi.json") as resp:
            return "/shop/pets" in json.loads(await resp.read())["paths"]

    await wait_for(documented, timeout=20)
    await page.send("Network.enable")
    await page.navigate(f"{gateway.admin_url}/-/docs")
    await poll(page, "document.querySelectorAll('.opblock').length", 3, timeout=30)
    summaries = await page.evaluate(
        "[...document.querySelectorAll('.opblock-summary-path')].map(e => e.getAttribute('data-path'))"
    )
    assert sorted(summaries) == ["/shop/pets", "/shop/pets", "/shop/pets/{id}"]
    await poll(page, "document.querySelectorAll('#doc option').length", 2, timeout=10)  # merged + pets

    requested = [e["request"]["url"] for e in page.events("Network.requestWillBeSent")]
    assert f"{gateway.admin_url}/-/docs/swagger-ui-bundle.js" in requested
    assert f"{gateway.admin_url}/-/openapi.json" in requested
    elsewhere = [u for u in requested if not u.startswith((gateway.admin_url + "/", "data:", "blob:"))]
    assert elsewhere == []
    failed = page.events("Network.loadingFailed")
    assert failed == []
    assert page.events("Runtime.exceptionThrown") == []

    png = await page.screenshot()
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "openapi-docs.png").write_bytes(png)
    width, _, variety = png_facts(png)
    assert width >= 1200  # the viewport, less a scroll bar
    assert variety > 20
