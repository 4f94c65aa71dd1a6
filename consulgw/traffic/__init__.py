"""Traffic management from the KV policy (issue 9): subsets, splits, sticky sessions, hash keys, mirroring.

Each feature is one step of the service's pipeline, placed after the policy stages (so a split or a hash by consumer
knows the verified consumer) and before target selection, in this order::

    mirror -> split -> sticky -> failover -> hash key -> (target selection) -> forwarder

The mirror step is outermost so it sees the primary's answer whatever the steps after it decide; the split chooses
the subset (``Target.pool`` and ``label``); sticky pins an instance inside it (``Target.prefer``); the hash key
feeds the hash balancer (``Target.key``). Slow start is no step: the pools ramp weights at pick time.

The failover step replaces the pool the way a subset does: while another datacenter serves the service, it puts
that datacenter's pool in ``Target.pool`` (label: the datacenter), keeping sticky's preference (an instance of the
local datacenter is simply not pinnable there, so the balancer picks) and the hash key. Subsets and splits choose
among the local instances; a failed-over service is served by the remote datacenter's whole pool.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from consulgw.metrics import GatewayMetrics
from consulgw.pipeline.chain import Stage
from consulgw.policy.model import ServicePolicy
from consulgw.traffic.failover import FailoverBoard, FailoverStep
from consulgw.traffic.hashkey import HashKeyStep
from consulgw.traffic.mirror import MirrorDispatcher, MirrorStep, SendContinue
from consulgw.traffic.split import SplitStep
from consulgw.traffic.sticky import StickyStep
from consulgw.traffic.subsets import SubsetPools
from consulgw.upstream.breaker import BreakerBoard
from consulgw.upstream.pool import UpstreamPools

__all__ = ["MirrorDispatcher", "TrafficDeps", "ephemeral_key_warning", "traffic_steps"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TrafficDeps:
    """Process-wide collaborators of the traffic steps, made once by the Gateway."""

    pools: UpstreamPools
    breakers: BreakerBoard
    metrics: GatewayMetrics
    rng: random.Random
    mirrors: MirrorDispatcher
    send_continue: SendContinue
    sticky_key: bytes  # HMAC key of the sticky cookies
    failover: FailoverBoard  # which datacenter serves each failed-over service (runtime state)
    # Called whenever a sticky step is built (the Gateway warns once when the key was not configured).
    sticky_key_used: Callable[[], None] = lambda: None


def traffic_steps(service: str, policy: ServicePolicy, deps: TrafficDeps) -> tuple[Stage, ...]:
    """The traffic steps a service's policy asks for, in pipeline order (none for a policy without them)."""
    steps: list[Stage] = []
    subsets = SubsetPools(service, policy, deps.pools)
    if policy.mirror is not None:
        steps.append(
            MirrorStep(
                service=service,
                policy=policy.mirror,
                subsets=subsets,
                pools=deps.pools,
                dispatcher=deps.mirrors,
                rng=deps.rng,
                metrics=deps.metrics,
                send_continue=deps.send_continue,
            )
        )
    if policy.split is not None:
        steps.append(
            SplitStep(service=service, policy=policy.split, subsets=subsets, rng=deps.rng, metrics=deps.metrics)
        )
    if policy.sticky is not None:
        deps.sticky_key_used()
        steps.append(
            StickyStep(
                service=service,
                policy=policy.sticky,
                key=deps.sticky_key,
                pools=deps.pools,
                breakers=deps.breakers,
                metrics=deps.metrics,
            )
        )
    if policy.failover is not None:
        steps.append(FailoverStep(service=service, policy=policy.failover, pools=deps.pools, board=deps.failover))
    if policy.lb_key is not None:
        steps.append(HashKeyStep(policy.lb_key, deps.pools))
    return tuple(steps)


def ephemeral_key_warning() -> Callable[[], None]:
    """What ``sticky_key_used`` is when no key was configured: one warning per process, at the first sticky step."""
    warned: list[bool] = []

    def warn() -> None:
        if not warned:
            warned.append(True)
            structlog.get_logger("consulgw.traffic").warning(
                "sticky_key_missing",
                reason="no --sticky-key / CONSULGW_STICKY_KEY: sticky cookies are made with a random key of this "
                "run; other gateway replicas and the next restart will not honour them (clients are re-pinned)",
            )

    return warn
