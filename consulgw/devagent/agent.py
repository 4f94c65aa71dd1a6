"""The local agent: services and checks registered through ``/v1/agent/*``, their runners, maintenance mode,
agent-local health, ``agent/self`` and ``agent/members`` (consul-api.md section 3).

Local state is synchronised into the catalog synchronously, before the HTTP response is sent, like Consul's
``syncChanges()`` inside the handler. Every request is decoded and validated whole before anything is changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import re
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import structlog

from consulgw.devagent import checks as runners
from consulgw.devagent.bexpr import schema_from_sample
from consulgw.devagent.blocking import query_timeout, wait_for_topics
from consulgw.devagent.checks import CHECK_ALIASES, NS, CheckDef, parse_check_def, truncate_output
from consulgw.devagent.cluster import coordinate
from consulgw.devagent.core import LEADER_ADDR, REVISION, VERSION, Core, apply_filter, filter_of, parse_bool
from consulgw.devagent.decode import (
    CHECK_DEFINITION,
    CHECK_TYPE,
    CHECK_UPDATE,
    SERVICE_ADDRESS,
    SERVICE_DEFINITION,
    WEIGHTS,
    Fields,
)
from consulgw.devagent.errors import ApiError, DecodeError, bad_request, not_found
from consulgw.devagent.http import Call, Reply, Router, empty, text
from consulgw.devagent.records import (
    CRITICAL,
    NODE_MAINT_CHECK_ID,
    PASSING,
    SERF_CHECK_ID,
    SERVICE_MAINT_PREFIX,
    STATUSES,
    WARNING,
    Check,
    Service,
    TaggedAddress,
)
from consulgw.devagent.render import agent_service_json, check_json

log = structlog.get_logger("consulgw.devagent")

SERVICE_ALIASES = {
    "enable_tag_override": "EnableTagOverride",
    "tagged_addresses": "TaggedAddresses",
    "socket_path": "SocketPath",
}
DEFAULT_SERVICE_REASON = (
    "Maintenance mode is enabled for this service, but no reason was provided. This is a default message."
)
DEFAULT_NODE_REASON = (
    "Maintenance mode is enabled for this node, but no reason was provided. This is a default message."
)
SCRIPTS_DISABLED = (
    "Scripts are disabled on this agent; to enable, configure 'enable_script_checks' or "
    "'enable_local_script_checks' to true"
)
_META_KEY = re.compile(r"[A-Za-z0-9_-]+")


def unknown_service(service_id: str) -> ApiError:
    return not_found(f'Unknown service ID "{service_id}". Ensure that the service ID is passed, not the service name.')


def unknown_check(check_id: str) -> ApiError:
    return not_found(f'Unknown check ID "{check_id}". Ensure that the check ID is passed, not the check name.')


@dataclass(slots=True, kw_only=True)
class LocalCheck:
    record: Check
    defn: CheckDef | None
    critical_since: float | None = None
    last_output: str = ""
    task: asyncio.Task[None] | None = None


def validate_meta(meta: dict[str, str]) -> str | None:
    """Consul's ValidateServiceMetadata texts (it shares the node-metadata count message)."""
    if len(meta) > 64:
        return "Node metadata cannot contain more than 64 key/value pairs"
    for key, value in meta.items():
        problem = None
        if key == "":
            problem = "Key cannot be blank"
        elif not _META_KEY.fullmatch(key):
            problem = "Key contains invalid characters"
        elif len(key) > 128:
            problem = "Key is too long (limit: 128 characters)"
        elif key.startswith("consul-"):
            problem = "Key prefix 'consul-' is reserved for internal use"
        elif len(value) > 512:
            problem = "Value is too long (limit: 512 characters)"
        if problem:
            return f"Couldn't load metadata pair ('{key}', '{value}'): {problem}"
    return None


