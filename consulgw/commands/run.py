"""``consulgw run``: the gateway process, or a supervisor of N worker processes sharing the port."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
from typing import Any

import structlog

from consulgw.logs import BufferedLines, configure_logging
from consulgw.settings import GatewaySettings, Secret, gateway_settings

_STATUS_INTERVAL = 0.25  # seconds between two looks at the watcher's status (sent to workers when it changed)


def main(args: argparse.Namespace) -> int:
    settings = gateway_settings(args, os.environ)
    if settings.workers > 1 and not settings.sticky_key:
        # One random key for every worker of this run (they get the supervisor's settings): each would otherwise
        # make its own, and a sticky cookie made by one worker would mean nothing to the next.
        settings = dataclasses.replace(
            settings, sticky_key=Secret(value=secrets.token_hex(32)), sticky_key_generated=True
        )
    if settings.workers > 1:
        # Must precede the first import of prometheus_client (via consulgw.server): it picks its value store then.
        # The workers inherit it with the environment.
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="consulgw-metrics-"))
    sink = configure_logging(settings.log_format, settings.log_level, buffered=True)
    assert sink is not None
    try:
        if settings.workers == 1:
            return serve(settings, sink)
        return supervise(settings, sink)
    finally:
        sink.drain()


def serve(
    settings: GatewaySettings,
    sink: BufferedLines,
    *,
    worker_index: int = 0,
    worker_count: int = 1,
    channel: socket.socket | None = None,
) -> int:
    """Run one gateway process until SIGTERM/SIGINT; SIGHUP reloads TLS certificates. A worker (``channel``) takes
    its view of Consul from the supervisor and also stops when the supervisor goes away."""
    _install_uvloop()
    return asyncio.run(_serve(settings, sink, worker_index, worker_count, channel))


_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


async def _serve(
    settings: GatewaySettings,
    sink: BufferedLines,
    worker_index: int,
    worker_count: int,
    channel: socket.socket | None,
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)  # until the gateway can reload its certificate
    # Signals that arrived while this process was starting (blocked by the supervisor) are delivered now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)

    writer: asyncio.StreamWriter | None = None
    try:
        from consulgw.discovery.fanout import SnapshotReceiver
        from consulgw.server.gateway import Gateway

        receiver: SnapshotReceiver | None = None
        if worker_count > 1:  # every log line of a worker says which
            structlog.contextvars.bind_contextvars(worker=worker_index)
        if channel is not None:
            reader, writer = await asyncio.open_unix_connection(sock=channel)
            receiver = SnapshotReceiver(reader, writer)
        gateway = Gateway(
            settings,
            reuse_port=worker_count > 1,
            worker_index=worker_index,
            worker_count=worker_count,
            metrics_dir=os.environ.get("PROMETHEUS_MULTIPROC_DIR") if worker_count > 1 else None,
            discovery=receiver,
            log_sink=sink,
        )
        async with gateway:
            loop.add_signal_handler(signal.SIGHUP, gateway.reload_tls)
            stopped = asyncio.create_task(stop.wait(), name="consulgw-stop")
            ended = asyncio.create_task(gateway.discovery_ended(), name="consulgw-discovery-ended")
            await asyncio.wait({stopped, ended}, return_when=asyncio.FIRST_COMPLETED)
            for task in (stopped, ended):
                task.cancel()
            if ended.done() and not ended.cancelled() and not stop.is_set():
                structlog.get_logger("consulgw.worker").warning("supervisor_gone", worker=worker_index)
    finally:
        if writer is not None:
            writer.close()
        sink.drain()  # the sink's own thread writes batches; what is left goes now, before the process exits
    return 0


def supervise(settings: GatewaySettings, sink: BufferedLines) -> int:
    """Watch Consul once and run ``settings.workers`` worker processes bound with SO_REUSEPORT, each fed the
    supervisor's snapshots; restart one that dies; forward signals."""
    _install_uvloop()
    return asyncio.run(Supervisor(settings, sink).run())


