"""What every endpoint module shares: the store, the agent's identity, injected clock/randomness, and helpers for
the common query parameters (``dc``, blocking, ``filter``, ``node-meta``)."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from consulgw.clock import Clock
from consulgw.devagent.bexpr import Expression, compile_filter
from consulgw.devagent.blocking import SHUTDOWN_TOPIC, Answer, QueryOptions, block
from consulgw.devagent.errors import ApiError, Forward
from consulgw.devagent.http import Call
from consulgw.devagent.monitor import LogHub, LogLine
from consulgw.devagent.store import Store

VERSION = "1.21.5"
REVISION = "e4b2a9fc"
LEADER_ADDR = "127.0.0.1:8300"


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    node: str
    node_id: str
    datacenter: str
    address: str


class Core:
    def __init__(
        self,
        *,
        identity: Identity,
        clock: Clock,
        rng: random.Random,
        start_index: int = 10,
        wan_peers: Mapping[str, str] | None = None,
    ) -> None:
        self.identity = identity
        self.wan_peers: Mapping[str, str] = MappingProxyType(dict(wan_peers or {}))  # datacenter -> agent URL
        self.clock = clock
        self.rng = rng
        self.store = Store(start_index=start_index)
        self.closing = False
        self.checks_changed_hooks: list[Callable[[], None]] = []
        self.logs = LogHub()
        self.leave_requested: Callable[[], None] = lambda: None  # set by the server: PUT /v1/agent/leave

    @property
    def node(self) -> str:
        return self.identity.node

    @property
    def datacenter(self) -> str:
        return self.identity.datacenter

    def new_uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    @property
    def datacenters(self) -> list[str]:
        """Every known datacenter, this one first (Consul lists the nearest first)."""
        return [self.datacenter, *(dc for dc in self.wan_peers if dc != self.datacenter)]

    def check_dc(self, call: Call) -> None:
        """``?dc=``: this datacenter is served here, a WAN peer's is forwarded to it, any other is Consul's 500."""
        dc = call.param("dc")
        if dc and dc != self.datacenter:
            peer = self.wan_peers.get(dc)
            if peer is not None:
                raise Forward(call, dc, peer)
            raise ApiError(500, "No path to datacenter")

    def read_options(self, call: Call) -> QueryOptions:
        opts = call.options()
        self.check_dc(call)
        return opts

    async def blocking(self, opts: QueryOptions, query: Callable[[], Answer]) -> Answer:
        return await block(
            query, opts, watch=self.store.watch, clock=self.clock, rng=self.rng, is_closing=lambda: self.closing
        )

    def log(self, level: str, module: str, message: str, **fields: object) -> None:
        """One agent log line (Consul's hclog shape): to structlog and to every ``/v1/agent/monitor`` stream."""
        pairs = tuple((k.rstrip("_"), str(v)) for k, v in fields.items())
        self.logs.publish(LogLine(self.clock.time(), level, module, message, pairs))

    def shutdown(self) -> None:
        self.closing = True
        self.store.watch.notify([SHUTDOWN_TOPIC])

    def checks_changed(self) -> None:
        """A check went critical or disappeared: sessions bound to it must be invalidated."""
        for hook in list(self.checks_changed_hooks):
            hook()


class Tally:
    """Whether an ACL filter removed anything from an answer (for ``X-Consul-Results-Filtered-By-ACLs``)."""

    __slots__ = ("removed",)

    def __init__(self) -> None:
        self.removed = False

    def keep(self, allowed: bool) -> bool:
        if not allowed:
            self.removed = True
        return allowed


def filter_of(call: Call, schema: Any) -> Expression | None:
    """Compile ``?filter`` against the endpoint's schema; Consul answers errors as 500s."""
    text = call.param("filter")
    if not text:
        return None
    try:
        return compile_filter(text, schema)
    except ValueError as exc:
        raise ApiError(500, f"Failed to create boolean expression evaluator: {exc}") from exc


def apply_filter(expr: Expression | None, items: Iterable[Any], render: Callable[[Any], Any]) -> list[Any]:
    if expr is None:
        return [render(i) for i in items]
    out = []
    for item in items:
        rendered = render(item)
        if expr.evaluate(rendered):
            out.append(rendered)
    return out


def node_meta_filters(call: Call) -> list[tuple[str, str]]:
    pairs = []
    for raw in call.params("node-meta"):
        key, _, value = raw.partition(":")
        pairs.append((key, value))
    return pairs


def node_meta_matches(meta: dict[str, str] | Any, filters: list[tuple[str, str]]) -> bool:
    return all(meta.get(k) == v for k, v in filters)


def parse_bool(text: str) -> bool | None:
    """Go strconv.ParseBool."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    return None
