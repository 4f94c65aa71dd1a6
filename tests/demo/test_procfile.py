"""The Procfile (`honcho start`) runs the same picture as `make demo`: every line is a real, valid command."""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp

from consulgw.cli import build_parser

REPO = Path(__file__).resolve().parents[2]


def procfile() -> dict[str, list[str]]:
    entries = {}
    for line in (REPO / "Procfile").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, _, command = line.partition(":")
        entries[name.strip()] = shlex.split(command)
    return entries


def test_procfile_lines_are_valid_commands() -> None:
    entries = procfile()
    assert set(entries) == {"consul", "services", "gateway"}
    script = REPO / entries["consul"][0]
    assert script.is_file()
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert 'exec "$CONSUL_BIN" agent -dev' in text  # a real Consul when CONSUL_BIN is set
    assert "consulgw dev-agent --listen 127.0.0.1:8500" in text
    for name in ("services", "gateway"):
        argv = entries[name]
        assert argv[0] == ".venv/bin/consulgw"
        build_parser().parse_args(argv[1:])  # argparse exits (SystemExit) on any unknown or malformed flag


async def test_services_only_registers_the_demo_in_an_existing_consul(dev_agent: Any) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consulgw",
        "demo",
        "--services-only",
        "--consul",
        dev_agent.url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert b"demo services registered" in line
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{dev_agent.url}/v1/catalog/services") as resp:
                services = await resp.json()
            async with http.get(f"{dev_agent.url}/v1/kv/consulgw/?keys") as resp:
                keys = await resp.json()
        assert {"users", "orders", "search", "products", "notifications", "catalog", "cart"} <= set(services)
        assert "gw.route=/users" in services["users"]
        assert set(keys) == {
            "consulgw/services/orders",
            "consulgw/services/search",
            "consulgw/services/products",
            "consulgw/services/notifications",
            "consulgw/services/catalog",
            "consulgw/services/cart",
            "consulgw/composites/user-dashboard",
        }
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        async with aiohttp.ClientSession() as http, http.get(f"{dev_agent.url}/v1/agent/services") as resp:
            assert await resp.json() == {}  # deregistered on the way out
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def _ports_free(*ports: int) -> bool:
    import socket

    for port in ports:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return False
    return True


async def test_honcho_start_runs_the_procfile() -> None:
    """`honcho start` as docs/getting-started.md shows it: the demo answers on :8080, Ctrl-C stops all three."""
    import pytest

    if not _ports_free(8500, 8080, 8081):
        pytest.skip("ports 8500/8080/8081 are taken on this machine; the Procfile uses the fixed demo ports")
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        "exec " + ".venv/bin/honcho start",  # the command docs/getting-started.md shows
        cwd=REPO,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        async with aiohttp.ClientSession() as http:

            async def users_answer() -> bool:
                try:
                    async with http.get("http://127.0.0.1:8080/users/1") as resp:
                        return resp.status == 200 and (await resp.json())["service"] == "users"
                except (aiohttp.ClientError, ValueError):
                    return False

            for _ in range(300):
                if await users_answer():
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail("the Procfile's gateway never routed /users")
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 30)
        for _ in range(50):
            if _ports_free(8500, 8080, 8081):
                break
            await asyncio.sleep(0.1)
        assert _ports_free(8500, 8080, 8081)
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
