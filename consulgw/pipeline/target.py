"""Target selection: where a request may go, decided as its own step, right before the transport.

The step puts a :class:`Target` in the context: the pool to pick from (today the service's whole pool) and an
optional preferred instance. Traffic features (subsets, splits, sticky sessions, failover) are further steps that
replace the pool or set the preference; the forwarder only ever picks from ``ctx.target``, once per attempt.
"""

from __future__ import annotations

from dataclasses import dataclass

from consulgw.errors import NoHealthyUpstream
from consulgw.pipeline.answer import Answer
from consulgw.pipeline.chain import Next
from consulgw.pipeline.context import Inbound, RequestContext
from consulgw.upstream.pool import ServicePool, UpstreamPools


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    pool: ServicePool
    # An instance id to try first while the pool can pin it (a member, or a healthy instance drained to weight 0:
    # sticky sessions with keep_draining) and its breaker lets it; then the balancer picks as usual.
    prefer: str | None = None
    label: str | None = None  # what chose this pool (e.g. a subset name), for headers and logs
    key: str | None = None  # the hash balancer's key for this request (None: the client IP)


@dataclass(frozen=True, slots=True)
class SelectTarget:
    """The default selection: the service's current pool (which changes with Consul, so it is read per request)."""

    pools: UpstreamPools

    async def __call__(self, ctx: RequestContext, request: Inbound, call_next: Next) -> Answer:
        if ctx.target is not None:
            return await call_next(ctx)
        pool = self.pools.pool(ctx.service)
        if pool is None:
            raise NoHealthyUpstream(f"no healthy instance of {ctx.service}")
        return await call_next(ctx.replace(target=Target(pool=pool)))
