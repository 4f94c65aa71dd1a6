"""``Connect.SidecarService``: the sidecar proxy a service registration asks the agent to register next to it.

Consul turns the nested definition into a service of kind ``connect-proxy`` with ID ``<service ID>-sidecar-proxy``
and fills Consul's defaults: name ``<service name>-sidecar-proxy``, the parent's address, tags and meta when none
are given, ``Proxy.DestinationServiceName``/``DestinationServiceID`` pointing at the parent,
``LocalServiceAddress`` ``127.0.0.1`` and ``LocalServicePort`` the parent's port, a port from the sidecar range
(the lowest free one in 21000-21255, kept across re-registrations) and, when the definition has no checks, two
checks: a TCP check of the proxy's listener every 10s and an alias of the parent service. The parent keeps no trace
of the nested definition; deregistering the parent deregisters its sidecar.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from consulgw.devagent.checks import NS, CheckDef
from consulgw.devagent.records import Service

SUFFIX = "-sidecar-proxy"
MIN_PORT = 21000
MAX_PORT = 21255
KIND = "connect-proxy"
_PROXY_ORDER = (
    "DestinationServiceName", "DestinationServiceID", "LocalServiceAddress", "LocalServicePort",
    "LocalServiceSocketPath", "Mode", "TransparentProxy", "Config", "Upstreams", "MeshGateway", "Expose",
)  # fmt: skip


class SidecarError(ValueError):
    """A sidecar the agent cannot register; the message is Consul's."""


@dataclass(frozen=True, slots=True)
class Sidecar:
    service: Service  # port 0: allocate one from the sidecar range at registration
    checks: tuple[CheckDef, ...]  # empty: the default checks are added once the port is known


def split_connect(connect: Mapping[str, Any] | None) -> tuple[dict[str, Any] | None, Any]:
    """The parent's ``Connect`` without its nested ``SidecarService`` (any spelling), and that definition."""
    if not connect:
        return None, None
    rest: dict[str, Any] = {}
    nested: Any = None
    for key, value in connect.items():
        if key.lower().replace("_", "") == "sidecarservice":
            nested = value
        else:
            rest[key] = value
    return (rest or None), nested


def proxy_record(given: Mapping[str, Any] | None, parent: Service) -> dict[str, Any]:
    """The sidecar's proxy configuration with Consul's defaults, in the field order Consul renders it."""
    folded = {k.lower().replace("_", ""): (k, v) for k, v in (given or {}).items()}

    def get(name: str, default: Any = None) -> Any:
        found = folded.get(name.lower())
        return found[1] if found is not None and found[1] is not None else default

    values: dict[str, Any] = {
        "DestinationServiceName": get("DestinationServiceName") or parent.name,
        "DestinationServiceID": get("DestinationServiceID") or parent.id,
    }
    address, port, socket_path = get("LocalServiceAddress", ""), get("LocalServicePort", 0), ""
    socket_path = get("LocalServiceSocketPath", "")
    if not socket_path and (not address or not isinstance(port, int) or port < 1):
        if parent.socket_path:
            socket_path = parent.socket_path
        else:
            address = address or "127.0.0.1"
            port = port if isinstance(port, int) and port >= 1 else parent.port
    if address:
        values["LocalServiceAddress"] = address
    if port:
        values["LocalServicePort"] = port
    if socket_path:
        values["LocalServiceSocketPath"] = socket_path
    values["Mode"] = get("Mode", "")
    for name in ("Config", "Upstreams"):
        if get(name):
            values[name] = get(name)
    values["MeshGateway"] = get("MeshGateway", {})
    values["Expose"] = get("Expose", {})
    return {k: values[k] for k in _PROXY_ORDER if k in values}


def derive(parent: Service, nested: Service, checks: Iterable[CheckDef]) -> Sidecar:
    """Apply Consul's defaults to the nested definition (already parsed as a service definition)."""
    service = replace(
        nested,
        id=parent.id + SUFFIX,
        name=nested.name or parent.name + SUFFIX,
        kind=nested.kind or KIND,
        address=nested.address or parent.address,
        tags=nested.tags or parent.tags,
        meta=nested.meta or parent.meta,
        proxy=proxy_record(nested.proxy, parent),
        connect=None,
    )
    return Sidecar(service=service, checks=tuple(checks))


def allocate_port(sidecar_id: str, services: Iterable[Service]) -> int:
    """Consul's sequential allocation: keep the port this sidecar already has in range, else the lowest free one."""
    used: set[int] = set()
    for svc in services:
        if MIN_PORT <= svc.port <= MAX_PORT:
            if svc.id == sidecar_id:
                return svc.port
            used.add(svc.port)
    for port in range(MIN_PORT, MAX_PORT + 1):
        if port not in used:
            return port
    raise SidecarError(
        f"no port provided for sidecar_service and none left in the configured range [{MIN_PORT}, {MAX_PORT}]"
    )


def default_checks(sidecar: Service, parent_id: str) -> tuple[CheckDef, ...]:
    """A TCP check of the proxy's listener (its address, else the local service address) and an alias check."""
    address = sidecar.address or str((sidecar.proxy or {}).get("LocalServiceAddress", ""))
    target = f"[{address}]:{sidecar.port}" if ":" in address else f"{address}:{sidecar.port}"
    return (
        CheckDef(name="Connect Sidecar Listening", tcp=target, interval_ns=10 * NS),
        CheckDef(name="Connect Sidecar Aliasing " + parent_id, alias_service=parent_id),
    )