def is_unspecified(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_unspecified
    except ValueError:
        return False


def default_tagged_addresses(address: str, port: int, given: dict[str, TaggedAddress]) -> dict[str, TaggedAddress]:
    out = dict(given)
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return out
    kinds = ("lan_ipv4", "wan_ipv4") if ip.version == 4 else ("lan_ipv6", "wan_ipv6")
    for kind in kinds:
        out.setdefault(kind, TaggedAddress(address=address, port=port))
    return out


def worst_status(statuses: list[str], check_ids: list[str]) -> str:
    """Go api.HealthChecks.AggregatedStatus: maintenance > critical > warning > passing."""
    if any(c == NODE_MAINT_CHECK_ID or c.startswith(SERVICE_MAINT_PREFIX) for c in check_ids):
        return "maintenance"
    if CRITICAL in statuses:
        return CRITICAL
    if WARNING in statuses:
        return WARNING
    return PASSING


class LocalAgent:
    def __init__(
        self,
        core: Core,
        *,
        enable_script_checks: bool = False,
        min_deregister_after: float = 60.0,
        reap_interval: float = 30.0,
        ae_interval: float = 60.0,
    ) -> None:
        self.core = core
        self.ae_interval = ae_interval
        self.enable_script_checks = enable_script_checks
        self.min_deregister_after = min_deregister_after
        self.reap_interval = reap_interval
        self.services: dict[str, Service] = {}
        self.checks: dict[str, LocalCheck] = {}
        self._session: aiohttp.ClientSession | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._anti_entropy: asyncio.Task[None] | None = None
        self._own_node = core.store.nodes.get(core.node)
        self._refreshing_aliases = False
        core.store.commit_hooks.append(self._on_commit)

    # ---- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True), auto_decompress=True, trust_env=False
        )
        self._reaper = asyncio.create_task(self._reap_loop(), name="devagent-reaper")
        if self.ae_interval > 0:
            self._anti_entropy = asyncio.create_task(self._ae_loop(), name="devagent-anti-entropy")

    async def stop(self) -> None:
        tasks = [lc.task for lc in self.checks.values() if lc.task is not None]
        tasks.extend(t for t in (self._reaper, self._anti_entropy) if t is not None)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for lc in self.checks.values():
            lc.task = None
        self._reaper = self._anti_entropy = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(_log_task_failure)
        return task

    # ---- check state ------------------------------------------------------------------------------------------

    def _now(self) -> float:
        return self.core.clock.monotonic()

    def _sync(self, records: list[Check], removed: list[str], services: list[Service] | None = None) -> None:
        with self.core.store.write() as tx:
            for svc in services or []:
                tx.put_service(svc)
            for rec in records:
                stored = tx.put_check(rec)
                lc = self.checks.get(rec.check_id)
                if lc is not None:
                    lc.record = stored
            for check_id in removed:
                tx.delete_check(self.core.node, check_id)

    def update_check(self, check_id: str, status: str, output: str) -> None:
        """A runner (or a TTL update) reports a result; only a real change reaches the catalog."""
        lc = self.checks.get(check_id)
        if lc is None:
            return
        limit = lc.defn.output_max_size if lc.defn is not None else runners.DEFAULT_OUTPUT_MAX
        output = truncate_output(output, limit)
        previous = lc.record.status
        if status == CRITICAL:
            if lc.critical_since is None:
                lc.critical_since = self._now()
        else:
            lc.critical_since = None
        if lc.record.status == status and lc.record.output == output:
            return
        self._sync([replace(lc.record, status=status, output=output)], [])
        self.core.store.watch.notify(["agent:checks"])
        if status == CRITICAL and previous != CRITICAL:
            self.core.checks_changed()

    def _start_runner(self, lc: LocalCheck) -> None:
        defn = lc.defn
        if defn is None:
            return
        check_id = lc.record.check_id

        def update(status: str, output: str) -> None:
            self.update_check(check_id, status, output)

        core = self.core
        if defn.ttl_ns > 0:
            lc.task = self._spawn(self._ttl_timer(check_id, defn.ttl_ns / NS), f"ttl:{check_id}")
        elif defn.http and self._session is not None:
            probe = runners.http_probe(defn, self._session)
            lc.task = self._spawn(
                runners.run_interval(defn, probe, update, clock=core.clock, rng=core.rng), f"http:{check_id}"
            )
        elif defn.tcp:
            lc.task = self._spawn(
                runners.run_interval(defn, runners.tcp_probe(defn), update, clock=core.clock, rng=core.rng),
                f"tcp:{check_id}",
            )
        elif defn.udp:
            lc.task = self._spawn(
                runners.run_interval(defn, runners.udp_probe(defn), update, clock=core.clock, rng=core.rng),
                f"udp:{check_id}",
            )
        elif defn.args and not defn.docker_container_id:
            lc.task = self._spawn(
                runners.run_interval(defn, runners.script_probe(defn), update, clock=core.clock, rng=core.rng),
                f"script:{check_id}",
            )

    async def _ttl_timer(self, check_id: str, ttl: float) -> None:
        await self.core.clock.sleep(ttl)
        lc = self.checks.get(check_id)
        if lc is not None and lc.task is asyncio.current_task():
            lc.task = None
            self.update_check(check_id, CRITICAL, runners.ttl_expired_output(lc.last_output))

    def _stop_runner(self, lc: LocalCheck) -> None:
        if lc.task is not None:
            lc.task.cancel()
            lc.task = None

    def ttl_update(self, check_id: str, status: str, output: str) -> None:
        lc = self.checks.get(check_id)
        if lc is None:
            raise unknown_check(check_id)
        if lc.defn is None or lc.defn.ttl_ns <= 0:
            raise ApiError(500, f'CheckID "{check_id}" does not have associated TTL')
        limit = lc.defn.output_max_size
        lc.last_output = truncate_output(output, limit)
        self._stop_runner(lc)
        self.update_check(check_id, status, output)
        self._start_runner(lc)

    # ---- registration ------------------------------------------------------------------------------------------

    def _check_record(self, defn: CheckDef, check_id: str, name: str, svc: Service | None) -> Check:
        return Check(
            node=self.core.node,
            check_id=check_id,
            name=name,
            status=defn.status or CRITICAL,
            notes=defn.notes,
            output="",
            service_id=svc.id if svc else "",
            service_name=svc.name if svc else "",
            service_tags=svc.tags if svc else (),
            type=defn.type,
            interval=defn.interval_text(),
            timeout=defn.timeout_text(),
            definition=defn.definition(),
        )

    def _install_checks(self, pairs: list[tuple[Check, CheckDef | None]], *, keep_state: bool) -> list[Check]:
        """Replace local checks by new definitions, carrying live status/output when ``keep_state``."""
        records: list[Check] = []
        for rec, defn in pairs:
            old = self.checks.get(rec.check_id)
            if old is not None:
                self._stop_runner(old)
                if keep_state:
                    rec = replace(rec, status=old.record.status, output=old.record.output)
            lc = LocalCheck(record=rec, defn=defn, last_output=old.last_output if old and keep_state else "")
            if rec.status == CRITICAL:
                lc.critical_since = old.critical_since if old and keep_state and old.critical_since else self._now()
            self.checks[rec.check_id] = lc
            records.append(rec)
        return records

    def add_service(self, svc: Service, defs: list[CheckDef], *, replace_existing: bool) -> None:
        pairs: list[tuple[Check, CheckDef | None]] = []
        for pos, defn in enumerate(defs, start=1):
            check_id = defn.check_id or (f"service:{svc.id}" + (f":{pos}" if len(defs) > 1 else ""))
            name = defn.name or f"Service '{svc.name}' check"
            pairs.append((self._check_record(defn, check_id, name, svc), defn))
        new_ids = {rec.check_id for rec, _ in pairs}
        removed = [
            cid
            for cid, lc in self.checks.items()
            if lc.record.service_id == svc.id
            and cid not in new_ids
            and replace_existing
            and not cid.startswith(SERVICE_MAINT_PREFIX)
        ]
        for cid in removed:
            self._stop_runner(self.checks.pop(cid))
        self.services[svc.id] = svc
        records = self._install_checks(pairs, keep_state=True)
        # existing checks of the service that stay carry the (possibly new) name and tags
        for lc in self.checks.values():
            if (
                lc.record.service_id == svc.id
                and lc.record.check_id not in new_ids
                and lc.record.service_name != svc.name
            ):
                lc.record = replace(lc.record, service_name=svc.name)
                records.append(lc.record)
        self._sync(records, removed, [svc])
        self.refresh_aliases()
        for rec in records:
            if rec.check_id in new_ids:
                self._start_runner(self.checks[rec.check_id])
        self.core.store.watch.notify(["agent:services", "agent:checks", "agentsvc:" + svc.id])

    def remove_service(self, service_id: str) -> bool:
        svc = self.services.pop(service_id, None)
        if svc is None:
            return False
        removed = [cid for cid, lc in self.checks.items() if lc.record.service_id == service_id]
        for cid in removed:
            self._stop_runner(self.checks.pop(cid))
        with self.core.store.write() as tx:
            tx.delete_service(self.core.node, service_id)
            for cid in removed:
                tx.delete_check(self.core.node, cid)
        self.core.store.watch.notify(["agent:services", "agent:checks", "agentsvc:" + service_id])
        if removed:
            self.core.checks_changed()
        return True

    def add_check(self, rec: Check, defn: CheckDef | None) -> None:
        # Consul snapshots an existing check's status/output and restores it after re-registration (no flapping)
        records = self._install_checks([(rec, defn)], keep_state=True)
        self._sync(records, [])
        self.refresh_aliases()
        self._start_runner(self.checks[rec.check_id])
        self.core.store.watch.notify(["agent:checks"])
        if rec.status == CRITICAL:
            self.core.checks_changed()

    def remove_check(self, check_id: str) -> bool:
        lc = self.checks.pop(check_id, None)
        if lc is None:
            return False
        self._stop_runner(lc)
        self._sync([], [check_id])
        self.core.store.watch.notify(["agent:checks"])
        self.core.checks_changed()
        return True

    # ---- reaper ------------------------------------------------------------------------------------------------

    async def _reap_loop(self) -> None:
        while True:
            await self.core.clock.sleep(self.reap_interval)
            self.reap()

    def reap(self) -> None:
        now = self._now()
        reaped: set[str] = set()
        for lc in list(self.checks.values()):
            sid = lc.record.service_id
            if not sid or sid in reaped or lc.defn is None or lc.defn.deregister_after_ns <= 0:
                continue
            if lc.record.status != CRITICAL or lc.critical_since is None:
                continue
            timeout = max(lc.defn.deregister_after_ns / NS, self.min_deregister_after)
            if now - lc.critical_since > timeout:
                reaped.add(sid)
                log.info("service_reaped", service_id=sid, check_id=lc.record.check_id)
                self.remove_service(sid)

    # ---- alias checks ------------------------------------------------------------------------------------------

    def _on_commit(self, topics: set[str]) -> None:
        if "checks" in topics and not self._refreshing_aliases:
            self.refresh_aliases()

    def refresh_aliases(self) -> None:
        """Alias checks mirror the health of another service (or node), as Consul's CheckAlias does."""
        aliases = [lc for lc in self.checks.values() if lc.defn is not None and lc.defn.is_alias]
        if not aliases:
            return
        self._refreshing_aliases = True
        try:
            for _ in range(4):  # aliases of aliases settle in a few rounds
                changed = False
                for lc in aliases:
                    status, output = self._alias_status(lc)
                    if (status, output) != (lc.record.status, lc.record.output):
                        self.update_check(lc.record.check_id, status, output)
                        changed = True
                if not changed:
                    break
        finally:
            self._refreshing_aliases = False

    def _alias_status(self, lc: LocalCheck) -> tuple[str, str]:
        defn = lc.defn
        if defn is None:
            return lc.record.status, lc.record.output
        store = self.core.store
        node = defn.alias_node or self.core.node
        health, msg, found = PASSING, "No checks found.", False
        for chk in store.checks_on_node(node):
            if node == self.core.node and chk.check_id == lc.record.check_id:
                continue
            match = chk.service_id == defn.alias_service
            if chk.service_id and not match:
                continue
            found = found or match
            if chk.status in (CRITICAL, WARNING):
                health, msg = chk.status, f'Aliased check "{chk.name}" failing: {chk.output}'
                if chk.status == CRITICAL:
                    break
            elif health == PASSING:
                msg = "All checks passing."
        if defn.alias_service and not found and (node, defn.alias_service) not in store.services:
            return CRITICAL, f"Service {defn.alias_service} could not be found on node {defn.alias_node}"
        return health, msg

    # ---- anti-entropy ----------------------------------------------------------------------------------------

    async def _ae_loop(self) -> None:
        while True:
            # Consul: a full sync every ae_interval plus a random stagger of up to one more interval
            await self.core.clock.sleep(self.ae_interval + self.core.rng.random() * self.ae_interval)
            self.full_sync()

    def full_sync(self) -> None:
        """Make the catalog's view of this node match the agent: what was registered on this node through the
        catalog API (except the ``consul`` service and ``serfHealth``) is removed, local state is re-written."""
        store, node = self.core.store, self.core.node
        with store.write() as tx:
            if self._own_node is not None:
                tx.put_node(self._own_node)
            for svc in store.services_on_node(node):
                if svc.id != "consul" and svc.id not in self.services:
                    tx.delete_service(node, svc.id)
            for chk in store.checks_on_node(node):
                if chk.check_id != SERF_CHECK_ID and chk.check_id not in self.checks:
                    tx.delete_check(node, chk.check_id)
            for svc in self.services.values():
                tx.put_service(svc)
            for lc in self.checks.values():
                lc.record = tx.put_check(lc.record)
            changed = tx.changed
        if changed:
            log.info("anti_entropy_synced", node=node)
            self.core.checks_changed()

    # ---- views ---------------------------------------------------------------------------------------------

    def service_checks(self, service_id: str) -> list[Check]:
        out = [lc.record for lc in self.checks.values() if lc.record.service_id == service_id]
        out += [lc.record for lc in self.checks.values() if not lc.record.service_id]
        return out

    def content_hash(self, svc: Service) -> str:
        body = repr(sorted(agent_service_json(svc, self.core.datacenter).items()))
        return hashlib.sha256(body.encode()).hexdigest()[:16]


