"""docs/migrating-from-fabio.md tells the truth: its walk-through runs, in order, and prints what the page shows.

Commands run in one directory against the in-process dev agent, with real upstreams and a real ``consulgw run``
in the background; only addresses are rewritten (the agent's port, free ports for the gateway, the upstreams'
ports). See tests/commands/docrun.py for the conventions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from consulgw.devagent import DevAgent
from consulgw.routing import parse_service_routes
from tests.commands.cli import clean_env
from tests.commands.docrun import Command, FileStep, matches, steps
from tests.gateway.conftest import Upstream, start_upstream

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "migrating-from-fabio.md"
BIN = Path(sys.executable).parent


def table_rows() -> list[tuple[list[str], list[str], str]]:
    """(Fabio tags, consulgw tags, consulgw column) of each row of the side-by-side table."""
    rows = []
    for line in DOC.read_text().splitlines():
        if not line.startswith("| ") or line.startswith(("| Fabio tag", "|---")):
            continue
        fabio, ours = line.split(" | ")[:2]
        fabio_tags = [t for t in re.findall(r"`([^`]+)`", fabio) if t.startswith("urlprefix-")]
        our_tags = [t for t in re.findall(r"`([^`]+)`", ours) if t.startswith("gw.route=")]
        rows.append((fabio_tags, our_tags, ours))
    return rows


def test_doc_table_tells_what_the_routing_module_does() -> None:
    """Every Fabio tag in the table parses, with ``compat={"fabio"}`` in datacenter ``dc1`` (for its ``$DC`` rows),
    to exactly the route of the consulgw tag next to it, or, where the table says there is no plain equivalent, is
    rejected with a reason."""
    compat = frozenset({"fabio"})
    rows = table_rows()
    assert len(rows) >= 15
    checked = 0
    for fabio_tags, our_tags, ours in rows:
        for tag in fabio_tags:
            fabio = parse_service_routes("svc", [tag], compat=compat, datacenter="dc1")
            if not our_tags or "+" in ours:  # "none", a KV policy, or a tag plus something else
                assert fabio.routes == (), tag
                assert len(fabio.errors) == 1, tag
            else:
                native = parse_service_routes("svc", our_tags)
                assert fabio.errors == (), (tag, fabio.errors)
                shape = [(r.host, r.prefix, r.strip, r.methods) for r in fabio.routes]
                assert shape == [(r.host, r.prefix, r.strip, r.methods) for r in native.routes], tag
            checked += 1
    assert checked >= 14


def test_doc_shows_the_switch() -> None:
    commands = [s.text for s in steps(DOC) if isinstance(s, Command)]
    assert any(c.startswith("consulgw run") and "--tag-compat fabio" in c for c in commands)
    assert any(c.startswith("consulgw routes") and "--tag-compat fabio" in c for c in commands)
    assert "CONSULGW_TAG_COMPAT=fabio" in DOC.read_text()


@pytest.fixture
async def upstreams() -> AsyncIterator[dict[str, Upstream]]:
    started = {"users": await start_upstream("users"), "orders": await start_upstream("orders")}
    yield started
    for upstream in started.values():
        await upstream.stop()


def _text(path: Path) -> str:
    return path.read_text(errors="replace")


async def wait_ready(proc: asyncio.subprocess.Process, admin: int, log: Path) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        for _ in range(200):
            assert proc.returncode is None, _text(log)
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"http://127.0.0.1:{admin}/-/ready") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    pytest.fail(f"consulgw run never became ready:\n{_text(log)}")


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is needed to run the documented commands")
async def test_every_command_in_migrating_from_fabio_md(
    tmp_path: Path, dev_agent: DevAgent, upstreams: dict[str, Upstream], free_port: Callable[[], int]
) -> None:
    port, admin = free_port(), free_port()
    rewrite = {
        "127.0.0.1:8500": dev_agent.url.removeprefix("http://"),
        "127.0.0.1:9999": f"127.0.0.1:{port}",
        "127.0.0.1:9998": f"127.0.0.1:{admin}",
        "9001": str(upstreams["users"].port),
        "9002": str(upstreams["orders"].port),
    }

    def local(text: str) -> str:
        for old, new in rewrite.items():
            text = text.replace(old, new)
        return text

    env = clean_env(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    gateway: asyncio.subprocess.Process | None = None
    log = tmp_path / "gateway.log"
    ran = 0
    try:
        for step in steps(DOC):
            if isinstance(step, FileStep):
                (tmp_path / step.name).write_text(local(step.body))
                continue
            command = local(step.text)
            if command.startswith("consulgw run"):
                assert gateway is None
                with log.open("wb") as sink:
                    gateway = await asyncio.create_subprocess_exec(
                        str(BIN / "consulgw"), *shlex.split(command)[1:],
                        cwd=tmp_path, env=env, stdin=asyncio.subprocess.DEVNULL,
                        stdout=sink, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
                    )  # fmt: skip
                await wait_ready(gateway, admin, log)
                ran += 1
                continue
            proc = await asyncio.create_subprocess_exec(
                "bash", "-c", command, cwd=tmp_path, env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            out = (await asyncio.wait_for(proc.communicate(), 60))[0].decode()
            assert proc.returncode == 0, f"line {step.line}: {step.text!r} exited {proc.returncode}: {out}"
            expected = [local(line) for line in step.expected]
            assert matches(expected, out), f"line {step.line}: {step.text!r} printed:\n{out}"
            if command.startswith("consulgw routes") and "--json" in command:
                report = json.loads(out)  # step 4: users is routed by its gw.route tag alone, orders is not yet
                assert [r["route"] for r in report["routes"]] == ["*/users"]
                assert report["routes"][0]["tag"] == "gw.route=/users strip=/users"
                assert report["consul"]["fabio_tags_ignored"] == ["orders", "users"]
            ran += 1
    finally:
        if gateway is not None and gateway.returncode is None:
            gateway.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(gateway.wait(), 15)
            except TimeoutError:
                os.killpg(gateway.pid, signal.SIGKILL)
                await gateway.wait()
    assert ran == len([s for s in steps(DOC) if isinstance(s, Command)])
    assert [u.received[-1]["raw_path"] for u in (upstreams["users"], upstreams["orders"])] == ["/7", "/orders/1"]
