"""The cache step (policy ``cache``): answer from a stored answer when RFC 9111 allows it, else forward and store.

Where it runs: after auth, the rate limit and the header rules (so a cached answer is only given to a caller the
policy lets through, is counted by the limit, and gets every response edit), and before a transform (so what is
stored is the transformed answer). What it does for a GET or HEAD:

1. **Key** (:mod:`consulgw.cache.keys`): slot from host, upstream path, query, ``key.headers``, ``Accept-Encoding``,
   the consumer (``key.per_consumer``) and the service's purge generation; variant from the stored ``Vary`` list.
   A *credentialed* request (``Authorization``, ``Cookie`` or a verified consumer) without a per-consumer key is only
   answered from, and only stores, answers that say ``public``, ``s-maxage`` or ``must-revalidate``.
2. **Fresh hit**: the stored answer is the step's own ``Answer`` (with ``Age`` and ``Cache-Status: consulgw; hit;
   ttl=N``); a matching ``If-None-Match`` / ``If-Modified-Since`` gets a 304. Nothing goes upstream.
3. **Stale**: within ``stale_while_revalidate`` it is served at once and one background task (owned by the
   ``CacheOwner``) revalidates it; otherwise the step calls next with ``If-None-Match`` / ``If-Modified-Since`` (an
   upstream edit, through the normal forwarder) and turns a 304 into the refreshed stored answer. An upstream error
   within ``stale_if_error`` gets the stale answer instead.
4. **Miss**: one fill per slot in this process (:mod:`consulgw.cache.flight`; the others wait and are answered from
   what it stored), and with Redis a short fill lock shared by every gateway. The answer streams to the client
   while it is stored (:class:`~consulgw.pipeline.stages.relay.RelayBody`), never buffering beyond
   ``max_body_bytes``: a larger body streams through uncached.

Other methods go straight on; a successful POST, PUT, PATCH or DELETE then invalidates the path (RFC 9111 section
4.4). Every answer that passes the step carries a ``Cache-Status`` field (RFC 9211).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from multidict import CIMultiDict

from consulgw.cache import control
from consulgw.cache.entry import StoredAnswer, refreshed_headers, stored_headers
from consulgw.cache.flight import Flights
from consulgw.cache.keys import Slot, slot_for, variant_for
from consulgw.cache.owner import CacheOwner
from consulgw.cache.store import Found
from consulgw.errors import CacheUnavailable
from consulgw.pipeline.answer import Answer
from consulgw.pipeline.chain import Next
from consulgw.pipeline.context import NO_EDITS, HeaderEdits, Inbound, RequestContext
from consulgw.pipeline.stages.deps import StageDeps
from consulgw.pipeline.stages.made import MadeRequest
from consulgw.pipeline.stages.relay import RelayBody
from consulgw.policy.model import CachePolicy
from consulgw.upstream.http1 import ExchangeError
from consulgw.upstream.spool import Spool

log = structlog.get_logger("consulgw.cache")

UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CONDITIONALS = ("If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since", "If-Range")
# What a 304 carries of the stored answer (RFC 9110 section 15.4.5), lower case.
NOT_MODIFIED_FIELDS = frozenset({"cache-control", "content-location", "date", "etag", "expires", "vary", "age"})
MAX_GRACE = 24 * 3600.0  # a stale answer with validators is kept this long at most, for conditional requests
STATUS = "Cache-Status"


def _cache_status(answer: Answer, value: str) -> Answer:
    answer.headers.add(STATUS, "consulgw; " + value)
    return answer


@dataclass(frozen=True, slots=True, kw_only=True)
class _Request:
    """What the step decided about one request before looking anything up."""

    slot: Slot
    flight: str
    directives: control.Directives
    shared_only: bool  # credentialed without a consumer key: public / s-maxage / must-revalidate answers only


class CacheStage:
    def __init__(self, *, policy: CachePolicy, owner: CacheOwner, deps: StageDeps, wait: float) -> None:
        self._policy = policy
        self._owner = owner
        self._service = deps.service
        self._clock = deps.clock
        self._wait = wait  # how long a request waits for another's fill (and a Redis fill lock lasts)
        self._store = owner.memory if policy.backend == "memory" else owner.redis
        metrics = deps.metrics
        self._hits = metrics.cache_hits.labels(deps.service)
        self._misses = metrics.cache_misses.labels(deps.service)
        self._stale = metrics.cache_stale
        self._bypasses = metrics.cache_bypasses
        self._stored_bytes = metrics.cache_stored_bytes.labels(deps.service, policy.backend)

    @classmethod
    def from_policy(cls, policy: CachePolicy, deps: StageDeps, *, wait: float = 5.0) -> CacheStage | None:
        """None (and a warning) when the process has no cache owner (a stage built outside a gateway)."""
        if deps.cache is None:
            log.warning("cache_disabled", service=deps.service, reason="no cache owner in this process")
            return None
        if policy.backend == "redis" and deps.cache.redis is None:
            log.warning(
                "cache_backend_missing",
                service=deps.service,
                on_backend_error=policy.on_backend_error,
                hint="backend redis needs a Redis URL (--redis or CONSULGW_REDIS_URL)",
            )
        return cls(policy=policy, owner=deps.cache, deps=deps, wait=max(0.1, min(wait, 5.0)))

    # -- the step --------------------------------------------------------------------------------------------------

    async def __call__(self, ctx: RequestContext, request: Inbound, call_next: Next) -> Answer:
        method = request.method
        if method not in self._policy.methods:
            answer = await call_next(ctx)
            if method in UNSAFE and answer.error is None and 200 <= answer.status < 400:
                await self._invalidate(ctx, request)
            self._bypass("method")
            return _cache_status(answer, "fwd=method")
        directives = control.directives(request.headers.getall("Cache-Control", []))
        if "Range" in request.headers:
            self._bypass("range")
            return _cache_status(await call_next(ctx), "fwd=bypass; detail=range")
        policy = self._policy
        consumer = ctx.consumer if policy.key.per_consumer else None
        credentialed = ctx.consumer is not None or "Authorization" in request.headers or "Cookie" in request.headers
        slot = slot_for(
            service=self._service,
            generation=self._owner.generation(self._service),
            host=request.host,
            target=ctx.upstream_target,
            query=policy.key.query,
            headers=request.headers,
            key_headers=policy.key.headers,
            consumer=consumer,
        )
        req = _Request(
            slot=slot,
            flight=f"{slot.service}\x00{slot.generation}\x00{slot.digest}",
            directives=directives,
            shared_only=credentialed and consumer is None,
        )
        found = await self._lookup(req, request)
        if found is None:  # the backend failed and the policy says bypass
            self._bypass("backend_error")
            return _cache_status(await call_next(ctx), "fwd=bypass; detail=backend-error")
        entry = self._usable(found.entry, req)
        if entry is None:
            return await self._miss(ctx, request, call_next, req, vary_miss=found.vary is not None)
        now = self._clock.time()
        validate = control.request_wants_validation(directives)
        ttl = entry.ttl(now)
        if ttl > 0 and not validate:
            return self._hit(ctx, request, entry, now)
        if not validate and not entry.must_revalidate and -ttl <= policy.stale_while_revalidate:
            self._refresh_in_background(ctx, request, call_next, req, entry)
            self._stale.labels(self._service, "while_revalidate").inc()
            return self._hit(ctx, request, entry, now, detail="stale-while-revalidate")
        return await self._revalidate(ctx, request, call_next, req, entry)

    # -- lookups ---------------------------------------------------------------------------------------------------

    async def _lookup(self, req: _Request, request: Inbound) -> Found | None:
        """The slot's entry; None when the backend failed and the policy says bypass (deny raises)."""
        store = self._store
        try:
            if store is None or (store.backend == "redis" and not self._owner.backend_usable()):
                raise CacheUnavailable("the cache backend is unavailable")  # no Redis, or known down a moment ago
            found = await store.lookup(req.slot, request.headers)
        except CacheUnavailable as exc:
            if store is not None and exc.__cause__ is not None:
                self._owner.backend_failed(self._service, exc)
            if self._policy.on_backend_error == "deny":
                self._bypass("backend_error")
                raise CacheUnavailable("the cache backend is unavailable", headers={"Retry-After": "1"}) from None
            return None
        if store is not None and store.backend == "redis":
            self._owner.backend_ok(self._service)
        return found

    def _usable(self, entry: StoredAnswer | None, req: _Request) -> StoredAnswer | None:
        if entry is None or (req.shared_only and not entry.shared):
            return None
        return entry

    def _hit(
        self,
        ctx: RequestContext,
        request: Inbound,
        entry: StoredAnswer,
        now: float,
        *,
        detail: str | None = None,
        collapsed: bool = False,
        status: str | None = None,
    ) -> Answer:
        self._hits.inc()
        headers: CIMultiDict[str] = CIMultiDict(entry.headers)
        headers["Age"] = str(control.whole_seconds(entry.age(now)))
        answer = Answer(
            status=entry.status, reason=entry.reason, headers=headers, body=entry.body, edits=ctx.response_edits
        )
        if entry.status == 200 and _not_modified(request, entry):
            answer.status, answer.reason, answer.body = 304, "", b""
            answer.headers = CIMultiDict((k, v) for k, v in headers.items() if k.lower() in NOT_MODIFIED_FIELDS)
        elif request.method == "HEAD":
            answer.headers["Content-Length"] = str(len(entry.body))
        ttl = control.whole_seconds(entry.ttl(now))
        value = status if status is not None else f"hit; ttl={ttl}"
        if detail is not None:
            value += f"; detail={detail}"
        if collapsed:
            value += "; collapsed"
        return _cache_status(answer, value)

    # -- misses and fills ------------------------------------------------------------------------------------------

    async def _miss(
        self, ctx: RequestContext, request: Inbound, call_next: Next, req: _Request, *, vary_miss: bool
    ) -> Answer:
        flights = self._owner.flights
        landed = flights.take_off(req.flight)
        if landed is not None:  # another request of this process is filling the slot: wait for it
            if await Flights.wait(landed, self._wait):
                entry = await self._recheck(req, request)
                if entry is not None:
                    return self._hit(ctx, request, entry, self._clock.time(), collapsed=True)
            return await self._fetch(ctx, request, call_next, req, lead=None, status="fwd=miss")
        land = self._lander(req.flight)
        try:
            token = await self._lock(req)
            if token is False:  # another gateway holds the fill lock: wait for what it stores
                entry = await self._poll(req, request)
                if entry is not None:
                    land()
                    return self._hit(ctx, request, entry, self._clock.time(), collapsed=True)
                token = None
            unlock = self._unlocker(req, token if isinstance(token, str) else None)
            status = "fwd=vary-miss" if vary_miss else "fwd=miss"
            return await self._fetch(ctx, request, call_next, req, lead=_Lead(land=land, unlock=unlock), status=status)
        except BaseException:
            land()
            raise

    async def _recheck(self, req: _Request, request: Inbound) -> StoredAnswer | None:
        store = self._store
        if store is None:
            return None
        try:
            found = await store.lookup(req.slot, request.headers)
        except CacheUnavailable:
            return None
        entry = self._usable(found.entry, req)
        if entry is None or entry.ttl(self._clock.time()) <= 0:
            return None
        return entry

    async def _lock(self, req: _Request) -> str | bool | None:
        """The Redis fill lock: its token, False when another gateway holds it, None when there is none to take."""
        redis = self._owner.redis
        if self._policy.backend != "redis" or redis is None:
            return None
        try:
            token = await redis.lock(req.slot, self._wait)
        except CacheUnavailable:
            return None
        return token if token is not None else False

    async def _poll(self, req: _Request, request: Inbound) -> StoredAnswer | None:
        deadline = self._clock.monotonic() + self._wait
        while self._clock.monotonic() < deadline:
            await self._clock.sleep(0.05)
            entry = await self._recheck(req, request)
            if entry is not None:
                return entry
        return None

    def _lander(self, flight: str) -> Callable[[], None]:
        done = False

        def land() -> None:
            nonlocal done
            if not done:
                done = True
                self._owner.flights.land(flight)

        return land

    def _unlocker(self, req: _Request, token: str | None) -> Callable[[], None]:
        redis = self._owner.redis
        if token is None or redis is None:
            return lambda: None

        def unlock() -> None:
            async def release() -> None:
                with contextlib.suppress(CacheUnavailable):  # else the lock expires by itself
                    await redis.unlock(req.slot, token)

            self._owner.spawn(release(), name="consulgw-cache-unlock")

        return unlock

    async def _fetch(
        self,
        ctx: RequestContext,
        request: Inbound,
        call_next: Next,
        req: _Request,
        *,
        lead: _Lead | None,
        status: str,
    ) -> Answer:
        """Forward (without the client's conditionals, so the answer is complete) and store what may be stored."""
        self._misses.inc()
        answer = await call_next(ctx.with_upstream(HeaderEdits(remove=CONDITIONALS)))
        self._fill(request, req, answer, lead)
        return _cache_status(answer, status)

    def _fill(self, request: Inbound, req: _Request, answer: Answer, lead: _Lead | None) -> None:
        """Store ``answer`` as it streams, if it may be stored; the lead (if any) lands when the fill ends."""
        lead = lead or _Lead()
        reason = self._refusal(request, req, answer)
        facts = None
        if reason is None:
            facts = _facts(answer.headers)
            keep = self._keep(facts)
            if keep <= 0:
                reason = "uncacheable"
        if reason is not None or facts is None:
            if reason is not None and reason != "uncacheable":
                self._bypass(reason)
            lead.finish()
            return
        policy = self._policy
        fill = _Fill(
            stage=self,
            slot=req.slot,
            variant=variant_for(facts.vary or (), request.headers),
            answer=answer,
            facts=facts,
            keep=keep,
            lead=lead,
        )
        body = answer.body
        if isinstance(body, bytes):
            if len(body) > policy.max_body_bytes:
                self._bypass("too_large")
                lead.finish()
                return
            fill.chunk(body)
            fill.end()
            return
        if answer.length is not None and answer.length > policy.max_body_bytes:
            self._bypass("too_large")
            lead.finish()
            return
        answer.body = RelayBody(body, observer=fill)

    def _refusal(self, request: Inbound, req: _Request, answer: Answer) -> str | None:
        if answer.error is not None or answer.tunnel is not None:
            return "uncacheable"
        if request.method != "GET":
            return "method"  # HEAD has no body to store; it is answered from GET's entries
        facts = _facts(answer.headers)
        return control.refusal(
            status=answer.status,
            statuses=self._policy.statuses,
            request=req.directives,
            response=facts,
            shared_only=req.shared_only,
            mode=self._policy.mode,
        )

    def _keep(self, facts: control.ResponseFacts) -> float:
        """Seconds to keep an answer: its freshness left, then the longest stale window (or, with validators, time
        to answer conditional revalidations)."""
        policy = self._policy
        life = control.lifetime(facts, mode=policy.mode, ttl=policy.ttl)
        windows = 0.0 if facts.must_revalidate else max(policy.stale_while_revalidate, policy.stale_if_error)
        grace = min(MAX_GRACE, max(life, policy.ttl, 60.0)) if facts.validators else 0.0
        return max(0.0, life - facts.age) + max(windows, grace)

    def _entry(
        self,
        answer: Answer,
        facts: control.ResponseFacts,
        body: bytes,
        headers: tuple[tuple[str, str], ...] | None = None,
    ) -> StoredAnswer:
        """``headers``: the answer's fields as they were when it arrived (before this step and the response phase
        added theirs); taken from the answer now when not given."""
        policy = self._policy
        return StoredAnswer(
            status=answer.status,
            reason=answer.reason,
            headers=headers if headers is not None else stored_headers(list(answer.headers.items())),
            body=body,
            stored_at=self._clock.time(),
            initial_age=facts.age,
            lifetime=control.lifetime(facts, mode=policy.mode, ttl=policy.ttl),
            shared=facts.shared,
            must_revalidate=facts.must_revalidate,
            vary=facts.vary or (),
        )

    async def _save(self, slot: Slot, variant: str, entry: StoredAnswer, keep: float) -> None:
        store = self._store
        if store is None:
            return
        try:
            await store.store(slot, variant, entry, keep)
        except CacheUnavailable as exc:
            self._owner.backend_failed(self._service, exc)
            return
        self._stored_bytes.inc(len(entry.body))

    # -- stale entries ---------------------------------------------------------------------------------------------

    async def _revalidate(
        self, ctx: RequestContext, request: Inbound, call_next: Next, req: _Request, entry: StoredAnswer
    ) -> Answer:
        flights = self._owner.flights
        landed = flights.take_off(req.flight)
        if landed is not None:  # a refresh of this slot is under way: use what it brings
            if await Flights.wait(landed, self._wait):
                fresh = await self._recheck(req, request)
                if fresh is not None:
                    return self._hit(ctx, request, fresh, self._clock.time(), collapsed=True)
            lead = None
        else:
            lead = _Lead(land=self._lander(req.flight))
        try:
            edits = HeaderEdits(remove=CONDITIONALS, set=_conditionals(entry))
            answer = await call_next(ctx.with_upstream(edits))
        except BaseException:
            if lead is not None:
                lead.finish()
            raise
        now = self._clock.time()
        if answer.status == 304 and answer.error is None:
            answer.discard()
            refreshed = self._refreshed(entry, answer, now)
            if refreshed is not None:
                await self._save(
                    req.slot, variant_for(refreshed.vary, request.headers), refreshed, self._keep_refreshed(refreshed)
                )
            if lead is not None:
                lead.finish()
            self._stale.labels(self._service, "revalidated").inc()
            current = refreshed if refreshed is not None else entry
            ttl = control.whole_seconds(current.ttl(now))
            return self._hit(ctx, request, current, now, status=f"fwd=stale; fwd-status=304; ttl={ttl}")
        failed = answer.error is not None or answer.status >= 500
        if failed and not entry.must_revalidate and -entry.ttl(now) <= self._policy.stale_if_error:
            answer.discard()
            if lead is not None:
                lead.finish()
            self._stale.labels(self._service, "if_error").inc()
            ttl = control.whole_seconds(entry.ttl(now))
            status = f"fwd=stale; fwd-status={answer.status}; ttl={ttl}"
            return self._hit(ctx, request, entry, now, status=status, detail="stale-if-error")
        self._misses.inc()
        self._fill(request, req, answer, lead)
        return _cache_status(answer, f"fwd=stale; fwd-status={answer.status}")

    def _refreshed(self, entry: StoredAnswer, answer: Answer, now: float) -> StoredAnswer | None:
        headers = refreshed_headers(entry.headers, list(answer.headers.items()))
        merged: CIMultiDict[str] = CIMultiDict(headers)
        facts = _facts(merged)
        if "no-store" in facts.cache_control or "private" in facts.cache_control or facts.vary is None:
            return None
        policy = self._policy
        return StoredAnswer(
            status=entry.status,
            reason=entry.reason,
            headers=headers,
            body=entry.body,
            stored_at=now,
            initial_age=_facts(answer.headers).age,
            lifetime=control.lifetime(facts, mode=policy.mode, ttl=policy.ttl),
            shared=facts.shared,
            must_revalidate=facts.must_revalidate,
            vary=facts.vary,
        )

    def _keep_refreshed(self, entry: StoredAnswer) -> float:
        return self._keep(_facts(CIMultiDict(entry.headers)))

    def _refresh_in_background(
        self, ctx: RequestContext, request: Inbound, call_next: Next, req: _Request, entry: StoredAnswer
    ) -> None:
        flights = self._owner.flights
        if flights.flying(req.flight):
            return
        flights.take_off(req.flight)
        land = self._lander(req.flight)
        copy = MadeRequest.copy_of(request)
        background = ctx.replace(request=copy, response_edits=NO_EDITS).with_upstream(
            HeaderEdits(remove=CONDITIONALS, set=_conditionals(entry))
        )

        async def refresh() -> None:
            try:
                answer = await call_next(background)
                if answer.status == 304 and answer.error is None:
                    answer.discard()
                    refreshed = self._refreshed(entry, answer, self._clock.time())
                    if refreshed is not None:
                        variant = variant_for(refreshed.vary, copy.headers)
                        await self._save(req.slot, variant, refreshed, self._keep_refreshed(refreshed))
                    return
                body = await _read_whole(answer, self._policy.max_body_bytes)
                if body is None or self._refusal(copy, req, answer) is not None:
                    return
                facts = _facts(answer.headers)
                keep = self._keep(facts)
                if keep > 0:
                    fresh = self._entry(answer, facts, body)
                    await self._save(req.slot, variant_for(fresh.vary, copy.headers), fresh, keep)
            finally:
                land()

        if not self._owner.spawn(refresh(), name=f"consulgw-cache-refresh-{self._service}"):
            land()

    # -- invalidation and bookkeeping ------------------------------------------------------------------------------

    async def _invalidate(self, ctx: RequestContext, request: Inbound) -> None:
        store = self._store
        if store is None:
            return
        slot = slot_for(
            service=self._service,
            generation=self._owner.generation(self._service),
            host=request.host,
            target=ctx.upstream_target,
            query="none",
            headers=request.headers,
            key_headers=(),
            consumer=None,
        )
        try:
            await store.invalidate(slot)
        except CacheUnavailable as exc:
            self._owner.backend_failed(self._service, exc)

    def _bypass(self, reason: str) -> None:
        self._bypasses.labels(self._service, reason).inc()


