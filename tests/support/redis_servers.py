"""Private ``redis-server`` and ``redis-sentinel`` processes on free ports, for tests that kill, promote or
reconfigure them (the suite's shared Redis on 127.0.0.1:6379 must never be disturbed).

``RedisProcesses`` starts them (``server()``, ``sentinel()``), knows their ports, and kills every one at exit:
``async with RedisProcesses(tmp_path) as redis: primary = await redis.server()``. The binaries come from Debian's
``redis-server`` and ``redis-sentinel`` packages (``scripts/ensure-services.sh`` installs them).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from redis.asyncio import Redis

from tests.support.processes import free_port


@dataclass
class RedisProcess:
    port: int
    proc: asyncio.subprocess.Process
    workdir: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, no goodbye to replicas or sentinels (a crashed primary)."""
        if self.proc.returncode is None:
            self.proc.kill()


class RedisProcesses:
    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self._started: list[RedisProcess] = []

    async def __aenter__(self) -> RedisProcesses:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for process in self._started:
            process.kill()
        for process in self._started:
            await process.proc.wait()

    async def server(
        self, *args: str, tls: bool = False, ping: Redis | None = None, port: int | None = None
    ) -> RedisProcess:
        """A redis-server on ``port`` or a free one (its TLS port when ``tls``: then pass ``ping``, a client that
        can reach it, since a plain PING cannot), without persistence, with ``args`` appended. RuntimeError with
        the server's log when it exits instead of answering."""
        port = port or free_port()
        workdir = self._workdir / f"redis-{port}"
        workdir.mkdir(exist_ok=True)  # a server started again on the port of one that was killed
        listen = ["--port", "0", "--tls-port", str(port)] if tls else ["--port", str(port)]
        process = await self._spawn(
            "redis-server",
            *listen,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            *args,
            port=port,
            workdir=workdir,
        )
        await _wait_answering(process, ping)
        return process

    async def sentinel(
        self, primary: RedisProcess, *, name: str = "mymaster", down_after_ms: int = 1000
    ) -> RedisProcess:
        """A sentinel monitoring ``primary`` as ``name`` (quorum 1: one sentinel may fail it over)."""
        port = free_port()
        workdir = self._workdir / f"sentinel-{port}"
        workdir.mkdir()
        config = workdir / "sentinel.conf"  # sentinel rewrites its config file: it must be its own and writable
        config.write_text(
            f"port {port}\n"
            "bind 127.0.0.1\n"
            f"dir {workdir}\n"
            f"sentinel monitor {name} 127.0.0.1 {primary.port} 1\n"
            f"sentinel down-after-milliseconds {name} {down_after_ms}\n"
            f"sentinel failover-timeout {name} 10000\n"
            f"sentinel parallel-syncs {name} 1\n"
        )
        binary = "redis-sentinel" if shutil.which("redis-sentinel") else "redis-server"
        extra = () if binary == "redis-sentinel" else ("--sentinel",)
        process = await self._spawn(binary, str(config), *extra, port=port, workdir=workdir)
        await _wait_answering(process, None)
        return process

    async def _spawn(self, *argv: str, port: int, workdir: Path) -> RedisProcess:
        log = (workdir / "log.txt").open("wb")
        try:
            proc = await asyncio.create_subprocess_exec(*argv, stdout=log, stderr=log)
        finally:
            log.close()
        process = RedisProcess(port=port, proc=proc, workdir=workdir)
        self._started.append(process)
        return process


async def _wait_answering(process: RedisProcess, ping: Redis | None, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.proc.returncode is not None:
            log = (process.workdir / "log.txt").read_text(errors="replace")
            raise RuntimeError(f"redis process on {process.port} exited: {log[-2000:]}")
        if await (_ping_client(ping) if ping is not None else _ping_raw(process.port)):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"redis process on {process.port} did not answer within {timeout}s")
        await asyncio.sleep(0.05)


async def _ping_client(client: Redis) -> bool:
    with contextlib.suppress(Exception):
        return bool(await client.ping())
    return False


async def _ping_raw(port: int) -> bool:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    try:
        writer.write(b"PING\r\n")
        await writer.drain()
        return (await asyncio.wait_for(reader.readline(), 2)) == b"+PONG\r\n"
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
