"""Run ``consulgw`` as a real subprocess without blocking the event loop (the in-process dev agent keeps serving)."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Result:
    code: int
    out: str
    err: str


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any CONSUL_* / CONSULGW_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_", "CONSULGW_"))}
    env.update(extra)
    return env


async def consulgw(*args: str, env: dict[str, str] | None = None, timeout: float = 60.0) -> Result:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consulgw",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env if env is not None else clean_env(),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())
