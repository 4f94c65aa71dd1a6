"""The commands shown in docs/dev-agent.md, run for real: the ``consulgw dev-agent`` CLI (plain, with the documented
ACL configuration file and with ``CONSUL_LOCAL_CONFIG``) and the capacity bench."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
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


ACL_COMMAND = "consulgw dev-agent --listen 127.0.0.1:8500 --config-file dev-acl.json"
LIMIT_COMMAND = (
    'CONSUL_LOCAL_CONFIG=\'{"limits": {"http_max_conns_per_client": 1000}}\' consulgw dev-agent --listen 127.0.0.1:8500'
)


def doc_file(name: str) -> str:
    """The fenced block that follows ``<!-- file: NAME -->`` in docs/dev-agent.md."""
    text = (ROOT / "docs" / "dev-agent.md").read_text()
    after = text.split(f"<!-- file: {name} -->", 1)[1]
    block = after.split("```", 2)[1]
    return block.split("\n", 1)[1]


def documented(command: str, port: int) -> tuple[dict[str, str], list[str]]:
    """The documented command with its port replaced: leading VAR=value words become environment."""
    words = shlex.split(command.replace("127.0.0.1:8500", f"127.0.0.1:{port}"))
    env: dict[str, str] = {}
    while "=" in words[0] and not words[0].startswith("-"):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    assert words[0] == "consulgw"
    return env, [str(CONSULGW), *words[1:]]


async def test_documented_acl_configuration(tmp_path: Path) -> None:
    config = json.loads(doc_file("dev-acl.json"))
    (tmp_path / "dev-acl.json").write_text(json.dumps(config))
    management = config["acl"]["tokens"]["initial_management"]
    port = free_port()
    env, argv = documented(ACL_COMMAND, port)
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=tmp_path, env={**os.environ, **env},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        assert await wait_for_leader(url, proc)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/v1/kv/docs/key") as resp:
                assert resp.status == 403
                assert resp.headers["X-Consul-Default-ACL-Policy"] == "deny"
            async with session.get(f"{url}/v1/kv/docs/key", headers={"X-Consul-Token": management}) as resp:
                assert resp.status == 404
            async with session.put(f"{url}/v1/acl/bootstrap") as resp:
                assert resp.status == 403  # used up by the initial management token
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_documented_connection_limit_through_consul_local_config() -> None:
    port = free_port()
    env, argv = documented(LIMIT_COMMAND, port)
    proc = await asyncio.create_subprocess_exec(
        *argv, env={**os.environ, **env}, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    held: list[asyncio.StreamWriter] = []
    try:
        assert await wait_for_leader(f"http://127.0.0.1:{port}", proc)
        readers = []
        for _ in range(250):  # past the default of 200
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            readers.append(reader)
            held.append(writer)

        async def refused(reader: asyncio.StreamReader) -> bool:
            try:
                return bool(await asyncio.wait_for(reader.read(), 1.0))
            except TimeoutError:
                return False

        assert not any(await asyncio.gather(*(refused(r) for r in readers)))
    finally:
        for writer in held:
            writer.close()
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


async def test_documented_unknown_key_warning(tmp_path: Path) -> None:
    """The warning docs/dev-agent.md shows for a key the dev agent does not use: one line, and the agent runs."""
    config = json.loads(doc_file("dev-acl.json"))
    config["server"] = True
    (tmp_path / "dev-acl.json").write_text(json.dumps(config))
    port = free_port()
    env, argv = documented(ACL_COMMAND, port)
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=tmp_path, env={**os.environ, **env},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        first = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode().rstrip("\n")
        warning = (
            "consulgw dev-agent: warning: dev-acl.json: config key 'server' is not supported by the dev agent (ignored)"
        )
        assert first == warning
        assert " ".join(warning.split()) in " ".join((ROOT / "docs" / "dev-agent.md").read_text().split())
        assert await wait_for_leader(f"http://127.0.0.1:{port}", proc)
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
