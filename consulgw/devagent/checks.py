"""Check definitions and the runners that really execute them (consul-api.md sections 3.1, 3.3 and 9).

``CheckDef`` is the agent's definition of one check (Consul's CheckType), parsed and validated from a request body.
Runners are owned asyncio tasks: TTL timers, HTTP and TCP probes on an interval, script checks when enabled. The
agent owns every task and cancels it on deregistration, re-registration and shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from consulgw.clock import Clock
from consulgw.devagent.decode import Fields
from consulgw.devagent.records import CRITICAL, PASSING, WARNING
from consulgw.duration import format_go_duration

NS = 1_000_000_000
MIN_INTERVAL_NS = NS
DEFAULT_TIMEOUT_NS = 10 * NS
DEFAULT_OUTPUT_MAX = 4096
SCRIPT_TIMEOUT_NS = 30 * NS

# Consul's own key translations for check definitions (lib/decode); case and underscores are folded anyway.
CHECK_ALIASES = {
    "script_args": "Args",
    "ScriptArgs": "Args",
    "service_id": "ServiceID",
    "check_id": "CheckID",
}

Update = Callable[[str, str], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckDef:
    check_id: str = ""
    name: str = ""
    notes: str = ""
    status: str = ""
    service_id: str = ""
    ttl_ns: int = 0
    interval_ns: int = 0
    timeout_ns: int = 0
    http: str = ""
    method: str = ""
    header: dict[str, tuple[str, ...]] = field(default_factory=dict)
    body: str = ""
    disable_redirects: bool = False
    tls_skip_verify: bool = False
    tls_server_name: str = ""
    tcp: str = ""
    tcp_use_tls: bool = False
    udp: str = ""
    grpc: str = ""
    grpc_use_tls: bool = False
    h2ping: str = ""
    args: tuple[str, ...] = ()
    docker_container_id: str = ""
    shell: str = ""
    alias_service: str = ""
    alias_node: str = ""
    os_service: str = ""
    deregister_after_ns: int = 0
    output_max_size: int = DEFAULT_OUTPUT_MAX
    success_before_passing: int = 0
    failures_before_warning: int = 0
    failures_before_critical: int = 0

    @property
    def is_alias(self) -> bool:
        return bool(self.alias_service or self.alias_node)

    @property
    def is_interval(self) -> bool:
        return bool(self.args or self.http or self.tcp or self.udp or self.grpc or self.h2ping or self.os_service)

    @property
    def type(self) -> str:
        if self.ttl_ns > 0:
            return "ttl"
        if self.http:
            return "http"
        if self.tcp:
            return "tcp"
        if self.udp:
            return "udp"
        if self.grpc:
            return "grpc"
        if self.h2ping:
            return "h2ping"
        if self.docker_container_id:
            return "docker"
        if self.args:
            return "script"
        if self.is_alias:
            return "alias"
        if self.os_service:
            return "os_service"
        return ""

    @property
    def effective_interval_ns(self) -> int:
        return max(self.interval_ns, MIN_INTERVAL_NS)

    @property
    def effective_timeout_ns(self) -> int:
        return self.timeout_ns if self.timeout_ns > 0 else DEFAULT_TIMEOUT_NS

    def validate(self) -> str | None:
        """Consul's CheckType.Validate; the message follows ``Invalid check: ``."""
        if self.interval_ns > 0 and self.ttl_ns > 0:
            return "Interval and TTL cannot both be specified"
        if self.is_interval and self.interval_ns <= 0:
            return "Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks"
        if self.is_alias:
            if self.ttl_ns > 0:
                return "TTL must be not be set for Alias checks"
            if self.interval_ns > 0:
                return "Interval cannot be set for Alias checks"
        if not self.is_interval and not self.is_alias and self.ttl_ns <= 0:
            return "TTL must be > 0 for TTL checks"
        if self.output_max_size < 0:
            return "MaxOutputMaxSize must be positive"
        return None

    def is_empty(self) -> bool:
        return self == CheckDef()

    def interval_text(self) -> str:
        return format_go_duration(self.interval_ns) if self.interval_ns > 0 else ""

    def timeout_text(self) -> str:
        return format_go_duration(self.timeout_ns) if self.timeout_ns > 0 else ""

    def definition(self) -> dict[str, Any]:
        """HealthCheckDefinition as the catalog shows it (omitempty fields)."""
        out: dict[str, Any] = {}
        if self.http:
            out["HTTP"] = self.http
            if self.tls_server_name:
                out["TLSServerName"] = self.tls_server_name
            if self.tls_skip_verify:
                out["TLSSkipVerify"] = True
            if self.header:
                out["Header"] = {k: list(v) for k, v in sorted(self.header.items())}
            if self.method:
                out["Method"] = self.method
            if self.body:
                out["Body"] = self.body
        if self.tcp:
            out["TCP"] = self.tcp
        if self.udp:
            out["UDP"] = self.udp
        if self.grpc:
            out["GRPC"] = self.grpc
        if self.h2ping:
            out["H2PING"] = self.h2ping
        if self.interval_ns:
            out["Interval"] = format_go_duration(self.interval_ns)
        if self.timeout_ns:
            out["Timeout"] = format_go_duration(self.timeout_ns)
        if self.deregister_after_ns:
            out["DeregisterCriticalServiceAfter"] = format_go_duration(self.deregister_after_ns)
        if self.args:
            out["ScriptArgs"] = list(self.args)
        if self.ttl_ns:
            out["TTL"] = format_go_duration(self.ttl_ns)
        return out


