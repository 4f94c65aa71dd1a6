"""Sessions (consul-api.md section 6.5): create/destroy/renew/info/list/node, TTL expiry (TTL x 2, as Consul),
invalidation when a bound check goes critical or disappears, and the lock-delay that follows an invalidation."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

from consulgw.devagent.blocking import Answer
from consulgw.devagent.core import Core, Tally
from consulgw.devagent.decode import SESSION, Fields
from consulgw.devagent.errors import bad_request, server_error
from consulgw.devagent.http import Call, Reply, Router, text
from consulgw.devagent.records import CRITICAL, SERF_CHECK_ID, Session
from consulgw.devagent.render import session_json
from consulgw.duration import format_go_duration, parse_go_duration

log = structlog.get_logger("consulgw.devagent")

NS = 1_000_000_000
TTL_MIN_NS = 10 * NS
TTL_MAX_NS = 86400 * NS
TTL_MULTIPLIER = 2
LOCK_DELAY_MIN_THRESHOLD = 1000


class Sessions:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.lock_delays: dict[str, float] = {}  # key -> monotonic time until which it cannot be locked
        self._timers: dict[str, asyncio.Task[None]] = {}

    async def stop(self) -> None:
        timers = list(self._timers.values())
        self._timers.clear()
        for task in timers:
            task.cancel()
        for task in timers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def lock_delayed(self, key: str) -> bool:
        until = self.lock_delays.get(key)
        if until is None:
            return False
        if until <= self.core.clock.monotonic():
            del self.lock_delays[key]
            return False
        return True

    def destroy(self, session_id: str) -> bool:
        sess = self.core.store.sessions.get(session_id)
        if sess is None:
            return False
        now = self.core.clock.monotonic()
        if sess.lock_delay_ns > 0:
            for entry in self.core.store.kv.values():
                if entry.session == session_id:
                    self.lock_delays[entry.key] = now + sess.lock_delay_ns / NS
        with self.core.store.write() as tx:
            tx.delete_session(session_id)
        timer = self._timers.pop(session_id, None)
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()
        return True

    def revalidate(self) -> None:
        """Invalidate sessions whose node is gone or whose bound checks are critical or missing."""
        store = self.core.store
        for sess in list(store.sessions.values()):
            bad = sess.node not in store.nodes
            for check_id in (*sess.node_checks, *sess.service_checks):
                chk = store.checks.get((sess.node, check_id))
                if chk is None or chk.status == CRITICAL:
                    bad = True
            if bad:
                log.info("session_invalidated", session=sess.id)
                self.destroy(sess.id)

    def _arm(self, sess: Session) -> None:
        if not sess.ttl:
            return
        old = self._timers.pop(sess.id, None)
        if old is not None:
            old.cancel()
        seconds = parse_go_duration(sess.ttl) / NS * TTL_MULTIPLIER
        self._timers[sess.id] = asyncio.create_task(self._expire(sess.id, seconds), name=f"session-ttl:{sess.id}")

    async def _expire(self, session_id: str, seconds: float) -> None:
        await self.core.clock.sleep(seconds)
        self._timers.pop(session_id, None)
        log.info("session_expired", session=session_id)
        self.destroy(session_id)

    # ---- handlers ---------------------------------------------------------------------------------------------

    def register(self, router: Router) -> None:
        router.add("/v1/session/create", ("PUT",), self.create)
        router.add("/v1/session/destroy/", ("PUT",), self.destroy_)
        router.add("/v1/session/renew/", ("PUT",), self.renew)
        router.add("/v1/session/info/", ("GET",), self.info)
        router.add("/v1/session/node/", ("GET",), self.node)
        router.add("/v1/session/list", ("GET",), self.list_)

    async def create(self, call: Call) -> Reply:
        raw = await call.body()
        self.core.check_dc(call)
        body = await call.json() if raw.strip() else {}
        f = Fields(body, "Session", known=SESSION)
        node = f.string("Node") or self.core.node
        lock_delay_ns = 15 * NS
        raw_delay = f.raw("LockDelay")
        if isinstance(raw_delay, str):
            lock_delay_ns = f.duration("LockDelay")
        elif isinstance(raw_delay, int | float) and not isinstance(raw_delay, bool):
            lock_delay_ns = int(raw_delay)
            if lock_delay_ns < LOCK_DELAY_MIN_THRESHOLD:
                lock_delay_ns *= NS
        behavior = f.string("Behavior") or "release"
        ttl = f.string("TTL")
        if f.raw("NodeChecks") is not None or f.raw("Checks") is not None:
            node_checks = f.str_list("NodeChecks") or f.str_list("Checks")
        else:
            node_checks = (SERF_CHECK_ID,)
        service_checks = tuple(c.string("ID") for c in f.obj_list("ServiceChecks", "ServiceCheck"))
        call.authz().require("session", "write", node)
        if behavior not in ("release", "delete"):
            raise server_error(f"Invalid Behavior setting '{behavior}'")
        if ttl:
            try:
                ttl_ns = parse_go_duration(ttl)
            except ValueError as exc:
                raise server_error(f"Session TTL '{ttl}' invalid: {exc}") from exc
            if ttl_ns != 0 and not TTL_MIN_NS <= ttl_ns <= TTL_MAX_NS:
                raise server_error(
                    f"Invalid Session TTL '{ttl_ns}', must be between "
                    f"[{format_go_duration(TTL_MIN_NS)}={format_go_duration(TTL_MAX_NS)}]"
                )
        store = self.core.store
        if node not in store.nodes:
            raise server_error("Missing node registration")
        for check_id in (*node_checks, *service_checks):
            chk = store.checks.get((node, check_id))
            if chk is None:
                raise server_error(f"Missing check '{check_id}' registration")
            if chk.status == CRITICAL:
                raise server_error(f"Check '{check_id}' is in {chk.status} state")
        sess = Session(
            id=self.core.new_uuid(),
            name=f.string("Name"),
            node=node,
            lock_delay_ns=lock_delay_ns,
            behavior=behavior,
            ttl=ttl,
            node_checks=tuple(node_checks),
            service_checks=service_checks,
        )
        with store.write() as tx:
            sess = tx.put_session(sess)
        self._arm(sess)
        return call.reply({"ID": sess.id})

    async def destroy_(self, call: Call) -> Reply:
        self.core.check_dc(call)
        if not call.suffix:
            raise bad_request("Missing session")
        authz = call.authz()
        existing = self.core.store.sessions.get(call.suffix)
        if existing is not None:
            authz.require("session", "write", existing.node)
        self.destroy(call.suffix)
        return call.reply(True)

    async def renew(self, call: Call) -> Reply:
        self.core.check_dc(call)
        session_id = call.suffix
        if not session_id:
            raise bad_request("Missing session")
        authz = call.authz()
        sess = self.core.store.sessions.get(session_id)
        if sess is None:
            return text(404, f"Session id '{session_id}' not found")
        authz.require("session", "write", sess.node)
        self._arm(sess)
        return call.reply([session_json(sess)])

    async def _read(self, call: Call, select: str, arg: str) -> Reply:
        opts = self.core.read_options(call)
        store = self.core.store
        authz = call.authz()
        tally = Tally()

        def render() -> list[dict[str, Any]]:
            found = [s for _, s in sorted(store.sessions.items())]
            if select == "id":
                found = [s for s in found if s.id == arg]
            elif select == "node":
                found = [s for s in found if s.node == arg]
            return [session_json(s) for s in found if tally.keep(authz.allows("session", "read", s.node))]

        def query() -> Answer:
            return Answer(index=store.max_index("sessions"), topics=("sessions",), render=render)

        answer = await self.core.blocking(opts, query)
        value = answer.value
        return call.reply_meta(value, answer.index, opts, filtered=tally.removed)

    async def info(self, call: Call) -> Reply:
        if not call.suffix:
            raise bad_request("Missing session")
        return await self._read(call, "id", call.suffix)

    async def node(self, call: Call) -> Reply:
        if not call.suffix:
            raise bad_request("Missing node name")
        return await self._read(call, "node", call.suffix)

    async def list_(self, call: Call) -> Reply:
        return await self._read(call, "all", "")
