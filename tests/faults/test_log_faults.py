"""The log stream failing under a running ``consulgw run``: stderr a pipe nobody reads, and stderr a full disk
(/dev/full: the gateway has no log-file option, its log is stderr).

Documented (docs/operations.md, Metrics and Logs): logging never blocks a request; lines that cannot be written are
dropped and counted in ``consulgw_log_lines_dropped_total``; records of libraries that log through Python's
``logging`` (aiohttp logs a traceback for every malformed request) go through the same bounded sink, as JSON lines.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from typing import IO, Any

import aiohttp

from tests.gateway.conftest import Consul
from tests.policy_e2e.conftest import is_ready, metric_value, wait_for
from tests.support.processes import GatewayProcess, gateway_process

# Refused by aiohttp's parser with a 400 and logged by aiohttp.server at ERROR with a traceback (~2 KB of log).
AMBIGUOUS = b"POST /logs/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"


async def _ambiguous(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(AMBIGUOUS)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def _get(http: aiohttp.ClientSession, url: str, request_id: str | None = None) -> int:
    headers = {"X-Request-ID": request_id} if request_id else {}
    async with http.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=10)) as resp:
        await resp.read()
        return resp.status


async def _start(
    dev_agent: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession, output: int | IO[bytes]
) -> Any:
    up = await upstreams("logs")
    await consul.register("logs", up.port, tags=["gw.route=/logs"])
    return gateway_process(dev_agent.url, "--log-format", "json", output=output)


async def _hammer(gw: GatewayProcess, http: aiohttp.ClientSession, *, long: int, malformed: int) -> None:
    """``long`` requests whose access lines are 8 KB each (an 8 KB path: 600 of them are more than the sink's 4 MiB), then
    ``malformed`` ones that make aiohttp log a traceback. Every one is answered; none waits on the log."""
    url = f"{gw.url}/logs/{'x' * 8_000}"  # the upstream (aiohttp) takes request lines up to 8 KiB
    for start in range(0, long, 20):
        statuses = await asyncio.gather(*(_get(http, url) for _ in range(min(20, long - start))))
        assert set(statuses) == {200}
    for _ in range(malformed):
        assert (await _ambiguous(gw.port)).split(b"\r\n", 1)[0].endswith(b" 400 Bad Request")
        assert await _get(http, f"{gw.url}/logs/x") == 200


async def _dropped(http: aiohttp.ClientSession, gw: GatewayProcess) -> float:
    return await metric_value(http, gw.admin_url, "consulgw_log_lines_dropped_total") or 0.0


async def test_a_stderr_pipe_nobody_reads_never_blocks_requests_and_drops_are_counted(
    dev_agent: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession
) -> None:
    read_end, write_end = os.pipe()  # 64 KiB of kernel buffer, then every write would block
    try:
        async with await _start(dev_agent, consul, upstreams, http, write_end) as gw:
            os.close(write_end)
            write_end = -1
            await wait_for(lambda: is_ready(http, gw.admin_url))
            await wait_for(lambda: _get(http, f"{gw.url}/logs/x"), timeout=20)
            # The pipe fills at 64 KiB, the sink at 4 MiB; tracebacks follow (each one used to block the loop).
            await _hammer(gw, http, long=600, malformed=20)

            async def counted() -> bool:
                return await _dropped(http, gw) > 0

            await wait_for(counted, timeout=20)  # exported every 5 s

            # Someone reads the pipe again: lines flow again, without a restart, and every line is JSON (library
            # records included: they went through the gateway's sink, not to stderr behind its back).
            received = bytearray()
            done = threading.Event()

            def drain() -> None:
                while chunk := os.read(read_end, 65536):
                    received.extend(chunk)
                    if b'"marker-after-recovery"' in received:
                        done.set()
                done.set()

            reader = threading.Thread(target=drain, daemon=True)
            reader.start()

            async def line_arrived() -> bool:
                assert await _get(http, f"{gw.url}/logs/x", request_id="marker-after-recovery") == 200
                return done.is_set()

            await wait_for(line_arrived, timeout=20, interval=0.5)
            assert gw.proc.returncode is None
        reader.join(10)
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    lines = [line for line in bytes(received).split(b"\n") if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is JSON
    assert any(r.get("logger") == "aiohttp.server" and "Traceback" in r.get("exception", "") for r in records)
    assert any(r.get("request_id") == "marker-after-recovery" for r in records)


async def test_stderr_on_a_full_disk_drops_and_counts_lines_and_requests_go_on(
    dev_agent: Any, consul: Consul, upstreams: Any, http: aiohttp.ClientSession
) -> None:
    full = os.open("/dev/full", os.O_WRONLY)  # every write fails with ENOSPC
    try:
        async with await _start(dev_agent, consul, upstreams, http, full) as gw:
            await wait_for(lambda: is_ready(http, gw.admin_url))
            await wait_for(lambda: _get(http, f"{gw.url}/logs/x"), timeout=20)
            await _hammer(gw, http, long=40, malformed=20)

            async def counted() -> bool:
                return await _dropped(http, gw) >= 80  # at least one line per request was refused

            await wait_for(counted, timeout=20)
            assert await _get(http, f"{gw.url}/logs/x") == 200
            assert gw.proc.returncode is None
    finally:
        os.close(full)
