"""What the gateway knows about Consul at one moment: immutable values built by the watcher.

Data flows one way: Consul watch -> CatalogSnapshot -> route table and pools -> request pipeline -> upstream.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

_EMPTY: Mapping[str, str] = MappingProxyType({})


class Health(enum.StrEnum):
    """Aggregated health of one instance (Consul's precedence: maintenance > critical > warning > passing)."""

    PASSING = "passing"
    WARNING = "warning"
    CRITICAL = "critical"
    MAINTENANCE = "maintenance"


@dataclass(frozen=True, slots=True, kw_only=True)
class Weights:
    """Consul's ``Service.Weights``: weight while passing, and while warning (0 excludes a warning instance)."""

    passing: int = 1
    warning: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Instance:
    """One registered instance of a service, with its aggregated health."""

    id: str  # "<node>/<service id>": unique across the datacenter, stable across re-registrations
    service: str
    service_id: str
    node: str
    address: str  # Service.Address, else Node.Address
    port: int
    tags: tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=lambda: _EMPTY, hash=False)
    health: Health = Health.PASSING
    weights: Weights = field(default_factory=Weights)
    datacenter: str = ""  # Node.Datacenter: the datacenter this instance was read from ("" when Consul omits it)
    # TaggedAddresses wan / wan_ipv4 (the service's, else the node's): how another datacenter reaches it ("": none)
    wan_address: str = ""
    wan_port: int = 0  # the service's wan port, 0 when only an address is tagged (then ``port``)

    def reached_over_wan(self) -> Instance:
        """This instance as another datacenter reaches it: its wan address (and port) when tagged."""
        if not self.wan_address:
            return self
        return replace(self, address=self.wan_address, port=self.wan_port or self.port)

    @property
    def weight(self) -> int:
        """Effective load-balancing weight: 0 means the instance takes no new requests."""
        if self.health is Health.PASSING:
            return self.weights.passing
        if self.health is Health.WARNING:
            return self.weights.warning
        return 0

    @property
    def scheme(self) -> str:
        """``https`` when the service asks for it in Meta ``gw-scheme``, else ``http``."""
        return "https" if self.meta.get("gw-scheme", "").lower() == "https" else "http"

    @property
    def endpoint(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceSnapshot:
    """All registered instances of one service (healthy or not), from one blocking health query."""

    name: str
    index: int
    instances: tuple[Instance, ...] = ()

    @property
    def datacenter(self) -> str | None:
        """The datacenter the instances were read from (what ``$DC`` in a Fabio tag expands to), None if unknown."""
        return next((inst.datacenter for inst in self.instances if inst.datacenter), None)

    @property
    def tags(self) -> tuple[str, ...]:
        """Union of the instances' tags, in first-seen order (route tags are read from here)."""
        seen: dict[str, None] = {}
        for inst in self.instances:
            for tag in inst.tags:
                seen.setdefault(tag, None)
        return tuple(seen)


@dataclass(frozen=True, slots=True, kw_only=True)
class CatalogSnapshot:
    """The whole view: routed services and the KV documents under the gateway's prefix.

    ``changed`` names the services whose ServiceSnapshot differs from the previous CatalogSnapshot, and
    ``kv_changed`` is true when the KV documents differ, so consumers rebuild only what changed.
    """

    services: Mapping[str, ServiceSnapshot] = field(default_factory=lambda: MappingProxyType({}))
    kv: Mapping[str, bytes] = field(
        default_factory=lambda: MappingProxyType({})
    )  # key relative to the prefix -> raw value
    services_index: int = 0
    kv_index: int = 0
    complete: bool = False  # every routed service and the KV prefix have been read at least once
    changed: frozenset[str] = frozenset()  # also names services whose remote snapshots changed
    kv_changed: bool = False
    # Other datacenters' instances of the services a failover policy names: (service, datacenter) -> snapshot.
    remote: Mapping[tuple[str, str], ServiceSnapshot] = field(default_factory=lambda: MappingProxyType({}))
