"""``DevAgent``: the composition root of the in-memory agent that behaves like ``consul agent -dev``.

It builds the state, the dev baseline (one node, ``serfHealth`` passing, the catalog-only ``consul`` service), the
ACL system (when enabled), the endpoint modules and one listener whose connections are counted per client IP
(``limits.http_max_conns_per_client``) before aiohttp sees them. ``stop()`` wakes every blocked query, cancels every
check runner and session timer, and closes the listener, so a new agent can start on the same port at once (a
Consul restart: all state is lost and indexes start small again). ``PUT /v1/agent/leave`` answers, then stops the
agent the same way and sets :attr:`DevAgent.left`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import Mapping
from types import TracebackType

import aiohttp
import structlog
from aiohttp import web

from consulgw.clock import Clock, SystemClock
from consulgw.devagent.acl import AclSystem
from consulgw.devagent.acl_api import AclEndpoints
from consulgw.devagent.agent import LocalAgent
from consulgw.devagent.agent_api import AgentEndpoints
from consulgw.devagent.agent_config import DEFAULT_MAX_CONNS_PER_CLIENT, AclConfig, AgentConfig
from consulgw.devagent.catalog import CatalogEndpoints
from consulgw.devagent.cluster import ClusterEndpoints
from consulgw.devagent.config import ConfigEndpoints
from consulgw.devagent.connlimit import ConnectionLimiter, protocol_factory
from consulgw.devagent.core import VERSION, Core, Identity
from consulgw.devagent.health import HealthEndpoints
from consulgw.devagent.http import HttpApi, Router, redacted_url
from consulgw.devagent.kv import KVEndpoints
from consulgw.devagent.monitor import LogLine
from consulgw.devagent.records import PASSING, SERF_ALIVE_OUTPUT, SERF_CHECK_ID, SERF_CHECK_NAME, Check, Node, Service
from consulgw.devagent.session import Sessions
from consulgw.devagent.status import StatusEndpoints
from consulgw.devagent.telemetry import Telemetry, process_gauges
from consulgw.devagent.txn import TxnEndpoint
from consulgw.devagent.wan import WanForwarder

log = structlog.get_logger("consulgw.devagent")
BACKLOG = 1024  # Go listens with the kernel's somaxconn; 128 would refuse bursts of parallel watchers


class DevAgent:
    def __init__(
        self,
        *,
        node: str | None = None,
        datacenter: str = "dc1",
        host: str = "127.0.0.1",
        port: int = 8500,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        reap_interval: float = 30.0,
        min_deregister_after: float = 60.0,
        ae_interval: float = 60.0,
        enable_script_checks: bool = False,
        pretty: bool = True,
        start_index: int = 10,
        shutdown_timeout: float = 1.0,
        http_max_conns_per_client: int = DEFAULT_MAX_CONNS_PER_CLIENT,
        acl: AclConfig | None = None,
        prometheus_retention: float = 0.0,
        wan_peers: Mapping[str, str] | None = None,
    ) -> None:
        self._node = node or socket.gethostname()
        self._datacenter = datacenter
        self._host = host
        self._requested_port = port
        self._clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._reap_interval = reap_interval
        self._min_deregister_after = min_deregister_after
        self._ae_interval = ae_interval
        self._enable_script_checks = enable_script_checks
        self._pretty = pretty
        self._start_index = start_index
        self._shutdown_timeout = shutdown_timeout
        if http_max_conns_per_client < 0:
            raise ValueError(f"http_max_conns_per_client must be >= 0, got {http_max_conns_per_client}")
        self._max_conns = http_max_conns_per_client
        self._acl_config = acl or AclConfig()
        self._prometheus_retention = prometheus_retention
        self._wan_peers = dict(wan_peers or {})  # datacenter -> peer agent URL (WAN federation, ?dc=)
        if datacenter in self._wan_peers:
            raise ValueError(f"wan_peers names this agent's own datacenter {datacenter!r}")
        self._wan_session: aiohttp.ClientSession | None = None
        self._runner: web.ServerRunner | None = None
        self._listener: asyncio.Server | None = None
        self._port: int | None = None
        self._core: Core | None = None
        self._agent: LocalAgent | None = None
        self._sessions: Sessions | None = None
        self._limiter: ConnectionLimiter | None = None
        self._telemetry: Telemetry | None = None
        self._leaving: asyncio.Task[None] | None = None
        self.left = asyncio.Event()  # set once PUT /v1/agent/leave has stopped the agent

    @classmethod
    def from_config(cls, config: AgentConfig, **knobs: object) -> DevAgent:
        """An agent as a Consul agent configuration describes it; ``knobs`` are the other keyword arguments."""
        options: dict[str, object] = {
            "http_max_conns_per_client": config.http_max_conns_per_client,
            "acl": config.acl,
            "prometheus_retention": config.prometheus_retention,
        }
        if config.datacenter is not None:
            options["datacenter"] = config.datacenter
        if config.node_name is not None:
            options["node"] = config.node_name
        if config.enable_script_checks is not None:
            options["enable_script_checks"] = config.enable_script_checks
        options.update(knobs)
        return cls(**options)  # type: ignore[arg-type]

    # ---- public API -----------------------------------------------------------------------------------------

    @property
    def node(self) -> str:
        return self._node

    @property
    def datacenter(self) -> str:
        return self._datacenter

    @property
    def wan_peers(self) -> Mapping[str, str]:
        return dict(self._wan_peers)

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("DevAgent is not started")
        return self._port

    @property
    def http_max_conns_per_client(self) -> int:
        return self._max_conns

    @property
    def connections_refused(self) -> int:
        """Connections refused by the per-client limit since start."""
        return self._limiter.refused if self._limiter is not None else 0

    def open_connections(self, ip: str = "127.0.0.1") -> int:
        """HTTP connections from ``ip`` open right now, as the per-client limit counts them."""
        return self._limiter.open_connections(ip) if self._limiter is not None else 0

    @property
    def monitor_streams(self) -> int:
        """Live ``/v1/agent/monitor`` streams."""
        return self._core.logs.subscribers if self._core is not None else 0

    @property
    def listen_address(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{self._requested_port}"

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        if host in ("0.0.0.0", "[::]"):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}"

    async def __aenter__(self) -> DevAgent:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("DevAgent is already started")
        address = "127.0.0.1" if self._host in ("0.0.0.0", "::", "") else self._host
        identity = Identity(
            node=self._node,
            node_id=_uuid(self._rng),
            datacenter=self._datacenter,
            address=address,
        )
        core = Core(
            identity=identity,
            clock=self._clock,
            rng=self._rng,
            start_index=self._start_index,
            wan_peers=self._wan_peers,
        )
        self._bootstrap(core)
        acl = AclSystem(core, self._acl_config)
        acl.initialize()
        core.leave_requested = self._leave
        agent = LocalAgent(
            core,
            enable_script_checks=self._enable_script_checks,
            min_deregister_after=self._min_deregister_after,
            reap_interval=self._reap_interval,
            ae_interval=self._ae_interval,
        )
        sessions = Sessions(core)
        core.checks_changed_hooks.append(sessions.revalidate)
        limiter = ConnectionLimiter(self._max_conns, self._clock)
        telemetry = Telemetry(self._clock, lambda: self._gauges(core))
        router = Router()
        config = ConfigEndpoints(core)
        AgentEndpoints(core, agent, acl, telemetry, prometheus_retention=self._prometheus_retention).register(router)
        CatalogEndpoints(core, config).register(router)
        HealthEndpoints(core).register(router)
        KVEndpoints(core, sessions, key_list_policy=self._acl_config.enable_key_list_policy).register(router)
        sessions.register(router)
        TxnEndpoint(core, sessions).register(router)
        StatusEndpoints(core).register(router)
        ClusterEndpoints(core).register(router)
        config.register(router)
        AclEndpoints(core, acl).register(router)

        def finished(request: web.BaseRequest, pattern: str, status: int, seconds: float) -> None:
            label = pattern[1:].replace("/", "_") if pattern else "unknown"
            telemetry.sample("consul.api.http", seconds * 1000.0, (("method", request.method), ("path", label)))
            log.debug("request_completed", method=request.method, path=request.path, status=status,
                      duration_ms=round(seconds * 1000, 3))  # fmt: skip
            if core.logs.wants("debug"):  # Consul's line for each request, built only for a monitor that shows it
                peer = request.transport.get_extra_info("peername") if request.transport is not None else None
                source = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else ""
                fields = (("method", request.method), ("url", redacted_url(request)), ("from", source),
                          ("latency", f"{seconds * 1e6:.3f}µs"))  # fmt: skip
                core.logs.offer(LogLine(core.clock.time(), "debug", "agent.http", "Request finished", fields))

        await agent.start()
        wan_session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) if self._wan_peers else None
        handler = HttpApi(
            router,
            pretty=self._pretty,
            default_policy=self._acl_config.default_policy,
            resolve=acl.resolve,
            finished=finished,
            forward=WanForwarder(wan_session) if wan_session is not None else None,
        )
        self._wan_session = wan_session
        server = web.Server(handler, handler_cancellation=True)
        runner = web.ServerRunner(server, shutdown_timeout=self._shutdown_timeout)
        await runner.setup()
        try:
            # "localhost" may resolve to two families; with port 0 each would get its own port, so pick one
            bind_host = "127.0.0.1" if self._host == "localhost" else self._host
            listener = await asyncio.get_running_loop().create_server(
                protocol_factory(limiter, server),
                bind_host or None,
                self._requested_port,
                reuse_address=True,
                backlog=BACKLOG,
            )
        except BaseException:
            await runner.cleanup()
            await agent.stop()
            if wan_session is not None:
                self._wan_session = None
                await wan_session.close()
            raise
        ports = [int(sock.getsockname()[1]) for sock in listener.sockets]
        self._port = ports[0] if ports else self._requested_port
        self._runner, self._listener, self._core, self._agent = runner, listener, core, agent
        self._sessions, self._limiter, self._telemetry = sessions, limiter, telemetry
        self.left.clear()

    async def stop(self) -> None:
        leaving = self._leaving
        if leaving is not None and leaving is not asyncio.current_task():
            self._leaving = None
            with contextlib.suppress(asyncio.CancelledError):
                await leaving
        await self._shutdown()

    def _leave(self) -> None:
        """``PUT /v1/agent/leave`` was answered: stop serving, as a Consul agent exits after leaving."""
        if self._leaving is None and self._core is not None:
            self._core.log("info", "agent", "Graceful leave complete")
            self._leaving = asyncio.get_running_loop().create_task(self._left(), name="devagent-leave")

    async def _left(self) -> None:
        await self._shutdown()
        self.left.set()

    async def _shutdown(self) -> None:
        runner, listener, core, agent = self._runner, self._listener, self._core, self._agent
        sessions = self._sessions
        self._runner = self._listener = self._core = self._agent = self._sessions = None
        if listener is not None:
            listener.close()
        if core is not None:
            core.shutdown()
        if agent is not None:
            await agent.stop()
        if sessions is not None:
            await sessions.stop()
        if runner is not None:
            await runner.cleanup()
        if listener is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(listener.wait_closed(), self._shutdown_timeout)
        if core is not None:
            core.store.watch.cancel_all()
        wan_session, self._wan_session = self._wan_session, None
        if wan_session is not None:
            await wan_session.close()

    @staticmethod
    def _gauges(core: Core) -> list[tuple[str, float]]:
        store = core.store
        gauges = [
            ("consul.runtime.num_goroutines", float(len(asyncio.all_tasks()))),
            ("consul.state.nodes", float(len(store.nodes))),
            ("consul.state.services", float(len(store.services_by_name))),
            ("consul.state.service_instances", float(len(store.services))),
            ("consul.state.kv_entries", float(len(store.kv))),
        ]
        gauges.extend(process_gauges())
        return gauges

    # ---- internals ----------------------------------------------------------------------------------------------

    def _bootstrap(self, core: Core) -> None:
        ident = core.identity
        with core.store.write() as tx:
            tx.put_node(
                Node(
                    id=ident.node_id,
                    name=ident.node,
                    address=ident.address,
                    datacenter=ident.datacenter,
                    tagged_addresses={
                        "lan": ident.address,
                        "lan_ipv4": ident.address,
                        "wan": ident.address,
                        "wan_ipv4": ident.address,
                    },
                    meta={"consul-network-segment": "", "consul-version": VERSION},
                )
            )
        with core.store.write() as tx:
            tx.put_check(
                Check(
                    node=ident.node,
                    check_id=SERF_CHECK_ID,
                    name=SERF_CHECK_NAME,
                    status=PASSING,
                    output=SERF_ALIVE_OUTPUT,
                )
            )
        with core.store.write() as tx:
            tx.put_service(
                Service(
                    node=ident.node,
                    id="consul",
                    name="consul",
                    port=8300,
                    meta={
                        "grpc_port": "8502",
                        "grpc_tls_port": "8503",
                        "non_voter": "false",
                        "raft_version": "3",
                        "read_replica": "false",
                        "serf_protocol_current": "2",
                        "serf_protocol_max": "5",
                        "serf_protocol_min": "1",
                        "version": VERSION,
                    },
                )
            )


def _uuid(rng: random.Random) -> str:
    import uuid

    return str(uuid.UUID(int=rng.getrandbits(128), version=4))
