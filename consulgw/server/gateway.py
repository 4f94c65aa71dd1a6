"""The gateway's composition root for one process: builds every object, owns every task and connection.

``async with Gateway(settings) as gw:`` starts the Consul watcher, the public listener and the admin listener;
leaving the block (or ``await gw.stop()``) stops accepting, drains in-flight requests up to the drain timeout,
then cancels the watcher and closes every session.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import ssl
from collections.abc import Callable
from types import TracebackType
from typing import Protocol

import aiohttp
import structlog
from aiohttp import web

from consulgw.auth.basic import VerifiedPasswords
from consulgw.auth.jwks import JwksCache
from consulgw.cache.owner import CacheOwner
from consulgw.clock import Clock, SystemClock
from consulgw.discovery.consul_api import ConsulClient
from consulgw.discovery.watcher import CatalogWatcher, Publish, WatcherStatus
from consulgw.ids import RequestIds
from consulgw.logs import BufferedLines
from consulgw.metrics import ConsulMetrics, GatewayMetrics
from consulgw.openapi.catalog import OpenApiCatalog
from consulgw.pipeline.chain import Next, Stage, build_chain
from consulgw.pipeline.forward import Forwarder
from consulgw.pipeline.stages.deps import StageDeps
from consulgw.pipeline.stages.inflight import InFlight
from consulgw.pipeline.target import SelectTarget
from consulgw.policy.model import ServicePolicy
from consulgw.ratelimit.local import LocalLimiter
from consulgw.ratelimit.outage import BackendOutage
from consulgw.ratelimit.redisstore import RedisLimiter
from consulgw.redaction import redact_url
from consulgw.redisclient import RedisClient, open_redis
from consulgw.routing.rules import has_route_tags
from consulgw.server.admin import AdminDeps, create_admin_app
from consulgw.server.consul_status import ConsulStatusRecorder
from consulgw.server.guard import ClientGuard, ConnectionCount
from consulgw.server.history import TrafficHistory, TrafficRecorder
from consulgw.server.listener import create_public_app, send_continue
from consulgw.server.proxy import ProxyHandler
from consulgw.server.view import GatewayView, ViewBuilder
from consulgw.settings import GatewaySettings
from consulgw.tracing.setup import start_tracing
from consulgw.traffic import MirrorDispatcher, TrafficDeps, ephemeral_key_warning, traffic_steps
from consulgw.traffic.failover import FailoverBoard
from consulgw.upstream.breaker import BreakerBoard
from consulgw.upstream.headers import TrustedProxies
from consulgw.upstream.pool import UpstreamPools
from consulgw.upstream.transport import Http1Transport


class Discovery(Protocol):
    """Where the gateway's view of Consul comes from: its own CatalogWatcher, or (a ``--workers`` worker) the
    supervisor's, through a SnapshotReceiver."""

    @property
    def status(self) -> WatcherStatus: ...

    async def run(self, publish: Publish) -> None: ...

    def watch_also(self, names: frozenset[str]) -> None:
        """Also watch these services, routed or not (the ones the policies send traffic to)."""

    def watch_remote(self, pairs: frozenset[tuple[str, str]]) -> None:
        """Watch these (service, datacenter) pairs in the other datacenters (failover policies)."""


