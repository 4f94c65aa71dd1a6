"""Consul's JSON shapes, field order as Consul emits them (consul-api.md section 10).

Go marshals maps with sorted keys, so every map is emitted sorted; empty slices in normalised positions are ``[]``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from consulgw.devagent.records import Check, KVEntry, Node, Service, Session, TaggedAddress


def empty_proxy() -> dict[str, Any]:
    """What Consul shows as ``Proxy`` for a plain (non-mesh) service."""
    return {"Mode": "", "MeshGateway": {}, "Expose": {}}


def dumps(value: object, *, pretty: bool) -> bytes:
    """Go's json.Marshal(Indent): HTML-sensitive characters escaped, UTF-8 kept, 4-space indent plus newline."""
    if pretty:
        text = json.dumps(value, indent=4, ensure_ascii=False) + "\n"
    else:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    text = (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )
    return text.encode("utf-8")


def sorted_map(value: Mapping[str, Any]) -> dict[str, Any]:
    return {k: value[k] for k in sorted(value)}


def tagged_service_addresses(addrs: Mapping[str, TaggedAddress]) -> dict[str, Any]:
    return {k: {"Address": addrs[k].address, "Port": addrs[k].port} for k in sorted(addrs)}


def node_json(node: Node) -> dict[str, Any]:
    return {
        "ID": node.id,
        "Node": node.name,
        "Address": node.address,
        "Datacenter": node.datacenter,
        "TaggedAddresses": sorted_map(node.tagged_addresses),
        "Meta": sorted_map(node.meta),
        "CreateIndex": node.create_index,
        "ModifyIndex": node.modify_index,
    }


def weights_json(svc: Service) -> dict[str, int]:
    return {"Passing": svc.weights_passing, "Warning": svc.weights_warning}


def node_service_json(svc: Service, *, indexes: bool = True) -> dict[str, Any]:
    """NodeService, as in health entries and catalog/node ``Services``."""
    out: dict[str, Any] = {}
    if svc.kind:
        out["Kind"] = svc.kind
    out["ID"] = svc.id
    out["Service"] = svc.name
    out["Tags"] = list(svc.tags)
    out["Address"] = svc.address
    if svc.tagged_addresses:
        out["TaggedAddresses"] = tagged_service_addresses(svc.tagged_addresses)
    out["Meta"] = sorted_map(svc.meta)
    out["Port"] = svc.port
    if svc.socket_path:
        out["SocketPath"] = svc.socket_path
    out["Weights"] = weights_json(svc)
    out["EnableTagOverride"] = svc.enable_tag_override
    out["Proxy"] = dict(svc.proxy) if svc.proxy else empty_proxy()
    out["Connect"] = dict(svc.connect) if svc.connect else {}
    if indexes:
        out["CreateIndex"] = svc.create_index
        out["ModifyIndex"] = svc.modify_index
    return out


def service_node_json(svc: Service, node: Node) -> dict[str, Any]:
    """ServiceNode, the element of catalog/service."""
    out: dict[str, Any] = {
        "ID": node.id,
        "Node": node.name,
        "Address": node.address,
        "Datacenter": node.datacenter,
        "TaggedAddresses": sorted_map(node.tagged_addresses),
        "NodeMeta": sorted_map(node.meta),
        "ServiceKind": svc.kind,
        "ServiceID": svc.id,
        "ServiceName": svc.name,
        "ServiceTags": list(svc.tags),
        "ServiceAddress": svc.address,
    }
    if svc.tagged_addresses:
        out["ServiceTaggedAddresses"] = tagged_service_addresses(svc.tagged_addresses)
    out.update(
        {
            "ServiceWeights": weights_json(svc),
            "ServiceMeta": sorted_map(svc.meta),
            "ServicePort": svc.port,
            "ServiceSocketPath": svc.socket_path,
            "ServiceEnableTagOverride": svc.enable_tag_override,
            "ServiceProxy": dict(svc.proxy) if svc.proxy else empty_proxy(),
            "ServiceConnect": dict(svc.connect) if svc.connect else {},
            "CreateIndex": svc.create_index,
            "ModifyIndex": svc.modify_index,
        }
    )
    return out


def agent_service_json(svc: Service, datacenter: str, *, content_hash: str | None = None) -> dict[str, Any]:
    """AgentService, as in agent/services and agent/service/:id (empty optional fields omitted)."""
    out: dict[str, Any] = {}
    if svc.kind:
        out["Kind"] = svc.kind
    out["ID"] = svc.id
    out["Service"] = svc.name
    out["Tags"] = list(svc.tags)
    out["Meta"] = sorted_map(svc.meta)
    out["Port"] = svc.port
    out["Address"] = svc.address
    if svc.socket_path:
        out["SocketPath"] = svc.socket_path
    if svc.tagged_addresses:
        out["TaggedAddresses"] = tagged_service_addresses(svc.tagged_addresses)
    out["Weights"] = weights_json(svc)
    out["EnableTagOverride"] = svc.enable_tag_override
    if content_hash is not None:
        out["ContentHash"] = content_hash
    if svc.proxy:
        proxy = dict(svc.proxy)
        if svc.kind == "connect-proxy" and not proxy.get("Mode"):
            proxy.pop("Mode", None)  # the agent API's proxy struct omits an empty mode; the catalog's shows it
        out["Proxy"] = proxy
    if svc.connect:
        out["Connect"] = dict(svc.connect)
    out["Datacenter"] = datacenter
    return out


def check_json(chk: Check, *, indexes: bool = True) -> dict[str, Any]:
    return {
        "Node": chk.node,
        "CheckID": chk.check_id,
        "Name": chk.name,
        "Status": chk.status,
        "Notes": chk.notes,
        "Output": chk.output,
        "ServiceID": chk.service_id,
        "ServiceName": chk.service_name,
        "ServiceTags": list(chk.service_tags),
        "Type": chk.type,
        "Interval": chk.interval,
        "Timeout": chk.timeout,
        "ExposedPort": 0,
        "Definition": dict(chk.definition),
        "CreateIndex": chk.create_index if indexes else 0,
        "ModifyIndex": chk.modify_index if indexes else 0,
    }


def kv_json(entry: KVEntry) -> dict[str, Any]:
    out: dict[str, Any] = {
        "LockIndex": entry.lock_index,
        "Key": entry.key,
        "Flags": entry.flags,
        "Value": base64.b64encode(entry.value).decode("ascii") if entry.value else None,
    }
    if entry.session:
        out["Session"] = entry.session
    out["CreateIndex"] = entry.create_index
    out["ModifyIndex"] = entry.modify_index
    return out


def session_json(sess: Session) -> dict[str, Any]:
    return {
        "ID": sess.id,
        "Name": sess.name,
        "Node": sess.node,
        "LockDelay": sess.lock_delay_ns,
        "Behavior": sess.behavior,
        "TTL": sess.ttl,
        "NodeChecks": list(sess.node_checks),
        "ServiceChecks": [{"ID": c, "Namespace": ""} for c in sess.service_checks] or None,
        "CreateIndex": sess.create_index,
        "ModifyIndex": sess.modify_index,
    }
