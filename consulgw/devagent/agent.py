"""The local agent's state: services and checks registered through ``/v1/agent/*``, their runners, the
critical-service reaper, alias checks and anti-entropy (consul-api.md sections 3 and 9).

Local state is synchronised into the catalog synchronously, before the HTTP response is sent, like Consul's
``syncChanges()`` inside the handler. The HTTP side lives in ``agent_api.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import structlog

from consulgw.devagent import checks as runners
from consulgw.devagent.checks import NS, CheckDef, truncate_output
from consulgw.devagent.core import Core
from consulgw.devagent.errors import ApiError, not_found
from consulgw.devagent.records import (
    CRITICAL,
    NODE_MAINT_CHECK_ID,
    PASSING,
    SERF_CHECK_ID,
    SERVICE_MAINT_PREFIX,
    WARNING,
    Check,
    Service,
)
from consulgw.devagent.render import agent_service_json
from consulgw.devagent.sidecar import SUFFIX as SIDECAR_SUFFIX

log = structlog.get_logger("consulgw.devagent")


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
        self.sidecars: set[str] = set()  # IDs of services registered as a Connect.SidecarService
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

    def check_record(self, defn: CheckDef, check_id: str, name: str, svc: Service | None) -> Check:
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

    def add_service(self, svc: Service, defs: list[CheckDef], *, replace_existing: bool, sidecar: bool = False) -> None:
        if sidecar:
            self.sidecars.add(svc.id)
        else:
            self.sidecars.discard(svc.id)
        pairs: list[tuple[Check, CheckDef | None]] = []
        for pos, defn in enumerate(defs, start=1):
            check_id = defn.check_id or (f"service:{svc.id}" + (f":{pos}" if len(defs) > 1 else ""))
            name = defn.name or f"Service '{svc.name}' check"
            pairs.append((self.check_record(defn, check_id, name, svc), defn))
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
        self.sidecars.discard(service_id)
        sidecar_id = service_id + SIDECAR_SUFFIX
        if sidecar_id in self.sidecars:  # a sidecar registered through this service goes with it, as in Consul
            self.remove_service(sidecar_id)
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
