"""``--redis`` beyond one server (issue 13): one factory (consulgw.redisclient) for a single server, TLS, Sentinel
and Cluster URLs, checked at the edge; real ``redis-server`` / ``redis-sentinel`` processes on free ports.

* TLS: a ``redis-server --tls-port`` with a certificate from trustme; the CA comes from the URL's
  ``ssl_ca_certs``; without it the server is not trusted and the limiter reports the backend unavailable.
* Cluster: three ``redis-server --cluster-enabled yes`` nodes joined with ``redis-cli --cluster create``; the GCRA
  script touches one key per call (KEYS[1]), so every call hashes to one slot, whichever node owns it.
* Sentinel: failover under load through a real gateway is in tests/policy_e2e/test_redis_sentinel.py.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from consulgw.errors import ConfigError, RateLimitBackendUnavailable
from consulgw.ratelimit.gcra import Quota
from consulgw.ratelimit.keys import limit_key
from consulgw.ratelimit.redisstore import RedisLimiter
from consulgw.redisclient import open_redis, parse_redis_url
from tests.gateway.conftest import wait_for
from tests.support.processes import free_port
from tests.support.redis_servers import RedisProcess, RedisProcesses

KEY = "--redis / CONSULGW_REDIS_URL"
needs_redis_server = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")


# -- the URL, checked at the edge ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "kind", "hosts", "db", "service"),
    [
        pytest.param("redis://127.0.0.1:6379/0", "server", [("127.0.0.1", 6379)], 0, None, id="server"),
        pytest.param("redis://cache", "server", [("cache", 6379)], 0, None, id="default-port"),
        pytest.param("rediss://:pw@cache:6380/2", "server", [("cache", 6380)], 2, None, id="tls"),
        pytest.param("redis://[::1]:7000/1", "server", [("::1", 7000)], 1, None, id="ipv6"),
        pytest.param(
            "redis+sentinel://:pw@s1:26379,s2:26380,s3/mymaster/3",
            "sentinel",
            [("s1", 26379), ("s2", 26380), ("s3", 26379)],
            3,
            "mymaster",
            id="sentinel",
        ),
        pytest.param("redis+sentinel://s1/cache", "sentinel", [("s1", 26379)], 0, "cache", id="sentinel-minimal"),
        pytest.param(
            "redis+cluster://u:pw@n1:7000,n2:7001", "cluster", [("n1", 7000), ("n2", 7001)], 0, None, id="cluster"
        ),
        pytest.param("redis+cluster://n1:7000/0", "cluster", [("n1", 7000)], 0, None, id="cluster-db-0"),
    ],
)
def test_parse(url: str, kind: str, hosts: list[tuple[str, int]], db: int, service: str | None) -> None:
    parsed = parse_redis_url(KEY, url)
    assert (parsed.kind, list(parsed.hosts), parsed.db, parsed.service_name) == (kind, hosts, db, service)
    assert "pw" not in parsed.shown
    assert "pw" not in repr(parsed)


def test_unix_socket_url() -> None:
    parsed = parse_redis_url(KEY, "unix:///run/redis/redis.sock?db=4")
    assert (parsed.kind, parsed.socket_path, parsed.db) == ("server", "/run/redis/redis.sock", 4)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        pytest.param("http://:s3cr3t@cache:6379", "is not a Redis URL", id="scheme"),
        pytest.param("cache:6379", "is not a Redis URL", id="no-scheme"),
        pytest.param("redis+sentinel://:s3cr3t@s1:26379", "has no service name", id="sentinel-without-name"),
        pytest.param("redis+sentinel://:s3cr3t@s1/m/1/2", "more than /service_name/db", id="sentinel-path"),
        pytest.param("redis+cluster://:s3cr3t@n1:7000/2", "database other than 0", id="cluster-db"),
        pytest.param("redis://:s3cr3t@a:1,b:2/0", "several hosts", id="several-hosts"),
        pytest.param("redis://:s3cr3t@cache:99999/0", "the port '99999'", id="port"),
        pytest.param("redis://:s3cr3t@cache/zero", "the database 'zero'", id="db"),
        pytest.param("redis://:s3cr3t@cache/0?socket_timout=1", "unknown option 'socket_timout'", id="typo-option"),
        pytest.param("rediss://:s3cr3t@cache/0?ssl_cert_reqs=maybe", "ssl_cert_reqs", id="cert-reqs"),
        pytest.param("redis://:s3cr3t@/0", "empty host", id="empty-host"),
        pytest.param("unix://:s3cr3t@", "socket path", id="unix-without-path"),
    ],
)
def test_bad_urls_name_the_flag_and_hide_the_password(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_redis_url(KEY, url)
    message = str(caught.value)
    assert message.startswith(f"{KEY}: ")
    assert problem in message
    assert "s3cr3t" not in message
    assert "\n" not in message


# -- TLS ------------------------------------------------------------------------------------------------------------


@needs_redis_server
async def test_tls_redis(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    tls = ("--tls-cert-file", str(cert_file), "--tls-key-file", str(key_file), "--tls-ca-cert-file", str(ca_file))
    port = free_port()
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca_file}"
    async with RedisProcesses(tmp_path) as processes:
        trusted = open_redis(url, socket_timeout=2.0, connect_timeout=2.0)
        untrusted = open_redis(f"rediss://127.0.0.1:{port}/0", socket_timeout=2.0, connect_timeout=2.0)
        try:
            try:
                await processes.server(*tls, "--tls-auth-clients", "no", tls=True, ping=trusted.client, port=port)
            except RuntimeError as exc:
                if "tls" in str(exc).lower():
                    pytest.skip(f"this redis-server build has no TLS: {str(exc)[-200:]}")
                raise
            limiter = RedisLimiter(trusted.client, timeout=2.0)
            key = limit_key(f"tls-{uuid.uuid4().hex[:8]}", "ip", "203.0.113.1")
            decisions = [await limiter.acquire(key, Quota.of(requests=3, per=60.0)) for _ in range(4)]
            assert [d.allowed for d in decisions] == [True, True, True, False]
            with pytest.raises(RateLimitBackendUnavailable):  # a server it cannot verify is no backend
                await RedisLimiter(untrusted.client, timeout=2.0).acquire(key, Quota.of(requests=3, per=60.0))
        finally:
            await trusted.aclose()
            await untrusted.aclose()


# -- Cluster --------------------------------------------------------------------------------------------------------


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[list[RedisProcess]]:
    """Three primaries (no replicas) joined into one cluster that covers every slot."""
    if shutil.which("redis-cli") is None:
        pytest.skip("redis-cli is not installed")
    async with RedisProcesses(tmp_path) as processes:
        # The cluster bus gets a free port of its own (by default it is the port + 10000: maybe taken, or > 65535).
        bus = ("--cluster-enabled", "yes", "--cluster-node-timeout", "2000", "--cluster-port")
        nodes = [await processes.server(*bus, str(free_port())) for _ in range(3)]
        create = await asyncio.create_subprocess_exec(
            "redis-cli",
            "--cluster",
            "create",
            *(node.address for node in nodes),
            "--cluster-replicas",
            "0",
            "--cluster-yes",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(create.communicate(), 60)
        assert create.returncode == 0, out.decode(errors="replace")

        async def cluster_ok() -> bool:
            for node in nodes:
                client = Redis(host="127.0.0.1", port=node.port, socket_timeout=2.0)
                try:
                    info = await client.execute_command("CLUSTER", "INFO")
                finally:
                    await client.aclose()
                text = info.decode() if isinstance(info, bytes) else str(info)
                if "cluster_state:ok" not in text:
                    return False
            return True

        await wait_for(cluster_ok, timeout=30)
        yield nodes


@needs_redis_server
async def test_cluster_decides_every_key_on_the_node_that_owns_its_slot(cluster: list[RedisProcess]) -> None:
    url = "redis+cluster://" + ",".join(node.address for node in cluster[:2])  # any nodes will do to start
    handle = open_redis(url, socket_timeout=2.0, connect_timeout=2.0)
    try:
        assert isinstance(handle.client, RedisCluster)
        limiter = RedisLimiter(handle.client, timeout=2.0)
        service = f"cluster-{uuid.uuid4().hex[:8]}"
        quota = Quota.of(requests=3, per=60.0)
        keys = [limit_key(service, "ip", f"203.0.113.{i}") for i in range(40)]
        for key in keys:
            decisions = [await limiter.acquire(key, quota) for _ in range(4)]
            assert [d.allowed for d in decisions] == [True, True, True, False], key
        slots = {handle.client.keyslot(key) for key in keys}
        owners = {handle.client.get_node_from_key(key).name for key in keys}
        assert len(owners) == 3  # the keys really were spread over the three nodes
        # A node that lost its scripts (restart, SCRIPT FLUSH) gets the script again: EVALSHA -> NOSCRIPT -> EVAL.
        for node in cluster:
            direct = Redis(host="127.0.0.1", port=node.port, socket_timeout=2.0)
            try:
                await direct.script_flush()
            finally:
                await direct.aclose()
        fresh = limit_key(service, "ip", "198.51.100.1")
        assert (await limiter.acquire(fresh, quota)).allowed
        assert len(slots) > 10
    finally:
        await handle.aclose()