class Supervisor:
    """Owns the Consul watcher, the snapshot hub, one channel per worker, and the worker processes.

    Every task belongs to one TaskGroup in :meth:`run`; each worker's channel is closed when its process exits;
    on SIGTERM/SIGINT the workers are told to stop, waited for, and then discovery stops.
    """

    def __init__(self, settings: GatewaySettings, sink: BufferedLines) -> None:
        self._settings = settings
        self._sink = sink
        self._log = structlog.get_logger("consulgw.supervisor")
        self._stopping = asyncio.Event()
        self._children: dict[int, subprocess.Popen[bytes]] = {}  # worker index -> its process
        self._failures = 0
        self._also: dict[int, frozenset[str]] = {}  # each worker's latest watch_also
        self._remote: dict[int, frozenset[tuple[str, str]]] = {}  # each worker's latest watch_remote

    async def run(self) -> int:
        from prometheus_client import CollectorRegistry

        from consulgw.clock import SystemClock
        from consulgw.discovery.consul_api import ConsulClient
        from consulgw.discovery.fanout import SnapshotHub
        from consulgw.discovery.watcher import CatalogWatcher
        from consulgw.metrics import ConsulMetrics
        from consulgw.routing.rules import has_route_tags
        from consulgw.server.consul_status import ConsulStatusRecorder
        from consulgw.server.gateway import consul_agent_session

        s = self._settings
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop)
        loop.add_signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)
        clock = SystemClock()
        metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        recorder = ConsulStatusRecorder(ConsulMetrics(CollectorRegistry(), multiprocess_dir=metrics_dir), clock)
        hub = SnapshotHub()
        compat = frozenset(s.tag_compat)
        async with consul_agent_session(s.consul_max_conns) as http:
            watcher = CatalogWatcher(
                ConsulClient(s.consul, http),
                kv_prefix=s.kv_prefix,
                is_routed=lambda _name, tags: has_route_tags(tags, tag_prefix=s.tag_prefix, compat=compat),
                coalesce_window=s.coalesce_window,
                clock=clock,
                rng=random.Random(),
                max_conns=s.consul_max_conns,
            )
            async with asyncio.TaskGroup() as tg:
                background = [
                    tg.create_task(watcher.run(hub.publish), name="consulgw-watcher"),
                    tg.create_task(self._relay_status(watcher, hub, recorder), name="consulgw-status"),
                ]
                workers = [
                    tg.create_task(self._keep_worker(index, hub, watcher), name=f"consulgw-worker:{index}")
                    for index in range(s.workers)
                ]
                await asyncio.wait(workers)  # each ends once stopping and its process has exited
                for task in background:
                    task.cancel()
        return 0 if self._failures == 0 else 1

    def _stop(self) -> None:
        self._stopping.set()
        self._forward(signal.SIGTERM)

    def _forward(self, signum: int) -> None:
        for proc in list(self._children.values()):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

    async def _relay_status(self, watcher: Any, hub: Any, recorder: Any) -> None:
        """The watcher's status to every worker (their /-/ready and /-/routes) and to the Consul metrics."""
        while True:
            status = watcher.status
            hub.set_status(status)
            recorder.record(status)
            await asyncio.sleep(_STATUS_INTERVAL)

    async def _keep_worker(self, index: int, hub: Any, watcher: Any) -> None:
        from consulgw.discovery.fanout import ChannelClosed, frame

        while not self._stopping.is_set():
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                proc = self._spawn(index, theirs)
            finally:
                theirs.close()
            self._children[index] = proc
            self._log.info("worker_started", worker=index, pid=proc.pid)
            reader, writer = await asyncio.open_unix_connection(sock=ours)
            hello = frame(("hello", self._settings, index, self._settings.workers))
            feeder = asyncio.create_task(hub.serve(writer, first=[hello]), name=f"consulgw-feed:{index}")
            listener = asyncio.create_task(self._listen(index, reader, watcher), name=f"consulgw-listen:{index}")
            try:
                code = await _exit_code(proc)
            finally:
                for task in (feeder, listener):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, ChannelClosed):
                        await task
                writer.close()
                del self._children[index]
            _forget_worker_metrics(proc.pid)
            if self._stopping.is_set():
                self._log.info("worker_stopped", worker=index, pid=proc.pid, exit_code=code)
                self._failures += code != 0
                return
            self._log.error("worker_died", worker=index, pid=proc.pid, exit_code=code)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 0.5)  # no hot crash loop

    async def _listen(self, index: int, reader: asyncio.StreamReader, watcher: Any) -> None:
        """What a worker asks of the watcher: the services its policies send traffic to (``watch_also``) and the
        other datacenters' services its failover policies name (``watch_remote``). Every
        worker builds the same view, so the union of their latest answers is what the policies name."""
        from consulgw.discovery.fanout import read_frame

        while True:
            item = await read_frame(reader)  # ChannelClosed when the worker goes: the caller cancels us anyway
            if item[0] == "watch_also" and isinstance(item[1], frozenset):
                self._also[index] = item[1]
                watcher.watch_also(frozenset().union(*self._also.values()))
            elif item[0] == "watch_remote" and isinstance(item[1], frozenset):
                self._remote[index] = item[1]  # (service, datacenter) pairs of the workers' failover policies
                watcher.watch_remote(frozenset().union(*self._remote.values()))

    def _spawn(self, index: int, channel: socket.socket) -> subprocess.Popen[bytes]:
        """A fresh interpreter (never a fork of this process: it holds Consul connections and an event loop)."""
        self._sink.drain()
        argv = [sys.executable, "-m", "consulgw.commands.worker", str(channel.fileno()), str(os.getpid())]
        # Stop signals stay blocked in the child until its event loop handles them (the mask survives exec): a
        # SIGTERM during start-up must still mean a graceful stop and exit 0, not death by the default action.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            return subprocess.Popen(argv, pass_fds=(channel.fileno(),), stdin=subprocess.DEVNULL)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


async def _exit_code(proc: subprocess.Popen[bytes]) -> int:
    """Wait for a child without blocking the loop: its pidfd becomes readable when it exits (Linux 5.3+)."""
    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        return await asyncio.to_thread(proc.wait)
    exited: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(pidfd, readable)
    try:
        await exited
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    return proc.wait()


def stop_with_parent(parent: int) -> None:
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