def _log_task_failure(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("check_runner_failed", task=task.get_name(), error=repr(exc))


# ---- request decoding ----------------------------------------------------------------------------------------


def tagged_service_addresses(f: Fields) -> dict[str, TaggedAddress]:
    raw = f.raw("TaggedAddresses")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise DecodeError("json: cannot unmarshal into Go struct field ServiceDefinition.TaggedAddresses")
    out: dict[str, TaggedAddress] = {}
    for key, value in raw.items():
        sub = Fields(value, "ServiceAddress", known=SERVICE_ADDRESS)
        out[str(key)] = TaggedAddress(address=sub.string("Address"), port=sub.integer("Port"))
    return out


def parse_service_definition(body: Any, node: str) -> tuple[Service, list[CheckDef]]:
    f = Fields(body, "ServiceDefinition", aliases=SERVICE_ALIASES, known=SERVICE_DEFINITION)
    name = f.string("Name")
    weights = f.obj("Weights", "Weights", known=WEIGHTS)
    passing, warning = 1, 1
    if weights is not None:
        passing, warning = weights.integer("Passing"), weights.integer("Warning")
    address = f.string("Address")
    port = f.integer("Port")
    proxy = f.raw("Proxy")
    connect = f.raw("Connect")
    svc = Service(
        node=node,
        id=f.string("ID") or name,
        name=name,
        tags=f.str_list("Tags"),
        address=address,
        port=port,
        meta=f.str_map("Meta"),
        tagged_addresses=default_tagged_addresses(address, port, tagged_service_addresses(f)),
        weights_passing=passing,
        weights_warning=warning,
        enable_tag_override=f.boolean("EnableTagOverride"),
        kind=f.string("Kind"),
        socket_path=f.string("SocketPath"),
        proxy=proxy if isinstance(proxy, dict) and proxy else None,
        connect=connect if isinstance(connect, dict) and connect else None,
    )
    defs: list[CheckDef] = []
    single = f.obj("Check", "CheckType", aliases=CHECK_ALIASES, known=CHECK_TYPE)
    if single is not None:
        defs.append(parse_check_def(single))
    defs.extend(parse_check_def(c) for c in f.obj_list("Checks", "CheckType", aliases=CHECK_ALIASES, known=CHECK_TYPE))
    defs = [d for d in defs if not d.is_empty()]
    if not name:
        raise bad_request("Missing service name")
    if weights is not None:
        if passing < 1:
            raise bad_request("Invalid Weights: Passing must be greater than 0")
        if warning < 0:
            raise bad_request("Invalid Weights: Warning must be greater or equal than 0")
    problem = validate_meta(dict(svc.meta))
    if problem:
        raise bad_request(f"Invalid Service Meta: {problem}")
    if address and is_unspecified(address):
        raise bad_request("Invalid service address")
    for defn in defs:
        problem = defn.validate()
        if problem:
            raise bad_request(f"Invalid check: {problem}")
        if defn.status and defn.status not in STATUSES:
            raise bad_request("Status for checks must 'passing', 'warning', 'critical'")
    return svc, defs


# ---- handlers ------------------------------------------------------------------------------------------------


class AgentEndpoints:
    def __init__(self, core: Core, agent: LocalAgent) -> None:
        self.core = core
        self.agent = agent
        sample_service = agent_service_json(
            Service(
                node="",
                id="",
                name="",
                kind="x",
                socket_path="x",
                tagged_addresses={"x": TaggedAddress(address="", port=0)},
                proxy={"x": 1},
                connect={"x": 1},
            ),
            "",
            content_hash="",
        )
        self.service_schema = schema_from_sample(sample_service, maps=frozenset({"Meta", "TaggedAddresses"}))
        self.check_schema = schema_from_sample(
            check_json(Check(node="", check_id="", name="")), maps=frozenset({"Definition"})
        )

    def register(self, router: Router) -> None:
        get, put = ("GET",), ("PUT",)
        router.add("/v1/agent/self", get, self.self_)
        router.add("/v1/agent/members", get, self.members)
        router.add("/v1/agent/services", get, self.services)
        router.add("/v1/agent/checks", get, self.checks)
        router.add("/v1/agent/service/", get, self.service)
        router.add("/v1/agent/service/register", put, self.service_register)
        router.add("/v1/agent/service/deregister/", put, self.service_deregister)
        router.add("/v1/agent/service/maintenance/", put, self.service_maintenance)
        router.add("/v1/agent/maintenance", put, self.node_maintenance)
        router.add("/v1/agent/check/register", put, self.check_register)
        router.add("/v1/agent/check/deregister/", put, self.check_deregister)
        router.add("/v1/agent/check/pass/", put, self.check_pass)
        router.add("/v1/agent/check/warn/", put, self.check_warn)
        router.add("/v1/agent/check/fail/", put, self.check_fail)
        router.add("/v1/agent/check/update/", put, self.check_update)
        router.add("/v1/agent/health/service/id/", get, self.health_by_id)
        router.add("/v1/agent/health/service/name/", get, self.health_by_name)
        router.add("/v1/agent/token/", put, self.token)
        router.add("/v1/agent/reload", put, self.reload)

    # -- reads

    async def self_(self, call: Call) -> Reply:
        ident = self.core.identity
        member = self.member(wan=False)
        config = {
            "Datacenter": ident.datacenter,
            "PrimaryDatacenter": ident.datacenter,
            "NodeName": ident.node,
            "NodeID": ident.node_id,
            "Partition": "",
            "Revision": REVISION,
            "Server": True,
            "Version": VERSION,
            "BuildDate": "2025-10-01T00:00:00Z",
        }
        agent = self.agent
        ttl_count = sum(1 for lc in agent.checks.values() if lc.defn is not None and lc.defn.ttl_ns > 0)
        body = {
            "Config": config,
            "DebugConfig": {
                "DevMode": True,
                "Datacenter": ident.datacenter,
                "NodeName": ident.node,
                "NodeID": ident.node_id,
                "EnableScriptChecks": agent.enable_script_checks,
                "UseStreamingBackend": False,
                "CheckDeregisterIntervalMin": f"{agent.min_deregister_after:g}s",
                "CheckReapInterval": f"{agent.reap_interval:g}s",
                "ACLsEnabled": False,
                "ACLDefaultPolicy": "allow",
            },
            "Coord": coordinate(),
            "Member": member,
            "Stats": {
                "agent": {
                    "check_monitors": "0",
                    "check_ttls": str(ttl_count),
                    "checks": str(len(agent.checks)),
                    "services": str(len(agent.services)),
                },
                "build": {"prerelease": "", "revision": REVISION, "version": VERSION, "version_metadata": ""},
                "consul": {
                    "acl": "disabled",
                    "bootstrap": "false",
                    "known_datacenters": "1",
                    "leader": "true",
                    "leader_addr": LEADER_ADDR,
                    "server": "true",
                },
                "raft": {"state": "Leader", "num_peers": "0", "last_log_index": str(self.core.store.index)},
                "runtime": {"arch": "amd64", "os": "linux", "version": "go1.22.12"},
                "serf_lan": {"members": "1", "health_score": "0"},
                "serf_wan": {"members": "1", "health_score": "0"},
            },
            "Meta": {"consul-network-segment": "", "consul-version": VERSION},
            "xDS": {
                "SupportedProxies": {"envoy": ["1.33.0", "1.32.3", "1.31.5", "1.30.9"]},
                "Port": 8502,
                "Ports": {"Plaintext": 8502, "TLS": -1},
            },
        }
        return call.reply(body)

    def member(self, *, wan: bool) -> dict[str, Any]:
        ident = self.core.identity
        tags = {
            "acls": "0",
            "build": f"{VERSION}:{REVISION}",
            "dc": ident.datacenter,
            "ft_fs": "1",
            "ft_si": "1",
            "id": ident.node_id,
            "port": "8300",
            "raft_vsn": "3",
            "role": "consul",
            "segment": "",
            "vsn": "2",
            "vsn_max": "3",
            "vsn_min": "2",
            "wan_join_port": "8302",
        }
        if wan:
            tags.pop("segment")
        return {
            "Name": f"{ident.node}.{ident.datacenter}" if wan else ident.node,
            "Addr": ident.address,
            "Port": 8302 if wan else 8301,
            "Tags": tags,
            "Status": 1,
            "ProtocolMin": 1,
            "ProtocolMax": 5,
            "ProtocolCur": 2,
            "DelegateMin": 2,
            "DelegateMax": 5,
            "DelegateCur": 4,
        }

    async def members(self, call: Call) -> Reply:
        wan = call.has("wan") and call.param("wan") not in ("0", "false")
        return call.reply([self.member(wan=wan)])

    async def services(self, call: Call) -> Reply:
        expr = filter_of(call, self.service_schema)
        dc = self.core.datacenter
        items = sorted(self.agent.services.values(), key=lambda s: s.id)
        rendered = apply_filter(expr, items, lambda s: agent_service_json(s, dc))
        return call.reply({item["ID"]: item for item in rendered})

    async def checks(self, call: Call) -> Reply:
        expr = filter_of(call, self.check_schema)
        items = sorted((lc.record for lc in self.agent.checks.values()), key=lambda c: c.check_id)
        rendered = apply_filter(expr, items, lambda c: check_json(c, indexes=False))
        return call.reply({item["CheckID"]: item for item in rendered})

    async def service(self, call: Call) -> Reply:
        service_id = call.suffix
        opts = call.options()
        wanted = call.param("hash")
        loop_deadline: float | None = None
        while True:
            svc = self.agent.services.get(service_id)
            if svc is None:
                raise not_found(f"unknown service ID: {service_id}")
            current = self.agent.content_hash(svc)
            if not wanted or wanted != current or self.core.closing:
                break
            now = self.core.clock.monotonic()
            if loop_deadline is None:
                loop_deadline = now + query_timeout(opts.wait, self.core.rng)
            remaining = loop_deadline - now
            if remaining <= 0:
                break
            await wait_for_topics(self.core.store.watch, ("agentsvc:" + service_id,), remaining, self.core.clock)
        body = agent_service_json(svc, self.core.datacenter, content_hash=current)
        return call.reply(body, headers={"X-Consul-ContentHash": current})

    async def health_by_id(self, call: Call) -> Reply:
        service_id = call.suffix
        if not service_id:
            raise bad_request("Missing serviceID")
        as_text = _wants_text(call)
        svc = self.agent.services.get(service_id)
        if svc is None:
            reason = f"ServiceId {service_id} not found"
            if as_text:
                return text(404, reason)
            return call.reply({"AggregatedStatus": CRITICAL, "Service": None, "Checks": None}, status=404)
        status, info = self._service_health(svc)
        code = _health_code(status)
        if as_text:
            return text(code, status)
        return call.reply(info, status=code)

    async def health_by_name(self, call: Call) -> Reply:
        name = call.suffix
        if not name:
            raise bad_request("Missing service Name")
        as_text = _wants_text(call)
        results: list[dict[str, Any]] = []
        worst = PASSING
        order = {PASSING: 0, WARNING: 1, CRITICAL: 2, "maintenance": 3}
        for svc in sorted(self.agent.services.values(), key=lambda s: s.id):
            if svc.name != name:
                continue
            status, info = self._service_health(svc)
            results.append(info)
            if order[status] > order[worst]:
                worst = status
        if not results:
            reason = f"ServiceName {name} Not Found"
            if as_text:
                return text(404, reason)
            return call.reply([], status=404)
        code = _health_code(worst)
        if as_text:
            return text(code, worst)
        return call.reply(results, status=code)

    def _service_health(self, svc: Service) -> tuple[str, dict[str, Any]]:
        checks = self.agent.service_checks(svc.id)
        status = worst_status([c.status for c in checks], [c.check_id for c in checks])
        info = {
            "AggregatedStatus": status,
            "Service": agent_service_json(svc, self.core.datacenter),
            "Checks": [check_json(c, indexes=False) for c in checks],
        }
        return status, info

    # -- writes

    async def service_register(self, call: Call) -> Reply:
        replace_existing = False
        if call.has("replace-existing-checks"):
            raw = call.param("replace-existing-checks")
            replace_existing = raw == "" or parse_bool(raw) is True
        svc, defs = parse_service_definition(await call.json(), self.core.node)
        if not self.agent.enable_script_checks and any(d.args for d in defs):
            raise ApiError(500, SCRIPTS_DISABLED)
        self.agent.add_service(svc, defs, replace_existing=replace_existing)
        return empty()

    async def service_deregister(self, call: Call) -> Reply:
        service_id = call.suffix
        if not self.agent.remove_service(service_id):
            raise unknown_service(service_id)
        return empty()

    def _enable_param(self, call: Call) -> bool:
        if not call.has("enable"):
            raise bad_request("Missing value for enable")
        raw = call.param("enable")
        value = parse_bool(raw)
        if value is None:
            raise bad_request(f'Invalid value for enable: "{raw}"')
        return value

    async def service_maintenance(self, call: Call) -> Reply:
        service_id = call.suffix
        if not service_id:
            raise bad_request("Missing service ID")
        enable = self._enable_param(call)
        svc = self.agent.services.get(service_id)
        if svc is None:
            raise unknown_service(service_id)
        check_id = SERVICE_MAINT_PREFIX + service_id
        if enable:
            if check_id not in self.agent.checks:
                rec = Check(
                    node=self.core.node,
                    check_id=check_id,
                    name="Service Maintenance Mode",
                    status=CRITICAL,
                    notes=call.param("reason") or DEFAULT_SERVICE_REASON,
                    service_id=svc.id,
                    service_name=svc.name,
                )
                self.agent.add_check(rec, None)
        else:
            self.agent.remove_check(check_id)
        return empty()

    async def node_maintenance(self, call: Call) -> Reply:
        enable = self._enable_param(call)
        if enable:
            if NODE_MAINT_CHECK_ID not in self.agent.checks:
                rec = Check(
                    node=self.core.node,
                    check_id=NODE_MAINT_CHECK_ID,
                    name="Node Maintenance Mode",
                    status=CRITICAL,
                    notes=call.param("reason") or DEFAULT_NODE_REASON,
                )
                self.agent.add_check(rec, None)
        else:
            self.agent.remove_check(NODE_MAINT_CHECK_ID)
        return empty()

    async def check_register(self, call: Call) -> Reply:
        f = Fields(await call.json(), "CheckDefinition", aliases=CHECK_ALIASES, known=CHECK_DEFINITION)
        defn = parse_check_def(f, id_fields=("CheckID", "ID"))
        if not defn.name:
            raise bad_request("Missing check name")
        if defn.status and defn.status not in STATUSES:
            raise bad_request("Bad check status")
        problem = defn.validate()
        if problem:
            raise bad_request(f"Invalid check: {problem}")
        svc: Service | None = None
        if defn.service_id:
            svc = self.agent.services.get(defn.service_id)
            if svc is None:
                raise not_found(f'ServiceID "{defn.service_id}" does not exist')
        if defn.args and not self.agent.enable_script_checks:
            raise ApiError(500, SCRIPTS_DISABLED)
        rec = self.agent._check_record(defn, defn.check_id or defn.name, defn.name, svc)
        self.agent.add_check(rec, defn)
        return empty()

    async def check_deregister(self, call: Call) -> Reply:
        if not self.agent.remove_check(call.suffix):
            raise unknown_check(call.suffix)
        return empty()

    async def _ttl(self, call: Call, status: str) -> Reply:
        self.agent.ttl_update(call.suffix, status, call.param("note"))
        return empty()

    async def check_pass(self, call: Call) -> Reply:
        return await self._ttl(call, PASSING)

    async def check_warn(self, call: Call) -> Reply:
        return await self._ttl(call, WARNING)

    async def check_fail(self, call: Call) -> Reply:
        return await self._ttl(call, CRITICAL)

    async def check_update(self, call: Call) -> Reply:
        f = Fields(await call.json(), "checkUpdate", known=CHECK_UPDATE)
        status = f.string("Status")
        output = f.string("Output")
        if status not in STATUSES:
            raise bad_request(f"Invalid check status: '{status}'")
        self.agent.ttl_update(call.suffix, status, output)
        return empty()

    async def token(self, call: Call) -> Reply:
        raise ApiError(401, "ACL support disabled")

    async def reload(self, call: Call) -> Reply:
        return empty()


def _wants_text(call: Call) -> bool:
    if call.param("format") == "text":
        return True
    return call.request.headers.get("Accept", "").startswith("text/plain")


def _health_code(status: str) -> int:
    return {PASSING: 200, WARNING: 429}.get(status, 503)
