"""``DevAgent``: the composition root of the in-memory agent that behaves like ``consul agent -dev``.

It builds the state, the dev baseline (one node, ``serfHealth`` passing, the catalog-only ``consul`` service), the
endpoint modules and one aiohttp listener. ``stop()`` wakes every blocked query, cancels every check runner and
session timer, and closes the listener, so a new agent can start on the same port at once (a Consul restart: all
state is lost and indexes start small again).
"""

from __future__ import annotations

import random
import socket
from types import TracebackType

import structlog
from aiohttp import web

from consulgw.clock import Clock, SystemClock
from consulgw.devagent.agent import LocalAgent
from consulgw.devagent.agent_api import AgentEndpoints
from consulgw.devagent.catalog import CatalogEndpoints
from consulgw.devagent.cluster import ClusterEndpoints
from consulgw.devagent.config import ConfigEndpoints
from consulgw.devagent.core import VERSION, Core, Identity
from consulgw.devagent.health import HealthEndpoints
from consulgw.devagent.http import HttpApi, Router
from consulgw.devagent.kv import KVEndpoints
from consulgw.devagent.records import PASSING, SERF_ALIVE_OUTPUT, SERF_CHECK_ID, SERF_CHECK_NAME, Check, Node, Service
from consulgw.devagent.session import Sessions
from consulgw.devagent.status import StatusEndpoints
from consulgw.devagent.txn import TxnEndpoint

log = structlog.get_logger("consulgw.devagent")


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
        self._runner: web.ServerRunner | None = None
        self._port: int | None = None
        self._core: Core | None = None
        self._agent: LocalAgent | None = None
        self._sessions: Sessions | None = None

    # ---- public API -----------------------------------------------------------------------------------------

    @property
    def node(self) -> str:
        return self._node

    @property
    def datacenter(self) -> str:
        return self._datacenter

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("DevAgent is not started")
        return self._port

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
        core = Core(identity=identity, clock=self._clock, rng=self._rng, start_index=self._start_index)
        self._bootstrap(core)
        agent = LocalAgent(
            core,
            enable_script_checks=self._enable_script_checks,
            min_deregister_after=self._min_deregister_after,
            reap_interval=self._reap_interval,
            ae_interval=self._ae_interval,
        )
        sessions = Sessions(core)
        core.checks_changed_hooks.append(sessions.revalidate)
        router = Router()
        AgentEndpoints(core, agent).register(router)
        CatalogEndpoints(core).register(router)
        HealthEndpoints(core).register(router)
        KVEndpoints(core, sessions).register(router)
        sessions.register(router)
        TxnEndpoint(core, sessions).register(router)
        StatusEndpoints(core).register(router)
        ClusterEndpoints(core).register(router)
        ConfigEndpoints(core).register(router)
        await agent.start()
        server = web.Server(HttpApi(router, pretty=self._pretty), handler_cancellation=True)
        runner = web.ServerRunner(server, shutdown_timeout=self._shutdown_timeout)
        await runner.setup()
        try:
            # "localhost" may resolve to two families; with port 0 each would get its own port, so pick one
            bind_host = "127.0.0.1" if self._host == "localhost" else self._host
            site = web.TCPSite(runner, bind_host, self._requested_port, reuse_address=True)
            await site.start()
        except BaseException:
            await runner.cleanup()
            await agent.stop()
            raise
        sockets = [s for s in (server_socket(site),) if s is not None]
        self._port = sockets[0] if sockets else self._requested_port
        self._runner, self._core, self._agent, self._sessions = runner, core, agent, sessions
        log.debug("dev_agent_listening", url=self.url, node=self._node)

    async def stop(self) -> None:
        runner, core, agent, sessions = self._runner, self._core, self._agent, self._sessions
        self._runner = self._core = self._agent = self._sessions = None
        if core is not None:
            core.shutdown()
        if agent is not None:
            await agent.stop()
        if sessions is not None:
            await sessions.stop()
        if runner is not None:
            await runner.cleanup()
        if core is not None:
            core.store.watch.cancel_all()

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


def server_socket(site: web.TCPSite) -> int | None:
    server = site._server  # aiohttp exposes the bound sockets only through the asyncio server
    if server is None:
        return None
    for sock in getattr(server, "sockets", None) or ():
        return int(sock.getsockname()[1])
    return None


def _uuid(rng: random.Random) -> str:
    import uuid

    return str(uuid.UUID(int=rng.getrandbits(128), version=4))
