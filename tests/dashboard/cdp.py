"""A headless Chromium driven over the DevTools protocol with nothing but aiohttp (no Selenium, no Playwright).

``async with Chromium.launch(tmp_dir) as browser: page = await browser.new_page()`` starts
``chromium --headless ... --remote-debugging-port=0`` in its own process group, reads the ``DevTools listening on
ws://...`` line from its stderr, and speaks JSON-RPC over one WebSocket (flattened target sessions). Leaving the
block kills the whole process group, whatever happened inside it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import re
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-port=0",
)


def find_chromium() -> str | None:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


class CdpError(Exception):
    """The browser answered a command with an error."""


class Page:
    """One tab, attached with a flattened session."""

    def __init__(self, browser: Chromium, session_id: str) -> None:
        self._browser = browser
        self.session_id = session_id

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self._browser.send(method, params, session_id=self.session_id)

    async def navigate(self, url: str) -> None:
        result = await self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise CdpError(f"navigating to {url}: {result['errorText']}")

    async def evaluate(self, expression: str) -> Any:
        """Evaluate a JavaScript expression in the page and return its JSON value."""
        result = await self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}
        )
        if "exceptionDetails" in result:
            raise CdpError(f"{expression!r} threw: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    async def screenshot(self) -> bytes:
        result = await self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        return base64.b64decode(result["data"])

    def events(self, method: str) -> list[dict[str, Any]]:
        """Params of every ``method`` event this page sent so far."""
        return [
            e["params"] for e in self._browser.events if e.get("sessionId") == self.session_id and e["method"] == method
        ]


class Chromium:
    def __init__(self, proc: asyncio.subprocess.Process, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._proc = proc
        self._ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read(), name="cdp-reader")

    @classmethod
    @contextlib.asynccontextmanager
    async def launch(cls, profile_dir: Path, *, timeout: float = 30.0) -> AsyncIterator[Chromium]:
        executable = find_chromium()
        if executable is None:
            raise FileNotFoundError("chromium")
        proc = await asyncio.create_subprocess_exec(
            executable,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile_dir}",
            "about:blank",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group: renderer, GPU and zygote processes die with it
        )
        drain: asyncio.Task[None] | None = None
        try:
            assert proc.stderr is not None
            url, early = await asyncio.wait_for(_devtools_url(proc.stderr), timeout)
            if url is None:
                raise RuntimeError(f"chromium exited before DevTools listened: {early[-2000:]}")
            drain = asyncio.create_task(_drain(proc.stderr), name="chromium-stderr")
            async with (
                aiohttp.ClientSession() as http,
                http.ws_connect(url, max_msg_size=64 * 1024 * 1024, autoping=True) as ws,
            ):
                browser = cls(proc, ws)
                try:
                    yield browser
                finally:
                    await browser._close()
        finally:
            await _kill_group(proc)
            if drain is not None:
                drain.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await drain

    @property
    def pid(self) -> int:
        """The main browser process; its process group is the browser's (``start_new_session``)."""
        return self._proc.pid

    async def send(self, method: str, params: dict[str, Any] | None = None, *, session_id: str | None = None) -> Any:
        message_id = next(self._ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session_id is not None:
            message["sessionId"] = session_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[message_id] = future
        await self._ws.send_json(message)
        reply = await asyncio.wait_for(future, 30)
        if "error" in reply:
            raise CdpError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def new_page(self, *, width: int = 1280, height: int = 900) -> Page:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        page = Page(self, attached["sessionId"])
        await page.send("Page.enable")
        await page.send("Runtime.enable")
        await page.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        return page

    async def _read(self) -> None:
        async for msg in self._ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            data = msg.json()
            if "id" in data:
                future = self._waiting.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
            else:
                self.events.append(data)
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(CdpError("the DevTools connection closed"))

    async def _close(self) -> None:
        with contextlib.suppress(CdpError, TimeoutError, ConnectionError, aiohttp.ClientError):
            await asyncio.wait_for(self.send("Browser.close"), 5)
        await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


async def _devtools_url(stderr: asyncio.StreamReader) -> tuple[str | None, str]:
    seen: list[str] = []
    while True:
        line = await stderr.readline()
        if not line:
            return None, "".join(seen)
        text = line.decode(errors="replace")
        seen.append(text)
        match = re.search(r"DevTools listening on (ws://\S+)", text)
        if match:
            return match.group(1), "".join(seen)


async def _drain(stderr: asyncio.StreamReader) -> None:
    while await stderr.read(65536):
        pass


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the browser's process group, SIGKILL it after 5 s; always reap the main process."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            continue
        if sig is signal.SIGTERM:  # the main process is gone; make sure no helper of the group is left
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        return
