"""Process settings: parsed once from flags and environment (flag wins), validated at the edge.

Every error names the flag, the environment variable and the offending value.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from consulgw.duration import parse_duration
from consulgw.errors import ConfigError
from consulgw.redisclient import parse_redis_url
from consulgw.routing.path import ENCODED_SLASHES, EncodedSlashes
from consulgw.tracing.config import TracingSettings, tracing_settings

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MIN_CONSUL_CONNS = 5  # consulgw.discovery.watcher.MIN_CONNS (settings import nothing from the packages they configure)


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Secret:
    """A credential that never shows itself in repr, str or logs."""

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret('**')" if self.value else "Secret('')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self.value)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsulSettings:
    """How to reach Consul."""

    address: str = "http://127.0.0.1:8500"
    token: Secret = field(default_factory=lambda: Secret(value=""))
    datacenter: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientLimits:
    """How long and how much the public listener gives each client (nginx's client_* settings, same intent)."""

    header_timeout: float = 10.0  # to receive a whole request head, from its first byte or from connecting
    body_timeout: float = 30.0  # the longest silence while receiving a request body, and its initial allowance
    body_min_rate: int = 500  # bytes/s: each one received extends the body's allowance by 1/rate s (mod_reqtimeout)
    keepalive_timeout: float = 60.0  # an idle keep-alive connection is closed after this
    send_timeout: float = 30.0  # the longest a write to a client that reads nothing may wait; then it is closed
    max_connections: int = 10_000  # client connections at once; beyond, new ones are answered 503 and closed
    request_buffer: int = 1024 * 1024 * 1024  # bytes of a request body received before the upstream is contacted


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewaySettings:
    """Everything ``consulgw run`` needs, validated."""

    consul: ConsulSettings = field(default_factory=ConsulSettings)
    listen: HostPort = HostPort("0.0.0.0", 8080)
    admin_listen: HostPort = HostPort("127.0.0.1", 8081)
    kv_prefix: str = "consulgw/"
    tag_prefix: str = "gw"
    tag_compat: tuple[str, ...] = ()
    trusted_proxies: tuple[IPNetwork, ...] = ()
    encoded_slashes: EncodedSlashes = "keep"  # %2F / %5C in a request path: kept encoded, or refused with 400
    workers: int = 1
    log_format: Literal["json", "console"] = "console"
    log_level: str = "info"
    redis_url: Secret = field(default_factory=lambda: Secret(value=""))
    tls_cert: str | None = None
    tls_key: str | None = None
    upstream_ca: str | None = None
    max_staleness: float = 60.0
    drain_timeout: float = 30.0
    coalesce_window: float = 0.05
    clients: ClientLimits = field(default_factory=ClientLimits)
    tracing: TracingSettings = field(default_factory=TracingSettings)  # from OTEL_* (consulgw.tracing.config)
    cache_memory_bytes: int = 64 * 1024 * 1024  # bound of the memory cache of one process
    # Keys the sticky-session cookies (HMAC-SHA256); empty: the gateway makes a random one per run (see
    # consulgw.traffic.sticky), so replicas must share one for their cookies to agree.
    sticky_key: Secret = field(default_factory=lambda: Secret(value=""))
    sticky_key_generated: bool = False  # the supervisor made ``sticky_key`` for its workers (none was configured)
    consul_max_conns: int = 64


MIN_STICKY_KEY = 16  # characters: 128 bits when random, as RFC 2104 recommends for an HMAC key at least


def parse_hostport(key: str, value: str) -> HostPort:
    text = value.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ConfigError(f"{key}: {value!r} is not HOST:PORT (for example 127.0.0.1:8080)")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ConfigError(f"{key}: port {port} in {value!r} is outside 0-65535")
    host = host.strip("[]") or "0.0.0.0"
    return HostPort(host, port)


_BYTE_UNITS = {"": 1, "b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "kb": 1000, "mb": 1000**2, "gb": 1000**3}


def parse_bytes(key: str, value: str) -> int:
    """``67108864``, ``64MiB``, ``512KiB``, ``1GiB`` (or kB/MB/GB, powers of 1000) -> bytes."""
    match = re.fullmatch(r"\s*(\d{1,15})\s*([A-Za-z]*)\s*", value)
    unit = match.group(2).lower() if match is not None else ""
    if match is None or unit not in _BYTE_UNITS:
        raise ConfigError(f"{key}: {value!r} is not a size (bytes, or a number with KiB, MiB or GiB, e.g. 64MiB)")
    return int(match.group(1)) * _BYTE_UNITS[unit]


def parse_cidrs(key: str, value: str) -> tuple[IPNetwork, ...]:
    networks: list[IPNetwork] = []
    for item in value.replace(" ", ",").split(","):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError as exc:
            raise ConfigError(f"{key}: {item!r} is not an IP address or CIDR ({exc})") from exc
    return tuple(networks)


def normalize_consul_address(key: str, value: str, *, ssl: bool = False) -> str:
    """Consul accepts ``host:port`` without a scheme in CONSUL_HTTP_ADDR; so do we."""
    text = value.strip().rstrip("/")
    if not text:
        raise ConfigError(f"{key}: empty Consul address")
    if "://" not in text:
        text = ("https://" if ssl else "http://") + text
    scheme = text.split("://", 1)[0]
    if scheme not in ("http", "https"):
        raise ConfigError(f"{key}: {value!r} must use http:// or https://")
    return text


def _redis_url(value: str) -> str:
    """Checked now (a bad URL stops the command); the client is built from it by ``consulgw.redisclient``."""
    if value:
        parse_redis_url("--redis / CONSULGW_REDIS_URL", value)
    return value


def _pick(args: argparse.Namespace, attr: str, environ: Mapping[str, str], env: str) -> str | None:
    value = getattr(args, attr, None)
    if value is not None:
        return str(value)
    return environ.get(env) or None


def consul_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> ConsulSettings:
    ssl = environ.get("CONSUL_HTTP_SSL", "").lower() in ("1", "true", "yes")
    address = _pick(args, "consul", environ, "CONSUL_HTTP_ADDR") or "http://127.0.0.1:8500"
    token = _pick(args, "token", environ, "CONSUL_HTTP_TOKEN") or ""
    datacenter = _pick(args, "datacenter", environ, "CONSUL_DATACENTER")
    return ConsulSettings(
        address=normalize_consul_address("--consul / CONSUL_HTTP_ADDR", address, ssl=ssl),
        token=Secret(value=token),
        datacenter=datacenter,
    )


def gateway_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> GatewaySettings:
    """Build GatewaySettings from parsed ``consulgw run`` arguments and the environment."""
    defaults = GatewaySettings()

    def text(attr: str, env: str, default: str) -> str:
        return _pick(args, attr, environ, env) or default

    listen = text("listen", "CONSULGW_LISTEN", str(defaults.listen))
    admin = text("admin_listen", "CONSULGW_ADMIN_LISTEN", str(defaults.admin_listen))
    workers_text = text("workers", "CONSULGW_WORKERS", "1")
    if not workers_text.isdigit() or int(workers_text) < 1:
        raise ConfigError(f"--workers / CONSULGW_WORKERS: {workers_text!r} must be a whole number >= 1")
    max_conns_text = text("consul_max_conns", "CONSULGW_CONSUL_MAX_CONNS", str(defaults.consul_max_conns))
    if not max_conns_text.isdigit() or int(max_conns_text) < MIN_CONSUL_CONNS:
        raise ConfigError(
            f"--consul-max-conns / CONSULGW_CONSUL_MAX_CONNS: {max_conns_text!r} must be a whole number >= "
            f"{MIN_CONSUL_CONNS} (four datacenter-wide watches and at least one reader)"
        )
    log_format = text("log_format", "CONSULGW_LOG_FORMAT", defaults.log_format)
    if log_format not in ("json", "console"):
        raise ConfigError(f"--log-format / CONSULGW_LOG_FORMAT: {log_format!r} must be 'json' or 'console'")
    log_level = text("log_level", "CONSULGW_LOG_LEVEL", defaults.log_level).lower()
    if log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"--log-level / CONSULGW_LOG_LEVEL: {log_level!r} must be debug, info, warning or error")
    kv_prefix = text("kv_prefix", "CONSULGW_KV_PREFIX", defaults.kv_prefix).lstrip("/")
    if not kv_prefix.endswith("/"):
        kv_prefix += "/"
    tag_prefix = text("tag_prefix", "CONSULGW_TAG_PREFIX", defaults.tag_prefix)
    if not tag_prefix or any(c.isspace() for c in tag_prefix):
        raise ConfigError(f"--tag-prefix / CONSULGW_TAG_PREFIX: {tag_prefix!r} must be a non-empty word")
    compat = tuple(c for c in text("tag_compat", "CONSULGW_TAG_COMPAT", "").split(",") if c)
    for item in compat:
        if item != "fabio":
            raise ConfigError(f"--tag-compat / CONSULGW_TAG_COMPAT: {item!r} is not supported (only 'fabio')")
    encoded_slashes = text("encoded_slashes", "CONSULGW_ENCODED_SLASHES", defaults.encoded_slashes)
    if encoded_slashes not in ENCODED_SLASHES:
        raise ConfigError(
            f"--encoded-slashes / CONSULGW_ENCODED_SLASHES: {encoded_slashes!r} must be 'keep' or 'reject'"
        )
    tls_cert = _pick(args, "tls_cert", environ, "CONSULGW_TLS_CERT")
    tls_key = _pick(args, "tls_key", environ, "CONSULGW_TLS_KEY")
    if bool(tls_cert) != bool(tls_key):
        raise ConfigError("--tls-cert and --tls-key (CONSULGW_TLS_CERT / CONSULGW_TLS_KEY) must be given together")
    sticky_key = text("sticky_key", "CONSULGW_STICKY_KEY", "")
    if sticky_key and (len(sticky_key) < MIN_STICKY_KEY or not sticky_key.isprintable() or sticky_key.isspace()):
        raise ConfigError(
            f"--sticky-key / CONSULGW_STICKY_KEY: the key has {len(sticky_key)} characters; give at least "
            f"{MIN_STICKY_KEY} printable characters (for example from `openssl rand -hex 32`)"
        )
    return GatewaySettings(
        consul=consul_settings(args, environ),
        listen=parse_hostport("--listen / CONSULGW_LISTEN", listen),
        admin_listen=parse_hostport("--admin-listen / CONSULGW_ADMIN_LISTEN", admin),
        kv_prefix=kv_prefix,
        tag_prefix=tag_prefix,
        tag_compat=compat,
        trusted_proxies=parse_cidrs(
            "--trusted-proxies / CONSULGW_TRUSTED_PROXIES", text("trusted_proxies", "CONSULGW_TRUSTED_PROXIES", "")
        ),
        encoded_slashes="reject" if encoded_slashes == "reject" else "keep",
        workers=int(workers_text),
        log_format="json" if log_format == "json" else "console",
        log_level=log_level,
        redis_url=Secret(value=_redis_url(text("redis", "CONSULGW_REDIS_URL", ""))),
        tls_cert=tls_cert,
        tls_key=tls_key,
        upstream_ca=_pick(args, "upstream_ca", environ, "CONSULGW_UPSTREAM_CA"),
        max_staleness=parse_duration(
            "--max-staleness / CONSULGW_MAX_STALENESS", text("max_staleness", "CONSULGW_MAX_STALENESS", "60s")
        ),
        drain_timeout=parse_duration(
            "--drain-timeout / CONSULGW_DRAIN_TIMEOUT", text("drain_timeout", "CONSULGW_DRAIN_TIMEOUT", "30s")
        ),
        coalesce_window=parse_duration("--coalesce / CONSULGW_COALESCE", text("coalesce", "CONSULGW_COALESCE", "50ms")),
        clients=_client_limits(text),
        tracing=tracing_settings(environ),
        cache_memory_bytes=parse_bytes(
            "--cache-memory-bytes / CONSULGW_CACHE_MEMORY_BYTES",
            text("cache_memory_bytes", "CONSULGW_CACHE_MEMORY_BYTES", str(defaults.cache_memory_bytes)),
        ),
        sticky_key=Secret(value=sticky_key),
        consul_max_conns=int(max_conns_text),
    )


def _client_limits(text: Callable[[str, str, str], str]) -> ClientLimits:
    def seconds(attr: str, env: str, default: str) -> float:
        flag = "--" + attr.replace("_", "-")
        return parse_duration(f"{flag} / {env}", text(attr, env, default), minimum=0.001)

    def count(attr: str, env: str, default: int, minimum: int) -> int:
        flag = "--" + attr.replace("_", "-")
        value = text(attr, env, str(default))
        if not value.isdigit() or int(value) < minimum:
            raise ConfigError(f"{flag} / {env}: {value!r} must be a whole number >= {minimum}")
        return int(value)

    return ClientLimits(
        header_timeout=seconds("client_header_timeout", "CONSULGW_CLIENT_HEADER_TIMEOUT", "10s"),
        body_timeout=seconds("client_body_timeout", "CONSULGW_CLIENT_BODY_TIMEOUT", "30s"),
        body_min_rate=count("client_body_min_rate", "CONSULGW_CLIENT_BODY_MIN_RATE", 500, 1),
        keepalive_timeout=seconds("keepalive_timeout", "CONSULGW_KEEPALIVE_TIMEOUT", "60s"),
        send_timeout=seconds("send_timeout", "CONSULGW_SEND_TIMEOUT", "30s"),
        max_connections=count("max_connections", "CONSULGW_MAX_CONNECTIONS", 10_000, 1),
        request_buffer=count("request_buffer", "CONSULGW_REQUEST_BUFFER", 1024 * 1024 * 1024, 0),
    )
