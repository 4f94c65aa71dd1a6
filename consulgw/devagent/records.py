"""The values the dev agent's state is made of: frozen records, replaced whole on every write.

Field names follow Consul's structs; ``render.py`` turns them into Consul's JSON shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

PASSING = "passing"
WARNING = "warning"
CRITICAL = "critical"
STATUSES = (PASSING, WARNING, CRITICAL)

SERF_CHECK_ID = "serfHealth"
SERF_CHECK_NAME = "Serf Health Status"
SERF_ALIVE_OUTPUT = "Agent alive and reachable"
NODE_MAINT_CHECK_ID = "_node_maintenance"
SERVICE_MAINT_PREFIX = "_service_maintenance:"


@dataclass(frozen=True, slots=True, kw_only=True)
class TaggedAddress:
    address: str
    port: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Node:
    id: str
    name: str
    address: str
    datacenter: str
    tagged_addresses: Mapping[str, str] = field(default_factory=dict)
    meta: Mapping[str, str] = field(default_factory=dict)
    create_index: int = 0
    modify_index: int = 0

    def same(self, other: Node) -> bool:
        return replace(self, create_index=0, modify_index=0) == replace(other, create_index=0, modify_index=0)


@dataclass(frozen=True, slots=True, kw_only=True)
class Service:
    """A service instance on a node (Consul's NodeService)."""

    node: str
    id: str
    name: str
    tags: tuple[str, ...] = ()
    address: str = ""
    port: int = 0
    meta: Mapping[str, str] = field(default_factory=dict)
    tagged_addresses: Mapping[str, TaggedAddress] = field(default_factory=dict)
    weights_passing: int = 1
    weights_warning: int = 1
    enable_tag_override: bool = False
    kind: str = ""
    socket_path: str = ""
    proxy: Mapping[str, Any] | None = None
    connect: Mapping[str, Any] | None = None
    create_index: int = 0
    modify_index: int = 0

    def same(self, other: Service) -> bool:
        return replace(self, create_index=0, modify_index=0) == replace(other, create_index=0, modify_index=0)


@dataclass(frozen=True, slots=True, kw_only=True)
class Check:
    """A health check as the catalog holds it (Consul's HealthCheck)."""

    node: str
    check_id: str
    name: str
    status: str = CRITICAL
    notes: str = ""
    output: str = ""
    service_id: str = ""
    service_name: str = ""
    service_tags: tuple[str, ...] = ()
    type: str = ""
    interval: str = ""
    timeout: str = ""
    definition: Mapping[str, Any] = field(default_factory=dict)
    create_index: int = 0
    modify_index: int = 0

    def same(self, other: Check) -> bool:
        return replace(self, create_index=0, modify_index=0) == replace(other, create_index=0, modify_index=0)


@dataclass(frozen=True, slots=True, kw_only=True)
class KVEntry:
    key: str
    value: bytes = b""
    flags: int = 0
    session: str = ""
    lock_index: int = 0
    create_index: int = 0
    modify_index: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Session:
    id: str
    name: str = ""
    node: str = ""
    lock_delay_ns: int = 15_000_000_000
    behavior: str = "release"
    ttl: str = ""
    node_checks: tuple[str, ...] = ()
    service_checks: tuple[str, ...] = ()
    create_index: int = 0
    modify_index: int = 0
