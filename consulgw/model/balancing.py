"""Balancer names and the one rule that picks a service's balancer.

Everybody who names a balancer imports it from here: the ``gw.lb`` tag parser, the KV policy parser, the pools, the
view and ``consulgw routes``. The rule: the KV policy's ``lb``, else the ``gw.lb`` tag, else round-robin.

The KV policy's object form ``{"type": "hash", "key": "header:X-User-ID"}`` is ``ip_hash`` (the weighted rendezvous
hash) keyed by something other than the client IP: :class:`HashKey` says where the key comes from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, get_args

LbAlgorithm = Literal["round_robin", "least_conn", "ip_hash"]
LB_ALGORITHMS: Final[tuple[LbAlgorithm, ...]] = get_args(LbAlgorithm)
ROUND_ROBIN: Final[LbAlgorithm] = "round_robin"
LEAST_CONN: Final[LbAlgorithm] = "least_conn"
IP_HASH: Final[LbAlgorithm] = "ip_hash"
DEFAULT_LB: Final[LbAlgorithm] = ROUND_ROBIN
HASH: Final = "hash"  # the KV object form's name for ip_hash: the rendezvous hash, keyed by ``key``


def as_lb(value: str | None) -> LbAlgorithm | None:
    """``value`` as a balancer name, or None when it is not one (the object form's ``hash`` is read by the policy
    parser as ``ip_hash``)."""
    for name in LB_ALGORITHMS:
        if value == name:
            return name
    return None


def effective_lb(policy_lb: LbAlgorithm | None, tag_lb: str | None) -> LbAlgorithm:
    """The balancer a service uses: the KV policy's ``lb``, else its ``gw.lb`` tag, else round-robin."""
    return policy_lb or as_lb(tag_lb) or DEFAULT_LB


# -- hash keys: where a per-client key comes from (the hash balancer, split assignment) -------------------------------

HashKeyKind = Literal["ip", "consumer", "header", "cookie"]
HASH_KEY_FORMS: Final = ("ip", "consumer", "header:<name>", "cookie:<name>")


@dataclass(frozen=True, slots=True)
class HashKey:
    """Where a request's hash key comes from: the client IP, the verified consumer, a header or a cookie.

    A request that does not carry the named consumer, header or cookie is keyed by its client IP.
    """

    kind: HashKeyKind
    name: str = ""  # the header or cookie name (headers: lower case)

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}" if self.name else self.kind


CLIENT_IP: Final = HashKey("ip")


def as_hash_key(text: str) -> HashKey | None:
    """``ip``, ``consumer``, ``header:<name>`` or ``cookie:<name>`` as a HashKey; None when it is none of those.

    Names are checked for emptiness only; the policy parser checks header and cookie name syntax.
    """
    if text == "ip":
        return CLIENT_IP
    if text == "consumer":
        return HashKey("consumer")
    kind, sep, name = text.partition(":")
    if not sep or not name:
        return None
    if kind == "header":
        return HashKey("header", name.lower())
    if kind == "cookie":
        return HashKey("cookie", name)
    return None
