"""The commands shown in docs/dev-agent.md, run for real: the ``consulgw dev-agent`` CLI and the capacity bench."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

pytestmark = pytest.mark.asyncio

ROOT = Path(__file__).resolve().parents[2]
CONSULGW = Path(sys.executable).with_name("consulgw")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_for_leader(url: str, proc: asyncio.subprocess.Process) -> str:
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            if proc.returncode is not None:
                raise AssertionError(f"consulgw dev-agent exited early with {proc.returncode}")
            try:
                async with session.get(f"{url}/v1/status/leader") as resp:
                    leader = json.loads(await resp.read())
                    if leader:
                        return str(leader)
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("consulgw dev-agent never reported a leader")


@pytest.mark.parametrize(
    "stop_signal", [pytest.param(signal.SIGINT, id="SIGINT"), pytest.param(signal.SIGTERM, id="SIGTERM")]
)
async def test_dev_agent_command_serves_and_stops(stop_signal: signal.Signals) -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        str(CONSULGW), "dev-agent", "--listen", f"127.0.0.1:{port}", "--node", "doc-node",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        assert await wait_for_leader(url, proc)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/v1/agent/self") as resp:
                assert (await resp.json())["Config"]["NodeName"] == "doc-node"
            async with session.put(f"{url}/v1/kv/docs/check", data=b"ok") as resp:
                assert await resp.json() is True
        proc.send_signal(stop_signal)
        await asyncio.wait_for(proc.wait(), 10)
        assert proc.returncode == 0, await proc.stderr.read() if proc.stderr else b""
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.slow
async def test_capacity_bench_smoke() -> None:
    """``bench/devagent_capacity.py`` with tiny numbers: it runs end to end and prints its table."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "bench" / "devagent_capacity.py"),
        "--queries", "40", "--watchers", "20", "--rounds", "1", "--wait", "30s",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    assert "memory per parked query" in text
    assert "write -> last wake (median)" in text
