"""The hash balancer's key from the request (``"lb": {"type": "hash", "key": "header:X-User-ID"}``).

The step only fills ``Target.key``; the pool's rendezvous hash uses it in place of the client IP, and a request
without the named consumer, header or cookie keeps the client IP as its key.
"""

from __future__ import annotations

from dataclasses import dataclass

from consulgw.model.balancing import HashKey
from consulgw.pipeline.answer import Answer
from consulgw.pipeline.chain import Next
from consulgw.pipeline.context import Inbound, RequestContext
from consulgw.pipeline.target import Target
from consulgw.traffic.keys import request_key
from consulgw.traffic.subsets import current_target
from consulgw.upstream.pool import UpstreamPools


@dataclass(frozen=True, slots=True)
class HashKeyStep:
    key: HashKey
    pools: UpstreamPools

    async def __call__(self, ctx: RequestContext, request: Inbound, call_next: Next) -> Answer:
        value = request_key(self.key, ctx, request)
        if value is None:
            return await call_next(ctx)
        target = current_target(ctx, self.pools)
        keyed = Target(pool=target.pool, prefer=target.prefer, label=target.label, key=value)
        return await call_next(ctx.replace(target=keyed))
