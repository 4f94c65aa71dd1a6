"""``/v1/catalog/*`` (consul-api.md section 4): blocking reads of nodes and services, and the low-level
register/deregister writes, whose validation failures are 500s as in Consul's RPC layer."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

from consulgw.devagent.agent_api import is_unspecified, tagged_service_addresses
from consulgw.devagent.authorizer import Authz
from consulgw.devagent.bexpr import schema_from_sample
from consulgw.devagent.blocking import Answer
from consulgw.devagent.checks import CHECK_ALIASES, parse_check_def
from consulgw.devagent.config import TOPIC as CONFIG_TOPIC
from consulgw.devagent.config import ConfigEndpoints
from consulgw.devagent.core import Core, Tally, apply_filter, filter_of, node_meta_filters, node_meta_matches
from consulgw.devagent.decode import DEREGISTER_REQUEST, HEALTH_CHECK, NODE_SERVICE, REGISTER_REQUEST, WEIGHTS, Fields
from consulgw.devagent.errors import ApiError, Forward, bad_request, server_error
from consulgw.devagent.http import Call, Reply, Router, text
from consulgw.devagent.records import CRITICAL, Check, Node, Service, TaggedAddress
from consulgw.devagent.render import node_json, node_service_json, service_node_json
from consulgw.duration import format_go_duration

NODE_MAPS = frozenset({"Meta", "TaggedAddresses", "NodeMeta", "ServiceMeta", "ServiceTaggedAddresses"})


def tags_match(svc: Service, wanted: list[str]) -> bool:
    """Repeated ``tag`` = AND, case-insensitive; empty values are ignored."""
    have = {t.lower() for t in svc.tags}
    return all(t.lower() in have for t in wanted if t)


def _sample_node() -> Node:
    return Node(id="", name="", address="", datacenter="", tagged_addresses={"x": ""}, meta={"x": ""})


def _sample_service() -> Service:
    return Service(
        node="",
        id="",
        name="",
        kind="x",
        socket_path="x",
        tagged_addresses={"x": TaggedAddress(address="", port=0)},
        meta={"x": ""},
    )


def service_node_readable(authz: Authz, svc: Service) -> bool:
    """Consul shows an instance only to a token that may read both its node and its service."""
    return authz.allows("node", "read", svc.node) and authz.allows("service", "read", svc.name)


class CatalogEndpoints:
    def __init__(self, core: Core, config: ConfigEndpoints) -> None:
        self.core = core
        self.config = config
        self.node_schema = schema_from_sample(node_json(_sample_node()), maps=NODE_MAPS)
        self.service_node_schema = schema_from_sample(
            service_node_json(_sample_service(), _sample_node()), maps=NODE_MAPS
        )
        self.node_service_schema = schema_from_sample(node_service_json(_sample_service()), maps=NODE_MAPS)

    def register(self, router: Router) -> None:
        get, put = ("GET",), ("PUT",)
        router.add("/v1/catalog/register", put, self.register_)
        router.add("/v1/catalog/deregister", put, self.deregister)
        router.add("/v1/catalog/datacenters", get, self.datacenters)
        router.add("/v1/catalog/nodes", get, self.nodes)
        router.add("/v1/catalog/services", get, self.services)
        router.add("/v1/catalog/service/", get, self.service)
        router.add("/v1/catalog/connect/", get, self.connect)
        router.add("/v1/catalog/node/", get, self.node)
        router.add("/v1/catalog/node-services/", get, self.node_services)
        router.add("/v1/catalog/gateway-services/", get, self.gateway_services)

    # ---- reads ----------------------------------------------------------------------------------------------

    async def datacenters(self, call: Call) -> Reply:
        return call.reply(self.core.datacenters)

    async def nodes(self, call: Call) -> Reply:
        opts = self.core.read_options(call)
        expr = filter_of(call, self.node_schema)
        meta = node_meta_filters(call)
        store = self.core.store
        authz = call.authz()
        tally = Tally()

        def render() -> list[Any]:
            nodes = [n for _, n in sorted(store.nodes.items()) if node_meta_matches(n.meta, meta)]
            rendered = apply_filter(expr, nodes, node_json)
            return [n for n in rendered if tally.keep(authz.allows("node", "read", n["Node"]))]

        def query() -> Answer:
            return Answer(index=store.max_index("nodes"), topics=("nodes",), render=render)

        answer = await self.core.blocking(opts, query)
        value = answer.value
        return call.reply_meta(value, answer.index, opts, filtered=tally.removed)

    async def services(self, call: Call) -> Reply:
        opts = self.core.read_options(call)
        expr = filter_of(call, self.service_node_schema)
        meta = node_meta_filters(call)
        store = self.core.store
        authz = call.authz()
        tally = Tally()

        def render() -> dict[str, list[str]]:
            out: dict[str, list[str]] = {}
            for svc in sorted(store.services.values(), key=lambda s: (s.name, s.node, s.id)):
                node = store.nodes.get(svc.node)
                if node is None or not node_meta_matches(node.meta, meta):
                    continue
                if expr is not None and not expr.evaluate(service_node_json(svc, node)):
                    continue
                tags = out.setdefault(svc.name, [])
                for tag in svc.tags:
                    if tag not in tags:
                        tags.append(tag)
            return {k: v for k, v in sorted(out.items()) if tally.keep(authz.allows("service", "read", k))}

        def query() -> Answer:
            return Answer(index=store.max_index("services"), topics=("services",), render=render)

        answer = await self.core.blocking(opts, query)
        value = answer.value
        return call.reply_meta(value, answer.index, opts, filtered=tally.removed)

    async def service(self, call: Call) -> Reply:
        name = call.suffix
        if not name:
            raise bad_request("Missing service name")
        return await self._service_nodes(call, name, connect=False)

    async def connect(self, call: Call) -> Reply:
        name = call.suffix
        if not name:
            raise bad_request("Missing service name")
        return await self._service_nodes(call, name, connect=True)

    async def _service_nodes(self, call: Call, name: str, *, connect: bool) -> Reply:
        opts = self.core.read_options(call)
        expr = filter_of(call, self.service_node_schema)
        meta = node_meta_filters(call)
        tags = call.params("tag")
        store = self.core.store
        authz = call.authz()
        if connect and not authz.allows("service", "read", name):
            return call.reply_meta([], store.service_query_index(name), opts)  # Consul answers empty, unfiltered
        tally = Tally()

        def render() -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = []
            for svc in connect_instances(store.services.values(), name) if connect else store.instances(name):
                node = store.nodes.get(svc.node)
                if node is None or not node_meta_matches(node.meta, meta) or not tags_match(svc, tags):
                    continue
                rendered = service_node_json(svc, node)
                if (expr is None or expr.evaluate(rendered)) and tally.keep(service_node_readable(authz, svc)):
                    items.append(rendered)
            return items

        def query() -> Answer:
            return Answer(index=store.service_query_index(name), topics=("svc:" + name,), render=render)

        answer = await self.core.blocking(opts, query)
        value = answer.value
        return call.reply_meta(value, answer.index, opts, filtered=tally.removed)

    async def node(self, call: Call) -> Reply:
        name = call.suffix
        if not name:
            raise bad_request("Missing node name")
        opts = self.core.read_options(call)
        expr = filter_of(call, self.node_service_schema)
        store = self.core.store
        authz = call.authz()
        tally = Tally()

        def render() -> dict[str, Any] | None:
            node = store.nodes.get(name)
            if node is None or not tally.keep(authz.allows("node", "read", name)):
                return None
            services = apply_filter(expr, store.services_on_node(name), node_service_json)
            kept = [s for s in services if tally.keep(authz.allows("service", "read", s["Service"]))]
            return {"Node": node_json(node), "Services": {s["ID"]: s for s in kept}}

        def query() -> Answer:
            index = store.max_index("nodes", "services", "checks")
            return Answer(index=index, topics=("nodes", "services", "checks"), render=render)

        answer = await self.core.blocking(opts, query)
        value = answer.value
        return call.reply_meta(value, answer.index, opts, filtered=tally.removed)

    async def node_services(self, call: Call) -> Reply:
        name = call.suffix
        if not name:
            raise bad_request("Missing node name")
        opts = self.core.read_options(call)
        expr = filter_of(call, self.node_service_schema)
        store = self.core.store
        authz = call.authz()
        tally = Tally()
        node_readable = tally.keep(authz.allows("node", "read", name)) or name not in store.nodes

        def render() -> dict[str, Any] | None:
            node = store.nodes.get(name)
            if node is None:
                return None
            services = apply_filter(expr, store.services_on_node(name), node_service_json)
            kept = [s for s in services if tally.keep(authz.allows("service", "read", s["Service"]))]
            return {"Node": node_json(node), "Services": kept}

        def query() -> Answer:
            index = store.max_index("nodes", "services", "checks")
            found = name in store.nodes and node_readable
            return Answer(index=index, topics=("nodes", "services", "checks"), render=render, found=found)

        answer = await self.core.blocking(opts, query)
        if not answer.found:
            reply = text(404, f'Node not found: "{name}"')
            reply.headers.update(call.reply_meta(None, answer.index, opts, filtered=tally.removed).headers)
            return reply
        value = answer.value
        return call.reply_meta(value, answer.index, opts, filtered=tally.removed)

    async def gateway_services(self, call: Call) -> Reply:
        """The services an ingress or terminating gateway's config entry links, with their gateway settings."""
        gateway = call.suffix
        opts = self.core.read_options(call)
        if not gateway:
            raise bad_request("Missing gateway name")
        authz = call.authz()
        authz.require("service", "read", gateway)
        tally = Tally()

        def render() -> list[dict[str, Any]]:
            mappings = self.config.gateway_services(gateway)
            return [m for m in mappings if tally.keep(authz.allows("service", "read", m["Service"]["Name"]))]

        def query() -> Answer:
            return Answer(index=self.config.table_index, topics=(CONFIG_TOPIC,), render=render)

        answer = await self.core.blocking(opts, query)
        value = answer.value
        return call.reply_meta(value, answer.index, opts, filtered=tally.removed)

    # ---- writes ---------------------------------------------------------------------------------------------

    async def register_(self, call: Call) -> Reply:
        body = await call.json()
        self.core.check_dc(call)
        authz = call.authz()
        f = Fields(body, "RegisterRequest", known=REGISTER_REQUEST)
        dc = f.string("Datacenter")
        if dc and dc != self.core.datacenter:
            peer = self.core.wan_peers.get(dc)
            if peer is not None:
                raise Forward(call, dc, peer)
            raise server_error("No path to datacenter")
        node_name = f.string("Node")
        address = f.string("Address")
        skip_node_update = f.boolean("SkipNodeUpdate")
        node_id = f.string("ID")
        tagged = f.str_map("TaggedAddresses")
        node_meta = f.str_map("NodeMeta")
        service_fields = f.obj("Service", "NodeService", known=NODE_SERVICE)
        check_fields = [c for c in [f.obj("Check", "HealthCheck", known=HEALTH_CHECK)] if c is not None]
        check_fields += f.obj_list("Checks", "HealthCheck", known=HEALTH_CHECK)
        if not node_name:
            raise server_error("Must provide node")
        if not address and not skip_node_update:
            raise server_error("Must provide address if SkipNodeUpdate is not set")
        if node_id:
            try:
                uuid.UUID(node_id)
            except ValueError as exc:
                raise server_error(f"Bad node ID: uuid string is wrong length: {node_id}") from exc
        store = self.core.store
        existing = store.nodes.get(node_name)
        if existing is not None and node_id and existing.id and existing.id != node_id and node_name == self.core.node:
            raise server_error(
                f'Failed to update node "{node_name}": Node name {node_name} is reserved by node '
                f"{existing.id} with name {node_name}"
            )
        service: Service | None = None
        if service_fields is not None:
            service = self._parse_service(service_fields, node_name)
            if service.name != "consul":  # Consul's servicePreApply exempts its own service
                authz.require("service", "write", service.name)
            if service.kind == "connect-proxy":
                authz.require("service", "write", str((service.proxy or {}).get("DestinationServiceName", "")))
        checks: list[Check] = []
        for cf in check_fields:
            checks.append(self._parse_check(cf, node_name, service))
        if not authz.unrestricted:
            wanted = Node(id=node_id, name=node_name, address=address, datacenter=dc or self.core.datacenter,
                          tagged_addresses=tagged, meta=node_meta)  # fmt: skip
            self._vet_register(authz, wanted, skip_node_update, existing, service, checks)
        # validate check -> service references before writing anything
        for chk in checks:
            if chk.service_id and not (
                (service is not None and service.id == chk.service_id) or (chk.node, chk.service_id) in store.services
            ):
                raise server_error("Missing service registration")
        with store.write() as tx:
            if existing is None or not skip_node_update:
                node = Node(
                    id=node_id or (existing.id if existing else ""),
                    name=node_name,
                    address=address or (existing.address if existing else ""),
                    datacenter=self.core.datacenter,
                    tagged_addresses=tagged if tagged or existing is None else dict(existing.tagged_addresses),
                    meta=node_meta if node_meta or existing is None else dict(existing.meta),
                )
                tx.put_node(node)
            if service is not None:
                tx.put_service(service)
            for chk in checks:
                svc = store.services.get((chk.node, chk.service_id)) if chk.service_id else None
                if svc is not None:
                    chk = replace(chk, service_name=svc.name, service_tags=svc.tags)
                tx.put_check(chk)
        if any(chk.status == CRITICAL for chk in checks):
            self.core.checks_changed()
        return call.reply(True)

    def _vet_register(
        self,
        authz: Authz,
        wanted: Node,
        skip_node_update: bool,
        existing: Node | None,
        service: Service | None,
        checks: list[Check],
    ) -> None:
        """Consul's vetRegisterWithACL: node:write unless the node is unchanged, service:write on the service and
        on any service it replaces, node:write for node checks and service:write for other services' checks."""
        store = self.core.store
        node_name = wanted.name
        changes_node = existing is None or (
            not skip_node_update
            and (
                wanted.id != existing.id
                or wanted.address != existing.address
                or wanted.datacenter != existing.datacenter
                or dict(wanted.tagged_addresses) != dict(existing.tagged_addresses)
                or dict(wanted.meta) != dict(existing.meta)
            )
        )
        if changes_node:
            authz.require("node", "write", node_name)
        if service is not None:
            authz.require("service", "write", service.name)
            replaced = store.services.get((node_name, service.id))
            if replaced is not None and not authz.allows("service", "write", replaced.name):
                raise ApiError(403, "Permission denied")
        for chk in checks:
            if chk.node.lower() != node_name.lower():
                raise server_error(
                    f"Node '{chk.node}' for check '{chk.check_id}' doesn't match register request node '{node_name}'"
                )
            if not chk.service_id:
                authz.require("node", "write", node_name)
                continue
            if service is not None and service.id == chk.service_id:
                continue
            other = store.services.get((node_name, chk.service_id)) if existing is not None else None
            if other is None:
                raise server_error(f"Unknown service ID '{chk.service_id}' for check ID '{chk.check_id}'")
            authz.require("service", "write", other.name)

    def _parse_service(self, f: Fields, node: str) -> Service:
        name = f.string("Service")
        service_id = f.string("ID") or name
        if not name:
            raise server_error("Must provide service name (Service.Service) when service ID is provided")
        address = f.string("Address")
        port = f.integer("Port")
        if address and is_unspecified(address):
            raise server_error("Invalid service address")
        weights = f.obj("Weights", "Weights", known=WEIGHTS)
        proxy = f.raw("Proxy")
        connect = f.raw("Connect")
        return Service(
            node=node,
            id=service_id,
            name=name,
            tags=f.str_list("Tags"),
            address=address,
            port=port,
            meta=f.str_map("Meta"),
            tagged_addresses=tagged_service_addresses(f),  # the catalog API fills nothing in (only the agent does)
            weights_passing=weights.integer("Passing", 1) if weights else 1,
            weights_warning=weights.integer("Warning", 1) if weights else 1,
            enable_tag_override=f.boolean("EnableTagOverride"),
            kind=f.string("Kind"),
            socket_path=f.string("SocketPath"),
            proxy=proxy if isinstance(proxy, dict) and proxy else None,
            connect=connect if isinstance(connect, dict) and connect else None,
        )

    def _parse_check(self, f: Fields, node: str, service: Service | None) -> Check:
        definition = f.obj("Definition", "HealthCheckDefinition", aliases=CHECK_ALIASES)
        defn = parse_check_def(definition) if definition is not None else None
        name = f.string("Name")
        check_id = f.string("CheckID") or name
        interval = f.string("Interval") if isinstance(f.raw("Interval"), str) else ""
        timeout = f.string("Timeout") if isinstance(f.raw("Timeout"), str) else ""
        if defn is not None:
            interval = interval or (format_go_duration(defn.interval_ns) if defn.interval_ns else "")
            timeout = timeout or (format_go_duration(defn.timeout_ns) if defn.timeout_ns else "")
        service_id = f.string("ServiceID")
        return Check(
            node=f.string("Node") or node,
            check_id=check_id,
            name=name,
            status=f.string("Status") or CRITICAL,
            notes=f.string("Notes"),
            output=f.string("Output"),
            service_id=service_id,
            service_name=service.name if service is not None and service.id == service_id else f.string("ServiceName"),
            service_tags=service.tags if service is not None and service.id == service_id else (),
            type=f.string("Type") or (defn.type if defn is not None else ""),
            interval=interval,
            timeout=timeout,
            definition=defn.definition() if defn is not None else {},
        )

    async def deregister(self, call: Call) -> Reply:
        body = await call.json()
        self.core.check_dc(call)
        f = Fields(body, "DeregisterRequest", known=DEREGISTER_REQUEST)
        dc = f.string("Datacenter")
        if dc and dc != self.core.datacenter:
            peer = self.core.wan_peers.get(dc)
            if peer is not None:
                raise Forward(call, dc, peer)
            raise server_error("No path to datacenter")
        node = f.string("Node")
        if not node:
            raise server_error("Must provide node")
        service_id = f.string("ServiceID")
        check_id = f.string("CheckID")
        self._vet_deregister(call.authz(), node, service_id, check_id)
        with self.core.store.write() as tx:
            if service_id:
                tx.delete_service(node, service_id)
            elif check_id:
                tx.delete_check(node, check_id)
            else:
                tx.delete_node(node)
        self.core.checks_changed()
        return call.reply(True)

    def _vet_deregister(self, authz: Authz, node: str, service_id: str, check_id: str) -> None:
        """Consul's vetDeregisterWithACL: node:write allows everything; else service:write on what is removed."""
        if authz.allows("node", "write", node):
            return
        store = self.core.store
        if service_id:
            svc = store.services.get((node, service_id))
            if svc is None:
                raise server_error(f"Unknown service ID '{service_id}'")
            authz.require("service", "write", svc.name)
        elif check_id:
            chk = store.checks.get((node, check_id))
            if chk is None:
                raise server_error(f"Unknown check ID '{check_id}'")
            if chk.service_id:
                authz.require("service", "write", chk.service_name)
            else:
                authz.require("node", "write", node)
        else:
            authz.require("node", "write", node)


def connect_instances(services: Any, name: str) -> list[Service]:
    out = []
    for svc in services:
        proxy = svc.proxy or {}
        if (svc.kind == "connect-proxy" and proxy.get("DestinationServiceName") == name) or (
            svc.name == name and (svc.connect or {}).get("Native")
        ):
            out.append(svc)
    return sorted(out, key=lambda s: (s.node, s.id))