def parse_check_def(f: Fields, *, id_fields: tuple[str, ...] = ("CheckID", "ID")) -> CheckDef:
    check_id = ""
    for name in id_fields:
        if f.has(name):
            check_id = f.string(name)
    output_max = f.integer("OutputMaxSize", DEFAULT_OUTPUT_MAX)
    return CheckDef(
        check_id=check_id,
        name=f.string("Name"),
        notes=f.string("Notes"),
        status=f.string("Status"),
        service_id=f.string("ServiceID"),
        ttl_ns=f.duration("TTL"),
        interval_ns=f.duration("Interval"),
        timeout_ns=f.duration("Timeout"),
        http=f.string("HTTP"),
        method=f.string("Method"),
        header=f.str_list_map("Header"),
        body=f.string("Body"),
        disable_redirects=f.boolean("DisableRedirects"),
        tls_skip_verify=f.boolean("TLSSkipVerify"),
        tls_server_name=f.string("TLSServerName"),
        tcp=f.string("TCP"),
        tcp_use_tls=f.boolean("TCPUseTLS"),
        udp=f.string("UDP"),
        grpc=f.string("GRPC"),
        grpc_use_tls=f.boolean("GRPCUseTLS"),
        h2ping=f.string("H2PING"),
        args=f.str_list("Args"),
        docker_container_id=f.string("DockerContainerID"),
        shell=f.string("Shell"),
        alias_service=f.string("AliasService"),
        alias_node=f.string("AliasNode"),
        os_service=f.string("OSService"),
        deregister_after_ns=f.duration("DeregisterCriticalServiceAfter"),
        output_max_size=output_max if output_max else DEFAULT_OUTPUT_MAX,
        success_before_passing=f.integer("SuccessBeforePassing"),
        failures_before_warning=f.integer("FailuresBeforeWarning"),
        failures_before_critical=f.integer("FailuresBeforeCritical"),
    )


def truncate_output(output: str, limit: int) -> str:
    data = output.encode("utf-8")
    if len(data) <= limit:
        return output
    head = data[:limit].decode("utf-8", errors="ignore")
    return f"{head} ... (captured {limit} of {len(data)} bytes)"


class StatusFilter:
    """Consul's StatusHandler: SuccessBeforePassing / FailuresBeforeWarning / FailuresBeforeCritical."""

    def __init__(self, defn: CheckDef, update: Update) -> None:
        self.defn = defn
        self.update = update
        # Consul starts the counters at their thresholds, so the very first result is applied at once
        self.successes = defn.success_before_passing
        self.failures = defn.failures_before_critical

    def __call__(self, status: str, output: str) -> None:
        d = self.defn
        if status in (PASSING, WARNING):
            self.successes += 1
            self.failures = 0
            if self.successes >= d.success_before_passing:
                self.update(status, output)
            return
        self.failures += 1
        self.successes = 0
        if self.failures >= d.failures_before_critical:
            self.update(status, output)
            return
        before_warning = d.failures_before_warning or d.failures_before_critical
        if self.failures >= before_warning:
            self.update(WARNING, output)


Probe = Callable[[], Awaitable[tuple[str, str]]]


async def run_interval(defn: CheckDef, probe: Probe, update: Update, *, clock: Clock, rng: random.Random) -> None:
    """Probe on the interval; the first run comes after a random stagger within the interval, as Consul does."""
    interval = defn.effective_interval_ns / NS
    handler = StatusFilter(defn, update)
    await clock.sleep(rng.random() * interval)
    while True:
        status, output = await probe()
        handler(status, truncate_output(output, defn.output_max_size))
        await clock.sleep(interval)


