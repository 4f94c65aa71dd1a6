"""Subsets: which instances a subset holds (for the view, which builds their pools) and which pool a subset name
stands for at request time (for the split, sticky and mirror steps).

A selector subset (``meta``/``tags``) has a pool of its own inside the service's pools, rebuilt by the view with the
service's member list (``UpstreamPools.update(..., subsets=...)``). A ``service`` subset is that other service's
pool as it is: its health, ``Weights``, balancer and breakers; the gateway watches that service even when it has no
route of its own (``ServicePolicy.referenced_services``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from consulgw.errors import NoHealthyUpstream
from consulgw.model.snapshot import Instance
from consulgw.pipeline.context import RequestContext
from consulgw.pipeline.target import Target
from consulgw.policy.model import ServicePolicy
from consulgw.upstream.pool import ServicePool, UpstreamPools


def subset_instances(policy: ServicePolicy, instances: Sequence[Instance]) -> dict[str, tuple[Instance, ...]]:
    """Each selector subset's instances (healthy or not: the pools judge health), by subset name."""
    return {
        subset.name: tuple(i for i in instances if subset.selects(i))
        for subset in policy.subsets
        if subset.service is None
    }


class SubsetPools:
    """Subset name -> its pool right now, for one service and policy (read per request: pools change with Consul)."""

    __slots__ = ("_pools", "_service", "_services")

    def __init__(self, service: str, policy: ServicePolicy, pools: UpstreamPools) -> None:
        self._service = service
        self._pools = pools
        self._services: Mapping[str, str] = {s.name: s.service for s in policy.subsets if s.service is not None}

    def pool(self, name: str) -> ServicePool | None:
        other = self._services.get(name)
        if other is not None:
            return self._pools.pool(other)
        return self._pools.subset(self._service, name)


def usable(pool: ServicePool | None) -> bool:
    """A pool with at least one member (an instance that is passing or warning and has weight > 0)."""
    return pool is not None and len(pool) > 0


def current_target(ctx: RequestContext, pools: UpstreamPools) -> Target:
    """The target an earlier step chose, or the service's whole pool."""
    if ctx.target is not None:
        return ctx.target
    pool = pools.pool(ctx.service)
    if pool is None:
        raise NoHealthyUpstream(f"no healthy instance of {ctx.service}")
    return Target(pool=pool)
