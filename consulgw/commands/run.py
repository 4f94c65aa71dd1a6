"""``consulgw run``: the gateway process, or a supervisor of N worker processes sharing the port."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import secrets
import signal
import sys
import tempfile
import time

import structlog

from consulgw.logs import BufferedLines, configure_logging
from consulgw.settings import GatewaySettings, Secret, gateway_settings


def main(args: argparse.Namespace) -> int:
    settings = gateway_settings(args, os.environ)
    if settings.workers > 1 and not settings.sticky_key:
        # One random key for every worker of this run: each would otherwise make its own, and a sticky cookie made
        # by one worker would mean nothing to the next (the port is shared, so a client meets them all).
        settings = dataclasses.replace(
            settings, sticky_key=Secret(value=secrets.token_hex(32)), sticky_key_generated=True
        )
    if settings.workers > 1:
        # Must precede the first import of prometheus_client (via consulgw.server): it picks its value store then.
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="consulgw-metrics-"))
    sink = configure_logging(settings.log_format, settings.log_level, buffered=True)
    assert sink is not None
    try:
        if settings.workers == 1:
            return serve(settings, sink)
        return supervise(settings, sink)
    finally:
        sink.drain()


def serve(settings: GatewaySettings, sink: BufferedLines, *, worker_index: int = 0, worker_count: int = 1) -> int:
    """Run one gateway process until SIGTERM/SIGINT; SIGHUP reloads TLS certificates."""
    _install_uvloop()
    return asyncio.run(_serve(settings, sink, worker_index, worker_count))


_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


async def _serve(settings: GatewaySettings, sink: BufferedLines, worker_index: int, worker_count: int) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)  # until the gateway can reload its certificate
    # Signals that arrived while this process was starting (blocked by the supervisor) are delivered now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)

    try:
        from consulgw.server.gateway import Gateway

        gateway = Gateway(
            settings,
            reuse_port=worker_count > 1,
            worker_index=worker_index,
            worker_count=worker_count,
            metrics_dir=os.environ.get("PROMETHEUS_MULTIPROC_DIR") if worker_count > 1 else None,
            log_sink=sink,
        )
        async with gateway:
            loop.add_signal_handler(signal.SIGHUP, gateway.reload_tls)
            await stop.wait()
    finally:
        sink.drain()  # the sink's own thread writes batches; what is left goes now, before the process exits
    return 0


def supervise(settings: GatewaySettings, sink: BufferedLines) -> int:
    """Fork ``settings.workers`` processes bound with SO_REUSEPORT; restart one that crashes; forward signals."""
    log = structlog.get_logger("consulgw.supervisor")
    children: dict[int, int] = {}  # pid -> worker index
    stopping = False

    supervisor = os.getpid()

    def spawn(index: int) -> None:
        sink.drain()  # a child must not inherit (and print again) lines pending in the parent
        # Stop signals stay blocked in the child until its event loop handles them: a SIGTERM during start-up
        # must still mean a graceful stop and exit 0, not death by the default action.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        pid = os.fork()
        if pid == 0:  # child
            for sig in _STOP_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            _stop_with_parent(supervisor)
            code = 1
            try:
                code = serve(settings, sink, worker_index=index, worker_count=settings.workers)
            except BaseException:  # noqa: BLE001 - the worker's last words, then a plain exit code for the parent
                structlog.get_logger("consulgw.worker").exception("worker_failed", worker=index)
            finally:
                sink.drain()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        children[pid] = index
        log.info("worker_started", worker=index, pid=pid)
        sink.drain()

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    for index in range(settings.workers):
        spawn(index)
    failures = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid not in children:
            continue
        index = children.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        _forget_worker_metrics(pid)
        sink.drain()
        if stopping:
            log.info("worker_stopped", worker=index, pid=pid, exit_code=code)
            failures += code != 0
            continue
        log.error("worker_died", worker=index, pid=pid, exit_code=code)
        time.sleep(0.5)  # no hot crash loop
        spawn(index)
    return 0 if failures == 0 else 1


def _stop_with_parent(parent: int) -> None:
    """Ask the kernel to send this worker SIGTERM when the supervisor dies, however it dies (OOM killer, kill -9):
    a worker never outlives its supervisor, holding the port with nobody to restart or stop it. Linux only
    (prctl PR_SET_PDEATHSIG); elsewhere workers stop when the supervisor forwards SIGTERM."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _forget_worker_metrics(pid: int) -> None:
    """Drop a dead worker's live gauges from the shared metrics directory (its counters keep counting)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return
    if sys.platform != "win32":
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