@dataclass(slots=True)
class _Lead:
    """What the leader of a fill owes the others: landing its flight and releasing its Redis lock, once."""

    land: Callable[[], None] = lambda: None
    unlock: Callable[[], None] = lambda: None
    done: bool = False

    def finish(self) -> None:
        if not self.done:
            self.done = True
            self.unlock()
            self.land()


class _Fill:
    """Collects a streamed answer up to ``max_body_bytes`` and stores it when it ends (a ``BodyObserver``)."""

    __slots__ = ("_answer", "_chunks", "_facts", "_headers", "_keep", "_lead", "_size", "_slot", "_stage", "_variant")

    def __init__(
        self,
        *,
        stage: CacheStage,
        slot: Slot,
        variant: str,
        answer: Answer,
        facts: control.ResponseFacts,
        keep: float,
        lead: _Lead,
    ) -> None:
        self._stage = stage
        self._slot = slot
        self._variant = variant
        self._answer = answer
        self._headers = stored_headers(list(answer.headers.items()))  # now: later the answer gets Cache-Status etc.
        self._facts = facts
        self._keep = keep
        self._lead = lead
        self._chunks: list[bytes] | None = []
        self._size = 0

    def chunk(self, data: bytes) -> None:
        if self._chunks is None:
            return
        self._size += len(data)
        if self._size > self._stage._policy.max_body_bytes:
            self._chunks = None  # too large: the rest streams through, nothing is kept
            self._stage._bypass("too_large")
            self._lead.finish()
            return
        self._chunks.append(data)

    def end(self) -> None:
        if self._chunks is None:
            return
        body = b"".join(self._chunks)
        self._chunks = None
        stage = self._stage
        entry = stage._entry(self._answer, self._facts, body, self._headers)
        lead = self._lead

        async def save() -> None:
            try:
                await stage._save(self._slot, self._variant, entry, self._keep)
            finally:
                lead.finish()

        if not stage._owner.spawn(save(), name="consulgw-cache-store"):
            lead.finish()

    def abort(self) -> None:
        self._chunks = None
        self._lead.finish()


