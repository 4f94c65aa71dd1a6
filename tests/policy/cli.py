"""Run ``consulgw`` as a real subprocess (asyncio, so the in-process dev agent keeps serving meanwhile)."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp


@dataclass(frozen=True, slots=True)
class Result:
    code: int
    out: str
    err: str


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_", "CONSULGW_"))}
    env.update(extra)
    return env


async def run_cli(*args: str, stdin: bytes = b"", cwd: Path | None = None, env: dict[str, str] | None = None) -> Result:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consulgw",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env=env if env is not None else clean_env(),
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout=60)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def kv_get(base: str, key: str) -> bytes | None:
    async with aiohttp.ClientSession() as session, session.get(f"{base}/v1/kv/{key}?raw") as response:
        if response.status == 404:
            return None
        assert response.status == 200
        return await response.read()


async def kv_put(base: str, key: str, value: bytes) -> None:
    async with aiohttp.ClientSession() as session, session.put(f"{base}/v1/kv/{key}", data=value) as response:
        assert response.status == 200
        assert (await response.text()).strip() == "true"
