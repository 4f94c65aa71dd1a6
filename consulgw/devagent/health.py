"""``/v1/health/*`` (consul-api.md section 5): service entries with node-level checks first, checks by service,
node and state. ``?passing`` is applied after the blocking query, with Consul's swap-with-last removal."""

from __future__ import annotations

from typing import Any

from consulgw.devagent.authorizer import Authz
from consulgw.devagent.bexpr import schema_from_sample
from consulgw.devagent.blocking import Answer
from consulgw.devagent.catalog import NODE_MAPS, connect_instances, tags_match
from consulgw.devagent.core import (
    Core,
    Tally,
    apply_filter,
    filter_of,
    node_meta_filters,
    node_meta_matches,
    parse_bool,
)
from consulgw.devagent.errors import bad_request
from consulgw.devagent.http import Call, Reply, Router
from consulgw.devagent.records import PASSING, Check, Node, Service, TaggedAddress
from consulgw.devagent.render import check_json, node_json, node_service_json
from consulgw.devagent.store import Store

CHECK_MAPS = frozenset({*NODE_MAPS, "Definition"})


def entry_json(store: Store, svc: Service, node: Node) -> dict[str, Any]:
    checks = store.node_checks(node.name) + store.service_checks(node.name, svc.id)
    return {
        "Node": node_json(node),
        "Service": node_service_json(svc),
        "Checks": [check_json(c) for c in checks],
    }


