"""Multi-datacenter failover (the ``failover`` policy): which datacenter serves a service, decided per request.

The rule is one pure function, :func:`decide`, of the policy, the previous :class:`Serving` state, how many routable
instances (weight > 0) each datacenter has, and the time:

- while the local datacenter has at least ``min_healthy`` routable instances, it serves;
- otherwise the first listed datacenter that has at least ``min_healthy`` serves (none has: whoever served stays);
- once failed over, traffic comes back only after the local datacenter has had ``min_healthy`` for
  ``failback_after`` without interruption (a dip restarts the wait). While waiting, the remote datacenters are
  re-judged in list order, and if none of them has enough any more, the healthy local one takes over at once.

:class:`FailoverBoard` keeps each service's state (runtime state, outside the immutable view, like the breakers),
with an injected clock, and reports switches (log line and ``consulgw_failover_active``). :class:`FailoverStep` is
the pipeline step: when a remote datacenter serves, it replaces the request's target pool with that datacenter's
pool (``ServicePool.remote``); ``X-Gateway-Datacenter`` names the serving datacenter when ``response_header`` is on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

import structlog

from consulgw.clock import Clock
from consulgw.model.snapshot import Instance, ServiceSnapshot
from consulgw.pipeline.answer import Answer
from consulgw.pipeline.chain import Next
from consulgw.pipeline.context import HeaderEdits, Inbound, RequestContext
from consulgw.pipeline.target import Target
from consulgw.policy.model import FailoverPolicy
from consulgw.upstream.pool import ServicePool, UpstreamPools

DATACENTER_HEADER = "X-Gateway-Datacenter"
LOCAL = ""  # the local datacenter, in Serving.datacenter


@dataclass(frozen=True, slots=True)
class Serving:
    """Who serves a service: ``datacenter`` ("" = the local one) and, while failed over, since when the local one
    has been healthy again (None: it is not)."""

    datacenter: str = LOCAL
    local_healthy_since: float | None = None


def decide(policy: FailoverPolicy, previous: Serving, local: int, remote: Mapping[str, int], now: float) -> Serving:
    """The next state (see the module docstring). ``local``/``remote``: routable instances per datacenter."""
    enough = policy.min_healthy
    local_ok = local >= enough
    first_remote = next((dc for dc in policy.datacenters if remote.get(dc, 0) >= enough), None)
    if previous.datacenter == LOCAL:
        if local_ok or first_remote is None:
            return previous if previous.local_healthy_since is None else Serving()
        return Serving(first_remote)
    if not local_ok:  # failed over and staying: the best remote datacenter now, else the one we had (if still listed)
        if first_remote is not None:
            return Serving(first_remote)
        return Serving(previous.datacenter if previous.datacenter in policy.datacenters else LOCAL)
    if first_remote is None:
        return Serving()  # no remote datacenter can serve, the local one can: come back now
    since = previous.local_healthy_since if previous.local_healthy_since is not None else now
    if now - since >= policy.failback_after:
        return Serving()
    return Serving(first_remote, since)


def routable(pool: ServicePool | None) -> int:
    return len(pool.members) if pool is not None else 0


class FailoverBoard:
    """Every failed-over service's Serving state; ``serving`` is called per request and by the view on changes."""

    def __init__(self, clock: Clock, *, on_switch: Callable[[str, str, str], None] | None = None) -> None:
        self._clock = clock
        self._states: dict[str, Serving] = {}
        self._on_switch = on_switch  # (service, from datacenter, to datacenter); "" = local
        self._log = structlog.get_logger("consulgw.traffic")

    def serving(self, service: str, policy: FailoverPolicy, pool: ServicePool | None) -> str:
        """The datacenter that serves ``service`` now ("" = local), updating its state from the pool's counts."""
        previous = self._states.get(service)
        if previous is None:  # first judged: report who serves (the local datacenter) before any switch
            previous = self._states[service] = Serving()
            if self._on_switch is not None:
                self._on_switch(service, LOCAL, LOCAL)
        remote = {dc: routable(pool.remote(dc)) for dc in policy.datacenters} if pool is not None else {}
        state = decide(policy, previous, routable(pool), remote, self._clock.monotonic())
        if state != previous:
            self._states[service] = state
            if state.datacenter != previous.datacenter:
                self._switched(service, previous.datacenter, state.datacenter, routable(pool), remote)
        return state.datacenter

    def state(self, service: str) -> Serving:
        return self._states.get(service, Serving())

    def forget(self, service: str) -> None:
        """The service left the view, or its policy has no failover any more: it is served locally again."""
        previous = self._states.pop(service, None)
        if previous is not None and previous.datacenter != LOCAL and self._on_switch is not None:
            self._on_switch(service, previous.datacenter, LOCAL)

    def _switched(self, service: str, old: str, new: str, local: int, remote: Mapping[str, int]) -> None:
        event = "failover_failback" if new == LOCAL else "failover_switched"
        self._log.warning(
            event, service=service, from_datacenter=old or "local", to_datacenter=new or "local",
            local_routable=local, remote_routable=dict(remote),
        )  # fmt: skip
        if self._on_switch is not None:
            self._on_switch(service, old, new)


class FailoverStep:
    """Built once per (service, policy): sends the request to the serving datacenter's pool."""

    def __init__(self, *, service: str, policy: FailoverPolicy, pools: UpstreamPools, board: FailoverBoard) -> None:
        self._service = service
        self._policy = policy
        self._pools = pools
        self._board = board

    async def __call__(self, ctx: RequestContext, request: Inbound, call_next: Next) -> Answer:
        pool = self._pools.pool(self._service)
        dc = self._board.serving(self._service, self._policy, pool)
        if dc == LOCAL or pool is None:
            if not self._policy.response_header:
                return await call_next(ctx)
            name = (pool.datacenter if pool is not None else "") or "local"
            return await call_next(ctx.replace(response_edits=ctx.response_edits.merged(_header(name))))
        remote = pool.remote(dc)
        if remote is None:  # (the board only picks a datacenter whose pool it has counted: never None)
            return await call_next(ctx)
        previous = ctx.target
        target = Target(
            pool=remote,
            label=dc,
            prefer=previous.prefer if previous is not None else None,
            key=previous.key if previous is not None else None,
        )
        if not self._policy.response_header:
            return await call_next(ctx.replace(target=target))
        return await call_next(ctx.replace(target=target, response_edits=ctx.response_edits.merged(_header(dc))))


def _header(dc: str) -> HeaderEdits:
    return HeaderEdits(set=((DATACENTER_HEADER, dc),))


def remote_instances(
    service: str, policy: FailoverPolicy | None, remote: Mapping[tuple[str, str], ServiceSnapshot]
) -> Mapping[str, tuple[Instance, ...]]:
    """The instances of ``service`` in the policy's datacenters that have answered, as the pools take them: ids
    prefixed with the datacenter (``dc2:node/id``: unique next to the local ones), addressed as ``address`` says."""
    if policy is None:
        return MappingProxyType({})
    found: dict[str, tuple[Instance, ...]] = {}
    for dc in policy.datacenters:
        snapshot = remote.get((service, dc))
        if snapshot is not None:
            found[dc] = tuple(_as_remote(inst, dc, policy.address) for inst in snapshot.instances)
    return MappingProxyType(found)


def _as_remote(inst: Instance, dc: str, address: str) -> Instance:
    reached = inst.reached_over_wan() if address == "wan" else inst
    return replace(reached, id=f"{dc}:{inst.id}", datacenter=inst.datacenter or dc)
