"""One ``/v1/health/service/<name>`` entry -> one Instance with Consul's aggregated health.

Consul never stores an aggregate: an instance's checks are the node-level checks of its node (``serfHealth``,
``_node_maintenance``, catalog node checks) plus the checks of that service instance, and the entry's ``Checks``
array already holds exactly those. Precedence is the Go client's ``AggregatedStatus``: maintenance > critical >
warning > passing. A check with a status Consul does not define counts as critical (fail closed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from consulgw.errors import DiscoveryError
from consulgw.model.snapshot import Health, Instance, Weights

NODE_MAINTENANCE: Final = "_node_maintenance"
SERVICE_MAINTENANCE_PREFIX: Final = "_service_maintenance:"

_STATUS: Final[Mapping[str, Health]] = MappingProxyType(
    {
        "passing": Health.PASSING,
        "warning": Health.WARNING,
        "critical": Health.CRITICAL,
        "maintenance": Health.MAINTENANCE,
    }
)
_RANK: Final[Mapping[Health, int]] = MappingProxyType(
    {Health.PASSING: 0, Health.WARNING: 1, Health.CRITICAL: 2, Health.MAINTENANCE: 3}
)


def _bad(where: str, field: str, value: object, expected: str) -> DiscoveryError:
    return DiscoveryError(f"health entry {where}: {field} is {value!r}, expected {expected}")


def _object(where: str, field: str, value: object, *, optional: bool = False) -> Mapping[str, Any]:
    if value is None and optional:
        return {}
    if not isinstance(value, Mapping):
        raise _bad(where, field, value, "an object")
    return value


def _text(where: str, field: str, value: object, *, optional: bool = False) -> str:
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise _bad(where, field, value, "a string")
    return value


def _int(where: str, field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _bad(where, field, value, "a whole number >= 0")
    return value


def aggregate_health(checks: object, *, where: str = "?") -> Health:
    """Aggregate the ``Checks`` array of one health entry (node-level checks included)."""
    if checks is None:
        return Health.PASSING
    if not isinstance(checks, list):
        raise _bad(where, "Checks", checks, "an array")
    worst = Health.PASSING
    for raw in checks:
        check = _object(where, "Checks[]", raw)
        check_id = _text(where, "Checks[].CheckID", check.get("CheckID"))
        if check_id == NODE_MAINTENANCE or check_id.startswith(SERVICE_MAINTENANCE_PREFIX):
            return Health.MAINTENANCE
        status = _text(where, f"Checks[{check_id!r}].Status", check.get("Status"))
        health = _STATUS.get(status, Health.CRITICAL)
        if _RANK[health] > _RANK[worst]:
            worst = health
    return worst


def _weights(where: str, raw: object) -> Weights:
    if raw is None:
        return Weights()
    obj = _object(where, "Service.Weights", raw)
    passing = obj.get("Passing", 1)
    warning = obj.get("Warning", 1)
    return Weights(
        passing=_int(where, "Service.Weights.Passing", passing),
        warning=_int(where, "Service.Weights.Warning", warning),
    )


def _tags(where: str, raw: object) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _bad(where, "Service.Tags", raw, "an array of strings")
    return tuple(_text(where, "Service.Tags[]", tag) for tag in raw)


def _meta(where: str, raw: object) -> Mapping[str, str]:
    obj = _object(where, "Service.Meta", raw, optional=True)
    return MappingProxyType(
        {_text(where, "Service.Meta key", k): _text(where, f"Service.Meta[{k!r}]", v) for k, v in obj.items()}
    )


_WAN_KEYS: Final = ("wan", "wan_ipv4")


def _wan(where: str, service: Mapping[str, Any], node: Mapping[str, Any]) -> tuple[str, int]:
    """(address, port) of TaggedAddresses wan / wan_ipv4: the service's ({Address, Port}), else the node's (a
    string); ("", 0) when neither is tagged."""
    tagged = _object(where, "Service.TaggedAddresses", service.get("TaggedAddresses"), optional=True)
    for key in _WAN_KEYS:
        raw = tagged.get(key)
        if raw is None:
            continue
        entry = _object(where, f"Service.TaggedAddresses.{key}", raw)
        address = _text(where, f"Service.TaggedAddresses.{key}.Address", entry.get("Address"), optional=True)
        if address:
            port = _int(where, f"Service.TaggedAddresses.{key}.Port", entry.get("Port", 0))
            return address, port if port <= 65535 else 0
    node_tagged = _object(where, "Node.TaggedAddresses", node.get("TaggedAddresses"), optional=True)
    for key in _WAN_KEYS:
        address = _text(where, f"Node.TaggedAddresses.{key}", node_tagged.get(key), optional=True)
        if address:
            return address, 0
    return "", 0


def instance_from_entry(entry: Mapping[str, Any]) -> Instance:
    """Build the Instance for one ``/v1/health/service`` entry; a malformed entry raises DiscoveryError naming the field."""
    top = _object("?", "entry", entry)
    node = _object("?", "Node", top.get("Node"))
    service = _object("?", "Service", top.get("Service"))
    node_name = _text("?", "Node.Node", node.get("Node"))
    service_id = _text(node_name, "Service.ID", service.get("ID"))
    where = f"{node_name}/{service_id}"
    name = _text(where, "Service.Service", service.get("Service"))
    address = _text(where, "Service.Address", service.get("Address"), optional=True) or _text(
        where, "Node.Address", node.get("Address"), optional=True
    )
    if not address:
        raise _bad(where, "Service.Address and Node.Address", "", "an address in at least one of them")
    port = _int(where, "Service.Port", service.get("Port"))
    if port > 65535:
        raise _bad(where, "Service.Port", port, "a port in 0-65535")
    wan_address, wan_port = _wan(where, service, node)
    return Instance(
        id=where,
        service=name,
        service_id=service_id,
        node=node_name,
        address=address,
        port=port,
        tags=_tags(where, service.get("Tags")),
        meta=_meta(where, service.get("Meta")),
        health=aggregate_health(top.get("Checks"), where=where),
        weights=_weights(where, service.get("Weights")),
        datacenter=_text(where, "Node.Datacenter", node.get("Datacenter"), optional=True),
        wan_address=wan_address,
        wan_port=wan_port,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckStatus:
    """One check of a ``/v1/health/state/<state>`` answer: what it belongs to and its status (output ignored)."""

    node: str
    check_id: str
    status: str
    service_id: str  # "" for a node-level check (serfHealth, node maintenance): it concerns every instance on the node
    service_name: str


def check_status_from_json(item: object) -> CheckStatus:
    """One HealthCheck object -> CheckStatus; a malformed one raises DiscoveryError naming the field."""
    check = _object("?", "check", item)
    node = _text("?", "Node", check.get("Node"))
    check_id = _text(node, "CheckID", check.get("CheckID"))
    where = f"{node}/{check_id}"
    return CheckStatus(
        node=node,
        check_id=check_id,
        status=_text(where, "Status", check.get("Status")),
        service_id=_text(where, "ServiceID", check.get("ServiceID"), optional=True),
        service_name=_text(where, "ServiceName", check.get("ServiceName"), optional=True),
    )