def http_probe(defn: CheckDef, session: aiohttp.ClientSession) -> Probe:
    method = (defn.method or "GET").upper()
    timeout = defn.effective_timeout_ns / NS
    headers: list[tuple[str, str]] = []
    for key, values in defn.header.items():
        headers.extend((key, v) for v in values)
    names = {k.lower() for k, _ in headers}
    if "user-agent" not in names:
        headers.append(("User-Agent", "Consul Health Check"))
    if "accept" not in names:
        headers.append(("Accept", "text/plain, text/*, */*"))
    tls: ssl.SSLContext | bool = True
    if defn.tls_skip_verify:
        tls = False
    verb = method.capitalize()

    async def probe() -> tuple[str, str]:
        try:
            async with session.request(
                method,
                defn.http,
                headers=headers,
                data=defn.body.encode() if defn.body else None,
                timeout=aiohttp.ClientTimeout(total=timeout),
                ssl=tls,
                server_hostname=defn.tls_server_name or None,
                allow_redirects=not defn.disable_redirects,
            ) as resp:
                tail = b""  # Consul keeps the last OutputMaxSize bytes (a circular buffer)
                async for chunk in resp.content.iter_chunked(65536):
                    tail = (tail + chunk)[-defn.output_max_size :] if defn.output_max_size else b""
                text = tail.decode("utf-8", errors="replace")
                output = f"HTTP {method} {defn.http}: {resp.status} {resp.reason or ''} Output: {text}"
                if 200 <= resp.status < 300:
                    return PASSING, output
                if resp.status == 429:
                    return WARNING, output
                return CRITICAL, output
        except TimeoutError:
            return CRITICAL, (
                f'{verb} "{defn.http}": context deadline exceeded (Client.Timeout exceeded while awaiting headers)'
            )
        except aiohttp.ClientConnectorError as exc:
            return CRITICAL, f'{verb} "{defn.http}": dial tcp {exc.host}:{exc.port}: connect: {_reason(exc.os_error)}'
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return CRITICAL, f'{verb} "{defn.http}": {exc}'

    return probe


def _reason(exc: OSError | None) -> str:
    if exc is None:
        return "connection refused"
    if exc.errno:
        return os.strerror(exc.errno).lower()
    return (exc.strerror or str(exc)).lower()


def tcp_probe(defn: CheckDef) -> Probe:
    timeout = defn.effective_timeout_ns / NS
    host, _, port_text = defn.tcp.rpartition(":")
    host = host.strip("[]")

    async def probe() -> tuple[str, str]:
        try:
            port = int(port_text)
            _reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=ssl.create_default_context() if defn.tcp_use_tls else None),
                timeout,
            )
        except TimeoutError:
            return CRITICAL, f"dial tcp {defn.tcp}: i/o timeout"
        except ValueError:
            return CRITICAL, f"address {defn.tcp}: missing port in address"
        except OSError as exc:
            return CRITICAL, f"dial tcp {defn.tcp}: connect: {_reason(exc)}"
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return PASSING, f"TCP connect {defn.tcp}: Success"

    return probe


UDP_MESSAGE = b"Hello from Consul"


class _UdpProbeProtocol(asyncio.DatagramProtocol):
    def __init__(self, answer: asyncio.Future[None]) -> None:
        self.answer = answer

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if not self.answer.done():
            self.answer.set_result(None)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)


def udp_probe(defn: CheckDef) -> Probe:
    """Consul's UDP check: send a datagram; an ICMP error is critical, an answer or silence is passing."""
    timeout = defn.effective_timeout_ns / NS
    host, _, port_text = defn.udp.rpartition(":")
    host = host.strip("[]")
    success = f"UDP connect {defn.udp}: Success"

    async def probe() -> tuple[str, str]:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[None] = loop.create_future()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProbeProtocol(answer), remote_addr=(host, int(port_text))
            )
        except (OSError, ValueError) as exc:
            return CRITICAL, f"dial udp {defn.udp}: {exc}"
        try:
            transport.sendto(UDP_MESSAGE)
            await asyncio.wait_for(answer, timeout)
        except TimeoutError:
            return PASSING, success
        except OSError as exc:
            return CRITICAL, f"read udp {defn.udp}: {_reason(exc)}"
        finally:
            transport.close()
        return PASSING, success

    return probe


def script_probe(defn: CheckDef) -> Probe:
    timeout = (defn.timeout_ns or SCRIPT_TIMEOUT_NS) / NS

    async def probe() -> tuple[str, str]:
        try:
            proc = await asyncio.create_subprocess_exec(
                *defn.args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
            )
        except OSError as exc:
            return CRITICAL, f"Failed to exec check: {exc}"
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return CRITICAL, f"Timed out ({format_go_duration(int(timeout * NS))}) running check"
        output = out.decode("utf-8", errors="replace")
        if proc.returncode == 0:
            return PASSING, output
        if proc.returncode == 1:
            return WARNING, output
        return CRITICAL, output

    return probe


def ttl_expired_output(last_output: str) -> str:
    if last_output:
        return f"TTL expired (last output before timeout follows): {last_output}"
    return "TTL expired"