def filter_non_passing(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consul's filterNonPassing, including its swap-the-last-element-in order quirk."""
    out = list(entries)
    n = len(out)
    i = 0
    while i < n:
        if any(c["Status"] != PASSING for c in out[i]["Checks"]):
            out[i], out[n - 1] = out[n - 1], out[i]
            n -= 1
            continue
        i += 1
    return out[:n]


def check_readable(authz: Authz, node: str, service_name: str) -> bool:
    """Consul's filterHealthChecks: node:read on the check's node, service:read on its service (if any)."""
    if not authz.allows("node", "read", node):
        return False
    return not service_name or authz.allows("service", "read", service_name)


class HealthEndpoints:
    def __init__(self, core: Core) -> None:
        self.core = core
        sample_node = Node(id="", name="", address="", datacenter="", tagged_addresses={"x": ""}, meta={"x": ""})
        sample_service = Service(
            node="",
            id="",
            name="",
            kind="x",
            socket_path="x",
            tagged_addresses={"x": TaggedAddress(address="", port=0)},
        )
        sample_check = check_json(Check(node="", check_id="", name=""))
        self.entry_schema = schema_from_sample(
            {"Node": node_json(sample_node), "Service": node_service_json(sample_service), "Checks": [sample_check]},
            maps=CHECK_MAPS,
        )
        self.check_schema = schema_from_sample(sample_check, maps=CHECK_MAPS)

    def register(self, router: Router) -> None:
        get = ("GET",)
        router.add("/v1/health/service/", get, self.service)
        router.add("/v1/health/connect/", get, self.connect)
        router.add("/v1/health/ingress/", get, self.ingress)
        router.add("/v1/health/checks/", get, self.checks)
        router.add("/v1/health/state/", get, self.state)
        router.add("/v1/health/node/", get, self.node)

    async def service(self, call: Call) -> Reply:
        return await self._entries(call, "service")

    async def connect(self, call: Call) -> Reply:
        return await self._entries(call, "connect")

    async def ingress(self, call: Call) -> Reply:
        return await self._entries(call, "ingress")

    async def _entries(self, call: Call, kind: str) -> Reply:
        name = call.suffix
        if not name:
            raise bad_request("Missing service name")
        opts = self.core.read_options(call)
        passing = False
        if call.has("passing"):
            raw = call.param("passing")
            parsed = True if raw == "" else parse_bool(raw)
            if parsed is None:
                raise bad_request("Invalid value for ?passing")
            passing = parsed
        expr = filter_of(call, self.entry_schema)
        meta = node_meta_filters(call)
        tags = call.params("tag")
        peer = call.param("peer")
        store = self.core.store
        authz = call.authz()
        tally = Tally()
        if kind != "service" and not authz.allows("service", "read", name):
            return call.reply_meta([], store.service_query_index(name), opts)  # Consul answers empty, unfiltered

        def render() -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = []
            if kind == "service":
                instances = store.instances(name)
            elif kind == "connect":
                instances = connect_instances(store.services.values(), name)
            else:
                instances = []  # no ingress gateways in a dev agent unless configured through config entries
            if peer:
                instances = []
            for svc in instances:
                node = store.nodes.get(svc.node)
                if node is None or not node_meta_matches(node.meta, meta) or not tags_match(svc, tags):
                    continue
                items.append(entry_json(store, svc, node))
            return [
                e
                for e in apply_filter(expr, items, lambda e: e)
                if tally.keep(
                    authz.allows("node", "read", e["Node"]["Node"])
                    and authz.allows("service", "read", e["Service"]["Service"])
                )
            ]

        def query() -> Answer:
            return Answer(index=store.service_query_index(name), topics=("svc:" + name,), render=render)

        answer = await self.core.blocking(opts, query)
        value = filter_non_passing(answer.value) if passing else answer.value
        return call.reply_meta(value, answer.index, opts, filtered=tally.removed)

    async def checks(self, call: Call) -> Reply:
        name = call.suffix
        if not name:
            raise bad_request("Missing service name")
        opts = self.core.read_options(call)
        expr = filter_of(call, self.check_schema)
        meta = node_meta_filters(call)
        store = self.core.store
        authz = call.authz()
        tally = Tally()

        def render() -> list[Any]:
            found = [
                c
                for svc in store.instances(name)
                if not meta or node_meta_matches(_node_meta(store, svc.node), meta)
                for c in store.service_checks(svc.node, svc.id)
            ]
            found.sort(key=lambda c: (c.node, c.check_id))
            return self._readable(authz, tally, apply_filter(expr, found, check_json))

        def query() -> Answer:
            return Answer(index=store.service_query_index(name), topics=("svc:" + name,), render=render)

        answer = await self.core.blocking(opts, query)
        value = answer.value
        return call.reply_meta(value, answer.index, opts, filtered=tally.removed)

    @staticmethod
    def _readable(authz: Authz, tally: Tally, checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [c for c in checks if tally.keep(check_readable(authz, c["Node"], c["ServiceName"]))]

    async def state(self, call: Call) -> Reply:
        state = call.suffix
        if not state:
            raise bad_request("Missing check state")
        opts = self.core.read_options(call)
        expr = filter_of(call, self.check_schema)
        meta = node_meta_filters(call)
        store = self.core.store
        authz = call.authz()
        tally = Tally()

        def render() -> list[Any]:
            found = [
                c
                for c in store.checks_sorted()
                if (state == "any" or c.status == state)
                and (not meta or node_meta_matches(_node_meta(store, c.node), meta))
            ]
            return self._readable(authz, tally, apply_filter(expr, found, check_json))

        def query() -> Answer:
            return Answer(index=store.max_index("checks"), topics=("checks",), render=render)

        answer = await self.core.blocking(opts, query)
        value = answer.value
        return call.reply_meta(value, answer.index, opts, filtered=tally.removed)

    async def node(self, call: Call) -> Reply:
        name = call.suffix
        if not name:
            raise bad_request("Missing node name")
        opts = self.core.read_options(call)
        expr = filter_of(call, self.check_schema)
        store = self.core.store
        authz = call.authz()
        tally = Tally()

        def render() -> list[Any]:
            return self._readable(authz, tally, apply_filter(expr, store.checks_on_node(name), check_json))

        def query() -> Answer:
            index = store.max_index("nodes", "services", "checks")
            return Answer(index=index, topics=("nodes", "services", "checks"), render=render)

        answer = await self.core.blocking(opts, query)
        value = answer.value
        return call.reply_meta(value, answer.index, opts, filtered=tally.removed)


def _node_meta(store: Store, node: str) -> dict[str, str]:
    found = store.nodes.get(node)
    return dict(found.meta) if found is not None else {}
