"""Redis clients from one URL: a single server (plain or TLS), a Sentinel-managed primary, or a Cluster.

Every Redis use (rate limits today) gets its client from :func:`open_redis`; ``--redis`` / ``CONSULGW_REDIS_URL``
is checked by :func:`parse_redis_url` when the settings are read, so a bad URL stops the command with one line
that names the flag, the variable and the URL -- its password shown as ``***``.

Accepted forms (redis-py underneath: ``redis.asyncio.Redis``, ``.sentinel.Sentinel``, ``.cluster.RedisCluster``)::

    redis://[[user]:password@]host[:port][/db]          one server (port 6379, db 0 by default)
    rediss://[[user]:password@]host[:port][/db]         the same over TLS
    unix://[[user]:password@]/path/to/redis.sock[?db=N]  a local socket
    redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]
                                                        the primary of ``service_name``, found by asking the
                                                        sentinels (port 26379 by default); user and password
                                                        are those of the Redis servers
    redis+cluster://[[user]:password@]host:port[,host:port...]
                                                        a Redis Cluster, from any of its nodes (db 0 only)

Query options: ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs`` (``required``,
``optional``, ``none``) and ``ssl_check_hostname`` (``true``/``false``) with ``rediss://``;
``sentinel_username`` and ``sentinel_password`` (the sentinels' own credentials) with ``redis+sentinel://``.
Anything else is refused, so a typo is an error rather than an option silently ignored.

Failover: a Sentinel client asks the sentinels for the primary's address whenever it opens a connection, and drops
a connection on error (including ``READONLY`` from a demoted primary), so after a failover the next commands reach
the new primary by themselves. Until then, commands fail, and the rate-limit stage applies ``on_backend_error``.
A Cluster client follows ``MOVED`` redirections and refreshes its slot map by itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal, TypeAlias
from urllib.parse import parse_qsl, unquote

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel

from consulgw.errors import ConfigError
from consulgw.redaction import redact_url

RedisClient: TypeAlias = Redis | RedisCluster  # what stores use: both run commands and register_script
RedisKind = Literal["server", "sentinel", "cluster"]

_DEFAULT_PORTS: Final = {"redis": 6379, "rediss": 6379, "redis+sentinel": 26379, "redis+cluster": 6379}
_TLS_OPTIONS: Final = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")
_SENTINEL_OPTIONS: Final = ("sentinel_username", "sentinel_password")
_FORMS: Final = (
    "redis://[:password@]host[:port][/db], rediss://..., unix:///path.sock, "
    "redis+sentinel://[:password@]host:port[,host:port]/service_name[/db] or "
    "redis+cluster://[:password@]host:port[,host:port]"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisUrl:
    """A checked Redis URL. ``shown`` is the URL without credentials, for messages and logs."""

    kind: RedisKind
    scheme: str
    hosts: tuple[tuple[str, int], ...] = ()  # the server, the sentinels or the cluster's startup nodes
    socket_path: str | None = None  # unix://
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int = 0
    service_name: str | None = None  # redis+sentinel://
    options: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), repr=False)
    raw: str = field(default="", repr=False)
    shown: str = ""


@dataclass(frozen=True, slots=True)
class RedisHandle:
    """An open client and what must be closed with it (a Sentinel client also holds its sentinels' pools)."""

    client: RedisClient
    closers: tuple[Callable[[], Awaitable[None]], ...]

    async def aclose(self) -> None:
        for close in self.closers:
            await close()


def parse_redis_url(key: str, url: str) -> RedisUrl:
    """Check a Redis URL; ``ConfigError`` naming ``key`` (e.g. ``--redis / CONSULGW_REDIS_URL``) otherwise."""
    shown = redact_url(url.strip())

    def bad(problem: str) -> ConfigError:
        return ConfigError(f"{key}: {shown!r} {problem}")

    text = url.strip()
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in (*_DEFAULT_PORTS, "unix"):
        raise bad(f"is not a Redis URL; expected {_FORMS}")
    rest, _, fragment = rest.partition("#")
    if fragment:
        raise bad("has a '#fragment'")
    rest, _, query = rest.partition("?")
    authority, slash, path = rest.partition("/")
    userinfo, at, hostlist = authority.rpartition("@")
    if not at:
        userinfo, hostlist = "", authority
    username, _, password = userinfo.partition(":")
    options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=False)) if query else {}
    kind: RedisKind = "server"
    if scheme == "redis+sentinel":
        kind = "sentinel"
    elif scheme == "redis+cluster":
        kind = "cluster"
    allowed = {"rediss": _TLS_OPTIONS, "redis+sentinel": _SENTINEL_OPTIONS, "unix": ("db",)}.get(scheme, ())
    for name in options:
        if name not in allowed:
            accepted = ", ".join(allowed) if allowed else "none"
            raise bad(f"has the unknown option {name!r} (accepted with {scheme}://: {accepted})")
    if options.get("ssl_cert_reqs", "required") not in ("required", "optional", "none"):
        raise bad("has ssl_cert_reqs other than required, optional or none")
    if options.get("ssl_check_hostname", "true").lower() not in ("true", "false"):
        raise bad("has ssl_check_hostname other than true or false")

    def checked(**where: object) -> RedisUrl:
        return RedisUrl(
            kind=kind,
            scheme=scheme,
            username=unquote(username) or None,
            password=unquote(password) or None,
            options=MappingProxyType(options),
            raw=text,
            shown=shown,
            **where,  # type: ignore[arg-type]
        )

    if scheme == "unix":
        if hostlist or not slash or not path:
            raise bad("needs a socket path: unix:///path/to/redis.sock")
        db_text = options.get("db", "0")
        if not db_text.isdigit():
            raise bad(f"has db {db_text!r}, not a whole number")
        return checked(socket_path="/" + path, db=int(db_text))

    hosts = tuple(_host_port(part, _DEFAULT_PORTS[scheme], bad) for part in hostlist.split(","))
    segments = path.split("/") if path else []
    if kind == "sentinel":
        if not segments or not segments[0]:
            raise bad("has no service name; expected redis+sentinel://[:password@]host:port/service_name")
        if len(segments) > 2:
            raise bad("has more than /service_name/db in its path")
        db = _db(segments[1] if len(segments) == 2 else "", bad)
        return checked(hosts=hosts, db=db, service_name=unquote(segments[0]))
    if len(segments) > 1:
        raise bad("has more than /db in its path")
    db = _db(segments[0] if segments else "", bad)
    if kind == "cluster" and db != 0:
        raise bad("names a database other than 0, which Redis Cluster does not have")
    if kind == "server" and len(hosts) > 1:
        raise bad("names several hosts; use redis+sentinel:// or redis+cluster:// for several servers")
    return checked(hosts=hosts, db=db)


