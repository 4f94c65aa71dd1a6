"""Run consulgw as real processes from async tests, one way for every suite.

- ``run_consulgw(*args)``: a one-shot command (``consulgw policy ...``, ``consulgw routes ...``) without blocking the
  event loop, so an in-process dev agent keeps serving.
- ``gateway_process(consul_url, *flags)``: ``consulgw run`` in its own process group on free (or given) ports; on
  exit SIGTERM, then SIGKILL for the whole group (a ``--workers`` supervisor's children included).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any CONSUL_* / CONSULGW_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_", "CONSULGW_"))}
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True, slots=True)
class Result:
    code: int
    out: str
    err: str


async def run_consulgw(
    *args: str,
    stdin: bytes = b"",
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> Result:
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
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout=timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


@dataclass(frozen=True, slots=True)
class GatewayProcess:
    proc: asyncio.subprocess.Process
    port: int
    admin_port: int
    log: Path | None  # stdout and stderr, when a log file was asked for

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log is not None else ""


@contextlib.asynccontextmanager
async def gateway_process(
    consul_url: str,
    *flags: str,
    port: int | None = None,
    admin_port: int | None = None,
    log: Path | None = None,
    env: dict[str, str] | None = None,
    output: int | IO[bytes] | None = None,
) -> AsyncIterator[GatewayProcess]:
    """``python -m consulgw run --consul URL --listen ... --admin-listen ... FLAGS``; stopped on exit. Its stdout and
    stderr go to ``log`` (a file), or to ``output`` (a file descriptor or an open file: a pipe's write end, /dev/full),
    or nowhere."""
    port = port or free_port()
    admin_port = admin_port or free_port()
    sink = log.open("wb") if log is not None else None
    if sink is None and output is not None:
        target: int | IO[bytes] = output
    else:
        target = sink if sink is not None else asyncio.subprocess.DEVNULL
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "consulgw",
            "run",
            "--consul",
            consul_url,
            "--listen",
            f"127.0.0.1:{port}",
            "--admin-listen",
            f"127.0.0.1:{admin_port}",
            *flags,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=target,
            stderr=asyncio.subprocess.STDOUT if target != asyncio.subprocess.DEVNULL else target,
            env=env if env is not None else clean_env(),
            start_new_session=True,
        )
    finally:
        if sink is not None:
            sink.close()
    try:
        yield GatewayProcess(proc=proc, port=port, admin_port=admin_port, log=log)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
