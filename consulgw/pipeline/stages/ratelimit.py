"""The rate-limit stage: one GCRA decision per request (``consulgw.ratelimit``), IETF ``RateLimit-*`` headers.

Key (``RateLimitPolicy.key``):
- ``ip``: ``ctx.client_ip`` (already resolved by the proxy with the trusted-proxy rules).
- ``consumer``: ``ctx.consumer`` (set by the auth stage, which must run first). A request without a verified
  consumer (route without auth, or auth that let it through anonymously) falls back to its client IP, so anonymous
  traffic is still limited, per address. A consumer with its own ``rate_limit`` gets that requests/per instead of
  the service's (the service's ``burst`` still applies). A JWT subject equal to a consumer name gets that
  consumer's limit.
- ``header:<name>``: that header's value (the first one, when repeated); requests without it fall back to the IP.

Headers on every response of a limited route: ``RateLimit-Limit`` (requests admitted at once from a full bucket,
``requests + burst``), ``RateLimit-Remaining``, ``RateLimit-Reset`` (whole seconds until the bucket is full again),
and on 429 also ``Retry-After`` (whole seconds until one more request would be admitted). With the local backend and
several workers, they describe this worker's share (see ``consulgw.ratelimit.local``).

Backend errors (Redis down, slow beyond ``StageDeps.redis_timeout``, or not configured at all): ``on_backend_error:
allow`` admits the request with only ``RateLimit-Limit`` (remaining and reset are unknown, and we do not invent
them); ``deny`` answers 503 ``RateLimitBackendUnavailable`` with ``Retry-After: 1``. Both are counted in
``consulgw_rate_limit_backend_errors_total{outcome}``; logging is once per outage (``consulgw.ratelimit.outage``).
"""

from __future__ import annotations

import structlog

from consulgw.errors import PolicyError, RateLimitBackendUnavailable, RateLimited
from consulgw.pipeline.answer import Answer
from consulgw.pipeline.chain import Next
from consulgw.pipeline.context import HeaderEdits, Inbound, RequestContext
from consulgw.pipeline.stages.deps import StageDeps
from consulgw.policy.model import RateLimitPolicy
from consulgw.ratelimit.gcra import Decision, Quota
from consulgw.ratelimit.keys import limit_key
from consulgw.ratelimit.redisstore import RedisLimiter

log = structlog.get_logger("consulgw.ratelimit")


class RateLimitStage:
    def __init__(self, *, policy: RateLimitPolicy, deps: StageDeps, redis: RedisLimiter | None) -> None:
        self._policy = policy
        self._deps = deps
        self._redis = redis
        self._quota = Quota.of(requests=policy.requests, per=policy.per, burst=policy.burst)
        self._header = policy.key.partition(":")[2] if policy.key.startswith("header:") else None
        self._header_kind = f"header.{self._header.lower()}" if self._header else ""

    @classmethod
    def from_policy(cls, policy: RateLimitPolicy, deps: StageDeps) -> RateLimitStage:
        if policy.requests < 1 or not policy.per > 0 or policy.burst < 0:
            raise PolicyError(
                f"rate_limit: requests must be >= 1, per > 0 and burst >= 0, got {policy.requests!r}, "
                f"{policy.per!r}, {policy.burst!r}"
            )
        if policy.key not in ("ip", "consumer") and not (policy.key.startswith("header:") and policy.key[7:]):
            raise PolicyError(f"rate_limit.key: expected ip, consumer or header:<name>, got {policy.key!r}")
        redis: RedisLimiter | None = None
        if policy.backend == "redis":
            if deps.redis is None:
                log.warning(
                    "rate_limit_backend_missing",
                    service=deps.service,
                    on_backend_error=policy.on_backend_error,
                    hint="backend redis needs a Redis URL (--redis or CONSULGW_REDIS_URL)",
                )
            else:
                redis = deps.redis_limiter or RedisLimiter(deps.redis, timeout=deps.redis_timeout, tracer=deps.tracer)
        return cls(policy=policy, deps=deps, redis=redis)

    def _key(self, ctx: RequestContext, request: Inbound) -> tuple[str, str]:
        if self._policy.key == "consumer" and ctx.consumer:
            return "consumer", ctx.consumer
        if self._header is not None:
            value = request.headers.get(self._header)
            if value:
                return self._header_kind, value
        return "ip", ctx.client_ip

    def _quota_for(self, kind: str, value: str) -> Quota:
        if kind == "consumer":
            consumer = self._deps.consumers().consumers.get(value)
            if consumer is not None and consumer.rate_limit is not None:
                own = consumer.rate_limit
                return Quota.of(requests=own.requests, per=own.per, burst=self._policy.burst)
        return self._quota

    async def __call__(self, ctx: RequestContext, request: Inbound, call_next: Next) -> Answer:
        deps = self._deps
        kind, value = self._key(ctx, request)
        quota = self._quota_for(kind, value)
        key = limit_key(deps.service, kind, value, quota=f"{quota.capacity}c{quota.interval_us}us")
        decision: Decision | None
        if self._policy.backend == "local":
            decision = deps.local_limits.acquire(key, quota.for_worker(deps.worker_index, deps.worker_count))
        else:
            decision = await self._shared(key, quota)
        if decision is None:  # backend unavailable, policy says allow
            return await call_next(ctx.with_response(HeaderEdits(set=(("RateLimit-Limit", str(quota.capacity)),))))
        if not decision.allowed:
            deps.metrics.rate_limited.labels(deps.service).inc()
            raise RateLimited("rate limit exceeded", headers=dict(decision.headers()))
        return await call_next(ctx.with_response(HeaderEdits(set=decision.headers())))

    async def _shared(self, key: str, quota: Quota) -> Decision | None:
        deps = self._deps
        outage = deps.redis_outage
        if self._redis is not None and outage.should_try(deps.clock):
            try:
                decision = await self._redis.acquire(key, quota)
            except RateLimitBackendUnavailable as exc:
                cause = exc.__cause__
                error = f"{type(cause).__name__}: {cause}" if cause is not None else exc.message
                outage.failed(deps.clock, service=deps.service, error=error)
            else:
                outage.succeeded(deps.clock, service=deps.service)
                return decision
        if self._policy.on_backend_error == "allow":
            deps.metrics.rate_limit_backend_errors.labels(deps.service, "allowed").inc()
            return None
        deps.metrics.rate_limit_backend_errors.labels(deps.service, "denied").inc()
        raise RateLimitBackendUnavailable(
            "the rate limit backend is unavailable",
            headers={"Retry-After": "1", "RateLimit-Limit": str(quota.capacity)},
        )