def consul_agent_session(max_conns: int) -> aiohttp.ClientSession:
    """The one HTTP session to the Consul agent: its connector never holds more than ``max_conns`` connections."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max_conns), timeout=aiohttp.ClientTimeout(total=None)
    )


class Gateway:
    def __init__(
        self,
        settings: GatewaySettings,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        new_request_id: Callable[[], str] | None = None,
        reuse_port: bool = False,
        worker_index: int = 0,
        worker_count: int = 1,
        consul_wait: float = 300.0,
        metrics_dir: str | None = None,
        history_interval: float = 5.0,
        log_sink: BufferedLines | None = None,
        discovery: Discovery | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._new_request_id = new_request_id or RequestIds()
        self._reuse_port = reuse_port
        self._worker_index = worker_index
        self._worker_count = worker_count
        self._consul_wait = consul_wait
        self._log = structlog.get_logger("consulgw.gateway")
        self._tls: ssl.SSLContext | None = None
        self._exit = contextlib.AsyncExitStack()
        self._watch_task: asyncio.Task[None] | None = None
        self._listen_task: asyncio.Task[None] | None = None
        self._listening = False
        self._public: web.AppRunner | None = None
        self._admin: web.AppRunner | None = None
        self._builder: ViewBuilder | None = None
        self._pools: UpstreamPools | None = None
        self._failover: FailoverBoard | None = None
        self._watcher: Discovery | None = discovery  # None: this gateway watches Consul itself
        self._build_task: asyncio.Task[None] | None = None
        self._handler: ProxyHandler | None = None
        self.metrics = GatewayMetrics(multiprocess_dir=metrics_dir)
        self.connections = ConnectionCount(limit=settings.clients.max_connections)
        self._history_interval = history_interval
        self._log_sink = log_sink
        # The per-request hook of the dashboard's per-instance errors and latency (consulgw.server.history).
        self.recorder = TrafficRecorder()
        self.port = 0
        self.admin_port = 0

    # -- lifecycle ----------------------------------------------------------------------------------------------

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        s = self.settings
        try:
            await self._start(s)
        except BaseException:
            await self._exit.aclose()
            raise

    async def _start(self, s: GatewaySettings) -> None:
        consul_session = await self._exit.enter_async_context(
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None))
        )
        # Tracing first, so its provider is shut down (the last spans flushed) after everything that makes spans.
        tracer = start_tracing(
            s.tracing,
            metrics=self.metrics,
            rng=self._rng,
            log=self._log,
            scheme="https" if s.tls_cert and s.tls_key else "http",
            redis_url=s.redis_url.value or None,
        )
        self._exit.push_async_callback(tracer.aclose)
        transport = Http1Transport(ca_file=s.upstream_ca)
        self._exit.push_async_callback(transport.close)
        redis_client: RedisClient | None = None
        if s.redis_url:  # one server, TLS, Sentinel or Cluster: consulgw.redisclient builds it from the URL
            redis = open_redis(s.redis_url.value, socket_timeout=0.25, connect_timeout=0.25, health_check_interval=5)
            self._exit.push_async_callback(redis.aclose)
            redis_client = redis.client
        redis_limiter = RedisLimiter(redis_client, timeout=0.25, tracer=tracer) if redis_client is not None else None
        if redis_limiter is not None:
            self._exit.push_async_callback(redis_limiter.aclose)
        # The response cache's process-wide part (stores, fills in flight, background refreshes): closed before the
        # transport and Redis it uses, after the watcher that builds steps with it.
        cache = await self._exit.enter_async_context(
            CacheOwner(clock=self._clock, metrics=self.metrics, memory_bytes=s.cache_memory_bytes, redis=redis_client)
        )
        pools = UpstreamPools(rng=self._rng, clock=self._clock)
        self._pools = pools
        breakers = BreakerBoard(clock=self._clock, metrics=self.metrics)
        # Mirrored requests run in the background, owned here; cancelled before the transport closes.
        mirrors = MirrorDispatcher(transport=transport, metrics=self.metrics)
        self._exit.push_async_callback(mirrors.close)
        failover = FailoverBoard(self._clock, on_switch=self._failover_switched)
        self._failover = failover
        traffic = TrafficDeps(
            pools=pools,
            breakers=breakers,
            metrics=self.metrics,
            rng=self._rng,
            mirrors=mirrors,
            send_continue=send_continue,
            sticky_key=(s.sticky_key.value or secrets.token_hex(32)).encode(),
            sticky_key_used=(ephemeral_key_warning() if not s.sticky_key or s.sticky_key_generated else (lambda: None)),
            failover=failover,
        )
        jwks = JwksCache(http=consul_session, clock=self._clock, tracer=tracer)
        local_limits = LocalLimiter(clock=self._clock)
        redis_outage = BackendOutage()
        verified_passwords = VerifiedPasswords()
        in_flight = InFlight()
        compat = frozenset(s.tag_compat)
        select = SelectTarget(pools)

        def pipeline(service: str, policy: ServicePolicy, stages: tuple[Stage, ...]) -> Next:
            forwarder = Forwarder(
                service=service,
                policy=policy,
                transport=transport,
                breakers=breakers,
                metrics=self.metrics,
                send_continue=send_continue,
                request_buffer=s.clients.request_buffer,
                body_timeout=s.clients.body_timeout,
                body_min_rate=s.clients.body_min_rate,
                tracer=tracer,
            )
            return build_chain((*stages, *traffic_steps(service, policy, traffic), select), forwarder)

        builder = ViewBuilder(
            tag_prefix=s.tag_prefix,
            compat=compat,
            kv_prefix=s.kv_prefix,
            pools=pools,
            breakers=breakers,
            metrics=self.metrics,
            stage_deps=lambda service: StageDeps(
                service=service,
                clock=self._clock,
                rng=self._rng,
                metrics=self.metrics,
                http=consul_session,
                redis=redis_client,
                consumers=builder.book,
                jwks=jwks,
                local_limits=local_limits,
                redis_outage=redis_outage,
                in_flight=in_flight,
                redis_limiter=redis_limiter,
                verified_passwords=verified_passwords,
                worker_index=self._worker_index,
                worker_count=self._worker_count,
                tracer=tracer,
                cache=cache,
                send_continue=send_continue,
                body_timeout=s.clients.body_timeout,
                body_min_rate=s.clients.body_min_rate,
            ),
            pipeline=pipeline,
            clock=self._clock,
            on_purge=cache.apply_purges,
            watch_also=self._watch_also,
            watch_remote=self._watch_remote,
            failover=failover,
        )
        self._builder = builder
        recorder: ConsulStatusRecorder | None = None
        if self._watcher is None:  # this process watches Consul (a --workers worker gets the supervisor's view)
            consul_http = await self._exit.enter_async_context(consul_agent_session(s.consul_max_conns))
            watcher = CatalogWatcher(
                ConsulClient(s.consul, consul_http),
                kv_prefix=s.kv_prefix,
                is_routed=lambda _name, tags: has_route_tags(tags, tag_prefix=s.tag_prefix, compat=compat),
                coalesce_window=s.coalesce_window,
                clock=self._clock,
                rng=self._rng,
                wait=self._consul_wait,
                max_conns=s.consul_max_conns,
            )
            self._watcher = watcher
            recorder = ConsulStatusRecorder(
                ConsulMetrics(self.metrics.registry, multiprocess_dir=self.metrics.multiprocess_dir), self._clock
            )
        discovery = self._watcher

        def record_consul() -> None:
            if recorder is not None:  # a worker's Consul metrics come from its supervisor
                recorder.record(discovery.status)

        if s.tls_cert and s.tls_key:
            self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._tls.load_cert_chain(s.tls_cert, s.tls_key)
        handler = ProxyHandler(
            view=self.view,
            metrics=self.metrics,
            recorder=self.recorder,
            trusted=TrustedProxies(s.trusted_proxies),
            clock=self._clock,
            new_request_id=self._new_request_id,
            scheme="https" if self._tls is not None else "http",
            encoded_slashes=s.encoded_slashes,
            tracer=tracer,
        )
        self._handler = handler
        self._build_task = asyncio.create_task(builder.run(), name="consulgw-view")
        self._exit.push_async_callback(self._stop_task, self._build_task)
        self._watch_task = asyncio.create_task(discovery.run(builder.offer), name="consulgw-watcher")
        self._exit.push_async_callback(self._stop_task, self._watch_task)
        loop = asyncio.get_running_loop()
        if self.metrics.multiprocess_dir is None:  # one process: counted at scrape time
            self.metrics.event_loop_tasks.set_function(lambda: len(asyncio.all_tasks(loop)))
        else:  # each worker writes its own count to the shared files; /metrics shows the sum
            tasks = asyncio.create_task(self._export_loop_tasks(), name="consulgw-loop-tasks")
            self._exit.push_async_callback(self._stop_task, tasks)
        if self._log_sink is not None:
            drops = asyncio.create_task(self._export_log_drops(self._log_sink), name="consulgw-log-drops")
            self._exit.push_async_callback(self._stop_task, drops)
        # Background readers of the view, owned here and stopped before the sessions close: the OpenAPI fetcher
        # and the dashboard's time series.
        openapi = await self._exit.enter_async_context(
            OpenApiCatalog(
                view=self.view,
                clock=self._clock,
                public_url=lambda: self.url,
                ssl_context=ssl.create_default_context(cafile=s.upstream_ca),
            )
        )
        history = await self._exit.enter_async_context(
            TrafficHistory(
                view=self.view,
                metrics=self.metrics,
                pools=pools,
                breakers=breakers,
                recorder=self.recorder,
                clock=self._clock,
                interval=self._history_interval,
            )
        )

        self._public = web.AppRunner(
            create_public_app(handler.__call__),
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=s.drain_timeout,
            keepalive_timeout=s.clients.keepalive_timeout,
            auto_decompress=False,  # a request body is relayed as the client's bytes, never decoded
        )
        await self._public.setup()
        self._exit.push_async_callback(self._public.cleanup)
        if self._worker_count > 1:
            # One of several workers on a shared port: join it only with a loaded view, so a restarted worker never
            # answers 503 while its siblings could serve. (A single process listens at once and answers a clear 503.)
            self._listen_task = asyncio.create_task(self._listen_when_ready(), name="consulgw-listen")
            self._exit.push_async_callback(self._stop_task, self._listen_task)
            self.port = s.listen.port
        else:
            await self._listen()

        admin_app = create_admin_app(
            AdminDeps(
                view=self.view,
                status=self.status,
                pools=pools,
                breakers=breakers,
                metrics=self.metrics,
                clock=self._clock,
                max_staleness=s.max_staleness,
                listening=lambda: self._listening,
                openapi=openapi,
                history=history,
                record_consul=record_consul,
                failover=self._failover,
            )
        )
        self._admin = web.AppRunner(admin_app, access_log=None, shutdown_timeout=2.0)
        await self._admin.setup()
        self._exit.push_async_callback(self._admin.cleanup)
        admin_site = web.TCPSite(
            self._admin, s.admin_listen.host, s.admin_listen.port, reuse_port=self._reuse_port or None
        )
        await admin_site.start()
        self.admin_port = _bound_port(self._admin)
        self._log.info(
            "gateway_started",
            listen=f"{s.listen.host}:{self.port}",
            admin=f"{s.admin_listen.host}:{self.admin_port}",
            consul=redact_url(s.consul.address),
            tls=self._tls is not None,
            worker=self._worker_index,
        )

    async def stop(self) -> None:
        """Stop accepting, drain in-flight requests (up to the drain timeout), then release everything."""
        self._log.info("gateway_stopping", inflight=self._handler.inflight if self._handler else 0)
        await self._exit.aclose()
        self._log.info("gateway_stopped")

    async def _listen_when_ready(self) -> None:
        assert self._builder is not None
        await self._builder.ready.wait()
        await self._listen()
        self._log.info("gateway_listening", listen=f"{self.settings.listen}", worker=self._worker_index)

    async def _listen(self) -> None:
        """Open the public port: each client connection is aiohttp's protocol behind a ClientGuard."""
        assert self._public is not None
        s = self.settings
        factory = self._public.server
        assert factory is not None
        count = self.connections
        header_timeout, send_timeout = s.clients.header_timeout, s.clients.send_timeout

        def protocol() -> ClientGuard:
            return ClientGuard(factory(), count, header_timeout=header_timeout, send_timeout=send_timeout)

        server = await asyncio.get_running_loop().create_server(
            protocol,
            s.listen.host,
            s.listen.port,
            ssl=self._tls,
            reuse_port=self._reuse_port or None,
            backlog=1024,
        )
        self._exit.push_async_callback(_close_server, server)  # stops accepting before the runner drains
        self.port = int(server.sockets[0].getsockname()[1])
        self._listening = True

    async def _export_log_drops(self, sink: BufferedLines) -> None:
        """Log lines the sink had to drop (stderr not keeping up) become consulgw_log_lines_dropped_total."""
        exported = sink.dropped
        while True:
            await asyncio.sleep(5.0)
            dropped = sink.dropped
            if dropped > exported:
                self.metrics.log_lines_dropped.inc(dropped - exported)
                exported = dropped

    async def _export_loop_tasks(self) -> None:
        """With --workers N: this worker's asyncio task count, written every 5 s (a scrape reads the files)."""
        gauge = self.metrics.event_loop_tasks
        while True:
            gauge.set(len(asyncio.all_tasks()))
            await asyncio.sleep(5.0)

    @staticmethod
    async def _stop_task(task: asyncio.Task[None]) -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    # -- views for the admin API and tests ----------------------------------------------------------------------

    def view(self) -> GatewayView | None:
        return self._builder.current if self._builder is not None else None

    def _watch_also(self, names: frozenset[str]) -> None:
        if self._watcher is not None:
            self._watcher.watch_also(names)

    def _failover_switched(self, service: str, old: str, new: str) -> None:
        """consulgw_failover_active: 1 for the datacenter that serves ``service`` now, 0 for the one before."""
        pool = self._pools.pool(service) if self._pools is not None else None
        local = (pool.datacenter if pool is not None else "") or "local"
        self.metrics.failover_active.labels(service, old or local).set(0)
        self.metrics.failover_active.labels(service, new or local).set(1)

    @property
    def failover(self) -> FailoverBoard | None:
        """Which datacenter serves each failed-over service (for /-/routes and tests)."""
        return self._failover

    def _watch_remote(self, pairs: frozenset[tuple[str, str]]) -> None:
        if self._watcher is not None:
            self._watcher.watch_remote(pairs)

    def status(self) -> WatcherStatus:
        assert self._watcher is not None
        return self._watcher.status

    async def discovery_ended(self) -> None:
        """Returns when the view's source stops (a worker's supervisor went away); never for a running watcher."""
        assert self._watch_task is not None
        await asyncio.wait({self._watch_task})

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until the first complete view of Consul is loaded."""
        assert self._builder is not None
        await asyncio.wait_for(self._builder.ready.wait(), timeout)

    def reload_tls(self) -> bool:
        """Re-read the certificate and key; new handshakes use them, open connections are untouched."""
        s = self.settings
        if self._tls is None or not s.tls_cert or not s.tls_key:
            return False
        try:
            # Validate on a scratch context first: a failing load_cert_chain on the live context may already have
            # swapped the certificate in, leaving a cert without its key and every new handshake failing.
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(s.tls_cert, s.tls_key)
            self._tls.load_cert_chain(s.tls_cert, s.tls_key)
        except (OSError, ssl.SSLError) as exc:
            self._log.error("tls_reload_failed", error=str(exc), cert=s.tls_cert)
            return False
        self._log.info("tls_reloaded", cert=s.tls_cert)
        return True

    @property
    def url(self) -> str:
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://{_client_host(self.settings.listen.host)}:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://{_client_host(self.settings.admin_listen.host)}:{self.admin_port}"


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)


async def _close_server(server: asyncio.Server) -> None:
    server.close()
    await server.wait_closed()


def _bound_port(runner: web.BaseRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return 0