def _facts(headers: CIMultiDict[str]) -> control.ResponseFacts:
    return control.ResponseFacts.of(headers, headers.getall("Cache-Control", []), headers.getall("Vary", []))


def _conditionals(entry: StoredAnswer) -> tuple[tuple[str, str], ...]:
    found: list[tuple[str, str]] = []
    etag = entry.header("ETag")
    if etag is not None:
        found.append(("If-None-Match", etag))
    modified = entry.header("Last-Modified")
    if modified is not None:
        found.append(("If-Modified-Since", modified))
    return tuple(found)


def _not_modified(request: Inbound, entry: StoredAnswer) -> bool:
    headers = request.headers
    if "If-None-Match" in headers:
        return control.etag_matches(headers["If-None-Match"], entry.header("ETag"))
    if "If-Modified-Since" in headers:
        return control.not_modified_since(headers["If-Modified-Since"], entry.header("Last-Modified"))
    return False


async def _read_whole(answer: Answer, limit: int) -> bytes | None:
    """The whole body of an answer made in the background, or None when it is larger than ``limit``."""
    body = answer.body
    if isinstance(body, bytes):
        return body if len(body) <= limit else None
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in body:
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
    except ExchangeError:  # the upstream broke off the body: nothing to store
        return None
    finally:
        body.close()
    return b"".join(chunks)


__all__ = ["CacheStage", "Spool"]