def open_redis(
    url: str,
    *,
    key: str = "--redis / CONSULGW_REDIS_URL",
    socket_timeout: float = 0.25,
    connect_timeout: float = 0.25,
    health_check_interval: int = 5,
) -> RedisHandle:
    """The client for ``url`` (checked as :func:`parse_redis_url` does). Nothing connects before the first command."""
    parsed = parse_redis_url(key, url)
    if parsed.kind == "server":
        single = Redis.from_url(
            parsed.raw,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            health_check_interval=health_check_interval,
        )
        return RedisHandle(single, (single.aclose,))
    if parsed.kind == "cluster":
        cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in parsed.hosts],
            username=parsed.username,
            password=parsed.password,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
        )
        return RedisHandle(cluster, (cluster.aclose,))
    assert parsed.service_name is not None
    sentinel_kwargs: dict[str, object] = {"socket_timeout": socket_timeout, "socket_connect_timeout": connect_timeout}
    if parsed.options.get("sentinel_username"):
        sentinel_kwargs["username"] = parsed.options["sentinel_username"]
    if parsed.options.get("sentinel_password"):
        sentinel_kwargs["password"] = parsed.options["sentinel_password"]
    sentinel = Sentinel(
        list(parsed.hosts),
        sentinel_kwargs=sentinel_kwargs,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        health_check_interval=health_check_interval,
    )
    primary = sentinel.master_for(parsed.service_name, db=parsed.db, username=parsed.username, password=parsed.password)
    return RedisHandle(primary, (primary.aclose, *(s.aclose for s in sentinel.sentinels)))


def _host_port(text: str, default_port: int, bad: Callable[[str], ConfigError]) -> tuple[str, int]:
    if not text:
        raise bad("has an empty host")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise bad(f"has a malformed IPv6 address {text!r}")
        host, port_text = text[1:end], text[end + 1 :].removeprefix(":")
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise bad(f"has an empty host in {text!r}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise bad(f"has the port {port_text!r}, not 1-65535")
    return host, int(port_text)


def _db(text: str, bad: Callable[[str], ConfigError]) -> int:
    if not text:
        return 0
    if not text.isdigit():
        raise bad(f"has the database {text!r}, not a whole number")
    return int(text)
