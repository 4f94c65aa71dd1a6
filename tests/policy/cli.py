"""Run ``consulgw`` as a real subprocess (asyncio, so the in-process dev agent keeps serving meanwhile)."""

from __future__ import annotations

import aiohttp

from tests.support.processes import Result, clean_env
from tests.support.processes import run_consulgw as run_cli

__all__ = ["Result", "clean_env", "kv_get", "kv_put", "run_cli"]


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
