"""`consulgw run --tls-cert/--tls-key` as a real process: certificate rotation with SIGHUP under load, no failure.

This is the command shown in docs/operations-tls.md. Several clients open a new TLS connection for every request
(so handshakes happen while the certificate is being reloaded); the certificate and key files are overwritten
with a certificate of another serial and subject, the process gets SIGHUP, and the load keeps going.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import trustme

from consulgw.devagent import DevAgent
from tests.gateway.conftest import Consul, Upstream
from tests.support.processes import GatewayProcess, gateway_process

from .conftest import HttpsConnection, client_context, common_name, https_get, serial_seen, write_leaf

pytestmark = pytest.mark.slow

CLIENTS_RAW = 3  # new connection per request, records the certificate each handshake presented
CLIENTS_AIOHTTP = 2  # aiohttp with force_close: a new connection per request, the way real clients do it


@dataclass(frozen=True, slots=True)
class Attempt:
    started: float
    ended: float
    status: int | None  # None: the request failed (error holds why)
    serial: int | None
    error: str | None = None


@pytest.fixture
async def run_gateway(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[GatewayProcess]]]:
    """Start ``python -m consulgw run ARGS`` (own process group); SIGTERM, then SIGKILL the group, at teardown."""
    async with contextlib.AsyncExitStack() as stack:
        count = 0

        async def start(consul_url: str, port: int, admin_port: int, *extra: str) -> GatewayProcess:
            nonlocal count
            log = tmp_path / f"gateway-{count}.log"
            count += 1
            return await stack.enter_async_context(
                gateway_process(consul_url, *extra, port=port, admin_port=admin_port, log=log)
            )

        yield start


async def wait_ready(gateway: GatewayProcess, timeout: float = 20.0, in_a_row: int = 20) -> None:
    """Wait for ``in_a_row`` consecutive 200s from /-/ready, each on a new connection: with ``--workers N`` the kernel
    spreads connections over the workers, and each worker loads its own first view of Consul (one ready worker does
    not make the others ready)."""
    deadline = time.monotonic() + timeout
    streak = 0
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        while streak < in_a_row:
            if gateway.proc.returncode is not None:
                pytest.fail(f"consulgw run exited with {gateway.proc.returncode}:\n{gateway.log_text()}")
            ok = False
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"http://127.0.0.1:{gateway.admin_port}/-/ready") as resp:
                    ok = resp.status == 200
            streak = streak + 1 if ok else 0
            if time.monotonic() > deadline:
                pytest.fail(f"consulgw run not ready after {timeout}s:\n{gateway.log_text()}")
            if not ok:
                await asyncio.sleep(0.1)


@pytest.mark.parametrize("workers", [pytest.param("1", id="one-process"), pytest.param("2", id="two-workers")])
async def test_sighup_rotates_the_certificate_under_load_without_a_failed_request(
    workers: str,
    ca: trustme.CA,
    tmp_path: Path,
    dev_agent: DevAgent,
    consul: Consul,
    plain_upstream: Callable[[str], Awaitable[Upstream]],
    run_gateway: Callable[..., Awaitable[GatewayProcess]],
    free_port: Callable[[], int],
) -> None:
    live = write_leaf(ca, tmp_path, "gateway", common_name="gateway-2026")  # the files the gateway reads
    rotated = write_leaf(ca, tmp_path, "gateway-next", common_name="gateway-2027")
    assert live.serial != rotated.serial
    up = await plain_upstream("app")
    await consul.register("app", up.port, tags=["gw.route=/"])
    gateway = await run_gateway(
        dev_agent.url,
        free_port(),
        free_port(),
        "--tls-cert",
        str(live.cert),
        "--tls-key",
        str(live.key),
        "--workers",
        workers,
    )
    await wait_ready(gateway)
    context = client_context(ca)
    status, body, cert = await https_get(gateway.port, "/warmup", context)
    assert status == 200, body
    assert serial_seen(cert) == live.serial

    attempts: list[Attempt] = []
    stop = asyncio.Event()

    async def raw_client(index: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            started = time.monotonic()
            try:
                status, body, cert = await https_get(gateway.port, f"/raw/{index}/{n}", context)
            except (OSError, ssl.SSLError, asyncio.IncompleteReadError, TimeoutError) as exc:
                attempts.append(Attempt(started, time.monotonic(), None, None, f"{type(exc).__name__}: {exc}"))
            else:
                error = None if status == 200 else body.decode(errors="replace")
                attempts.append(Attempt(started, time.monotonic(), status, serial_seen(cert), error))

    async def aiohttp_client(index: int) -> None:
        connector = aiohttp.TCPConnector(ssl=context, force_close=True)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as http:
            n = 0
            while not stop.is_set():
                n += 1
                started = time.monotonic()
                try:
                    async with http.get(f"https://127.0.0.1:{gateway.port}/aiohttp/{index}/{n}") as resp:
                        body = await resp.read()
                        error = None if resp.status == 200 else body.decode(errors="replace")
                        attempts.append(Attempt(started, time.monotonic(), resp.status, None, error))
                except (aiohttp.ClientError, TimeoutError) as exc:
                    attempts.append(Attempt(started, time.monotonic(), None, None, f"{type(exc).__name__}: {exc}"))

    kept = await HttpsConnection.open(gateway.port, context)  # a keep-alive connection opened before the reload
    clients = [asyncio.create_task(raw_client(i)) for i in range(CLIENTS_RAW)]
    clients += [asyncio.create_task(aiohttp_client(i)) for i in range(CLIENTS_AIOHTTP)]
    try:
        assert (await kept.get("/kept/1"))[0] == 200
        await asyncio.sleep(1.0)

        # Rotate: overwrite both files in place (what `cp` or a cert-manager sidecar does), then SIGHUP.
        live.cert.write_bytes(rotated.cert.read_bytes())
        live.key.write_bytes(rotated.key.read_bytes())
        hup = time.monotonic()
        gateway.proc.send_signal(signal.SIGHUP)

        deadline = hup + 10.0
        while not any(a.serial == rotated.serial for a in attempts):
            assert time.monotonic() < deadline, "no handshake presented the new certificate within 10s of SIGHUP"
            await asyncio.sleep(0.02)
        switched = min(a.ended for a in attempts if a.serial == rotated.serial)
        await asyncio.sleep(1.5)  # keep the load going after the switch
    finally:
        stop.set()
        await asyncio.gather(*clients)

    try:
        status, _ = await kept.get("/kept/2")
        assert status == 200  # the connection opened before the reload still works
        assert serial_seen(kept.peer_cert) == live.serial  # with the certificate it was opened with
    finally:
        await kept.close()

    failed = [a for a in attempts if a.status != 200]
    assert failed == [], f"{len(failed)} of {len(attempts)} requests failed, first: {failed[:3]}"
    seen = [a for a in attempts if a.serial is not None]
    before = [a for a in seen if a.ended < hup]
    after_switch = [a for a in seen if a.started > switched]
    assert len(attempts) >= 100, f"too little load to prove anything: {len(attempts)} requests"
    assert before
    assert {a.serial for a in before} == {live.serial}
    assert after_switch
    assert {a.serial for a in seen} == {live.serial, rotated.serial}
    last_old = max(a.ended for a in seen if a.serial == live.serial)
    assert last_old - hup < 1.0, f"old certificate still presented {last_old - hup:.2f}s after SIGHUP"
    if workers == "1":  # one process switches at once: after the first new handshake, never the old one again
        assert {a.serial for a in after_switch} == {rotated.serial}, "a new connection got the old certificate"

    print(
        f"{len(attempts)} requests, {len(seen)} with the certificate recorded: {len(before)} before SIGHUP (old), "
        f"{len(after_switch)} after the first new handshake (new); switch {1000 * (switched - hup):.0f} ms after SIGHUP"
    )
    for n in range(20):  # fresh connections (with --workers 2 the kernel spreads them over both processes)
        status, _, cert = await https_get(gateway.port, f"/after/{n}", context)
        assert status == 200
        assert serial_seen(cert) == rotated.serial
        assert common_name(cert) == "gateway-2027"

    gateway.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(gateway.proc.wait(), 15) == 0
    log = gateway.log_text()  # complete: the process has exited
    assert "tls_reloaded" in log
    assert "tls_reload_failed" not in log
    assert "Traceback" not in log
