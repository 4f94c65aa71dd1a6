"""Balancer names and the one rule that picks a service's balancer.

Everybody who names a balancer imports it from here: the ``gw.lb`` tag parser, the KV policy parser, the pools, the
view and ``consulgw routes``. The rule: the KV policy's ``lb``, else the ``gw.lb`` tag, else round-robin.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

LbAlgorithm = Literal["round_robin", "least_conn", "ip_hash"]
LB_ALGORITHMS: Final[tuple[LbAlgorithm, ...]] = get_args(LbAlgorithm)
ROUND_ROBIN: Final[LbAlgorithm] = "round_robin"
LEAST_CONN: Final[LbAlgorithm] = "least_conn"
IP_HASH: Final[LbAlgorithm] = "ip_hash"
DEFAULT_LB: Final[LbAlgorithm] = ROUND_ROBIN


def as_lb(value: str | None) -> LbAlgorithm | None:
    """``value`` as a balancer name, or None when it is not one."""
    for name in LB_ALGORITHMS:
        if value == name:
            return name
    return None


def effective_lb(policy_lb: LbAlgorithm | None, tag_lb: str | None) -> LbAlgorithm:
    """The balancer a service uses: the KV policy's ``lb``, else its ``gw.lb`` tag, else round-robin."""
    return policy_lb or as_lb(tag_lb) or DEFAULT_LB
