"""``/v1/agent/*`` over HTTP: request decoding and validation (whole, before anything changes), the handlers,
``agent/self``, ``agent/members`` and the agent-local health endpoints (consul-api.md section 3)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

from consulgw.devagent import sidecar
from consulgw.devagent.acl import AclSystem
from consulgw.devagent.agent import LocalAgent, unknown_check, unknown_service, worst_status
from consulgw.devagent.authorizer import Authz
from consulgw.devagent.bexpr import schema_from_sample
from consulgw.devagent.blocking import query_timeout, wait_for_topics
from consulgw.devagent.checks import CHECK_ALIASES, CheckDef, parse_check_def
from consulgw.devagent.cluster import coordinate
from consulgw.devagent.core import LEADER_ADDR, REVISION, VERSION, Core, apply_filter, filter_of, parse_bool
from consulgw.devagent.decode import (
    CHECK_DEFINITION,
    CHECK_TYPE,
    CHECK_UPDATE,
    SERVICE_ADDRESS,
    SERVICE_DEFINITION,
    WEIGHTS,
    Fields,
    json_kind,
)
from consulgw.devagent.errors import ApiError, DecodeError, bad_request, not_found
from consulgw.devagent.http import Call, Reply, Router, empty, text
from consulgw.devagent.monitor import LEVELS, LogLine
from consulgw.devagent.records import (
    CRITICAL,
    NODE_MAINT_CHECK_ID,
    PASSING,
    SERVICE_MAINT_PREFIX,
    STATUSES,
    WARNING,
    Check,
    Service,
    TaggedAddress,
)
from consulgw.devagent.render import agent_service_json, check_json
from consulgw.devagent.sidecar import Sidecar
from consulgw.devagent.telemetry import PROMETHEUS_CONTENT_TYPE, Telemetry

SERVICE_ALIASES = {
    "enable_tag_override": "EnableTagOverride",
    "tagged_addresses": "TaggedAddresses",
    "socket_path": "SocketPath",
}
DEFAULT_SERVICE_REASON = (
    "Maintenance mode is enabled for this service, but no reason was provided. This is a default message."
)
DEFAULT_NODE_REASON = (
    "Maintenance mode is enabled for this node, but no reason was provided. This is a default message."
)
SCRIPTS_DISABLED = (
    "Scripts are disabled on this agent; to enable, configure 'enable_script_checks' or "
    "'enable_local_script_checks' to true"
)
_META_KEY = re.compile(r"[A-Za-z0-9_-]+")


def validate_meta(meta: dict[str, str]) -> str | None:
    """Consul's ValidateServiceMetadata texts (it shares the node-metadata count message)."""
    if len(meta) > 64:
        return "Node metadata cannot contain more than 64 key/value pairs"
    for key, value in meta.items():
        problem = None
        if key == "":
            problem = "Key cannot be blank"
        elif not _META_KEY.fullmatch(key):
            problem = "Key contains invalid characters"
        elif len(key) > 128:
            problem = "Key is too long (limit: 128 characters)"
        elif key.startswith("consul-"):
            problem = "Key prefix 'consul-' is reserved for internal use"
        elif len(value) > 512:
            problem = "Value is too long (limit: 512 characters)"
        if problem:
            return f"Couldn't load metadata pair ('{key}', '{value}'): {problem}"
    return None


def is_unspecified(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_unspecified
    except ValueError:
        return False


def default_tagged_addresses(address: str, port: int, given: dict[str, TaggedAddress]) -> dict[str, TaggedAddress]:
    out = dict(given)
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return out
    kinds = ("lan_ipv4", "wan_ipv4") if ip.version == 4 else ("lan_ipv6", "wan_ipv6")
    for kind in kinds:
        out.setdefault(kind, TaggedAddress(address=address, port=port))
    return out


# ---- request decoding ----------------------------------------------------------------------------------------


def tagged_service_addresses(f: Fields) -> dict[str, TaggedAddress]:
    raw = f.raw("TaggedAddresses")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise DecodeError("json: cannot unmarshal into Go struct field ServiceDefinition.TaggedAddresses")
    out: dict[str, TaggedAddress] = {}
    for key, value in raw.items():
        sub = Fields(value, "ServiceAddress", known=SERVICE_ADDRESS)
        out[str(key)] = TaggedAddress(address=sub.string("Address"), port=sub.integer("Port"))
    return out


@dataclass(frozen=True, slots=True)
class Registration:
    """A decoded ``PUT /v1/agent/service/register`` body: the service, its checks, and its sidecar, if any."""

    service: Service
    checks: list[CheckDef]
    sidecar: Sidecar | None = None
    sidecar_token: str = ""


AUTO_TAGGED = frozenset({"lan_ipv4", "wan_ipv4", "lan_ipv6", "wan_ipv6"})


def parse_registration(body: Any, node: str) -> Registration:
    svc, defs = parse_service_definition(body, node)
    connect, nested = sidecar.split_connect(svc.connect)
    if nested is None:
        return Registration(service=svc, checks=defs)
    svc = replace(svc, connect=connect)
    if not isinstance(nested, dict):
        raise DecodeError(
            f"json: cannot unmarshal {json_kind(nested)} into Go struct field ServiceConnect.Connect.SidecarService "
            "of type structs.ServiceDefinition"
        )
    try:
        inner, inner_defs = parse_service_definition(nested, node, nested=True)
    except ApiError as exc:
        if exc.text.startswith("Invalid check: "):
            raise bad_request("Invalid check in sidecar_service: " + exc.text.removeprefix("Invalid check: ")) from None
        raise
    if sidecar.split_connect(inner.connect)[1] is not None:
        raise bad_request("Invalid SidecarService: sidecar_service can't have a nested sidecar_service")
    token = Fields(nested, "ServiceDefinition", aliases=SERVICE_ALIASES).string("Token")
    return Registration(service=svc, checks=defs, sidecar=sidecar.derive(svc, inner, inner_defs), sidecar_token=token)


def parse_service_definition(body: Any, node: str, *, nested: bool = False) -> tuple[Service, list[CheckDef]]:
    f = Fields(body, "ServiceDefinition", aliases=SERVICE_ALIASES, known=SERVICE_DEFINITION)
    name = f.string("Name")
    weights = f.obj("Weights", "Weights", known=WEIGHTS)
    passing, warning = 1, 1
    if weights is not None:
        passing, warning = weights.integer("Passing"), weights.integer("Warning")
    address = f.string("Address")
    port = f.integer("Port")
    proxy = f.raw("Proxy")
    connect = f.raw("Connect")
    svc = Service(
        node=node,
        id=f.string("ID") or name,
        name=name,
        tags=f.str_list("Tags"),
        address=address,
        port=port,
        meta=f.str_map("Meta"),
        tagged_addresses=default_tagged_addresses(address, port, tagged_service_addresses(f)),
        weights_passing=passing,
        weights_warning=warning,
        enable_tag_override=f.boolean("EnableTagOverride"),
        kind=f.string("Kind"),
        socket_path=f.string("SocketPath"),
        proxy=proxy if isinstance(proxy, dict) and proxy else None,
        connect=connect if isinstance(connect, dict) and connect else None,
    )
    defs: list[CheckDef] = []
    single = f.obj("Check", "CheckType", aliases=CHECK_ALIASES, known=CHECK_TYPE)
    if single is not None:
        defs.append(parse_check_def(single))
    defs.extend(parse_check_def(c) for c in f.obj_list("Checks", "CheckType", aliases=CHECK_ALIASES, known=CHECK_TYPE))
    defs = [d for d in defs if not d.is_empty()]
    if not name and not nested:
        raise bad_request("Missing service name")
    if weights is not None:
        if passing < 1:
            raise bad_request("Invalid Weights: Passing must be greater than 0")
        if warning < 0:
            raise bad_request("Invalid Weights: Warning must be greater or equal than 0")
    problem = validate_meta(dict(svc.meta))
    if problem:
        raise bad_request(f"Invalid Service Meta: {problem}")
    if address and is_unspecified(address):
        raise bad_request("Invalid service address")
    for defn in defs:
        problem = defn.validate()
        if problem:
            raise bad_request(f"Invalid check: {problem}")
        if defn.status and defn.status not in STATUSES:
            raise bad_request("Status for checks must 'passing', 'warning', 'critical'")
    return svc, defs


# ---- handlers ------------------------------------------------------------------------------------------------


class AgentEndpoints:
    def __init__(
        self,
        core: Core,
        agent: LocalAgent,
        acl: AclSystem,
        telemetry: Telemetry,
        *,
        prometheus_retention: float = 0.0,
    ) -> None:
        self.core = core
        self.agent = agent
        self.acl = acl
        self.telemetry = telemetry
        self.prometheus_retention = prometheus_retention
        sample_service = agent_service_json(
            Service(
                node="",
                id="",
                name="",
                kind="x",
                socket_path="x",
                tagged_addresses={"x": TaggedAddress(address="", port=0)},
                proxy={"x": 1},
                connect={"x": 1},
            ),
            "",
            content_hash="",
        )
        self.service_schema = schema_from_sample(sample_service, maps=frozenset({"Meta", "TaggedAddresses"}))
        self.check_schema = schema_from_sample(
            check_json(Check(node="", check_id="", name="")), maps=frozenset({"Definition"})
        )

    def register(self, router: Router) -> None:
        get, put = ("GET",), ("PUT",)
        router.add("/v1/agent/self", get, self.self_)
        router.add("/v1/agent/members", get, self.members)
        router.add("/v1/agent/metrics", get, self.metrics)
        router.add("/v1/agent/monitor", get, self.monitor)
        router.add("/v1/agent/leave", put, self.leave)
        router.add("/v1/agent/services", get, self.services)
        router.add("/v1/agent/checks", get, self.checks)
        router.add("/v1/agent/service/", get, self.service)
        router.add("/v1/agent/service/register", put, self.service_register)
        router.add("/v1/agent/service/deregister/", put, self.service_deregister)
        router.add("/v1/agent/service/maintenance/", put, self.service_maintenance)
        router.add("/v1/agent/maintenance", put, self.node_maintenance)
        router.add("/v1/agent/check/register", put, self.check_register)
        router.add("/v1/agent/check/deregister/", put, self.check_deregister)
        router.add("/v1/agent/check/pass/", put, self.check_pass)
        router.add("/v1/agent/check/warn/", put, self.check_warn)
        router.add("/v1/agent/check/fail/", put, self.check_fail)
        router.add("/v1/agent/check/update/", put, self.check_update)
        router.add("/v1/agent/health/service/id/", get, self.health_by_id)
        router.add("/v1/agent/health/service/name/", get, self.health_by_name)
        router.add("/v1/agent/token/", put, self.token)
        router.add("/v1/agent/reload", put, self.reload)

    # -- reads

    async def self_(self, call: Call) -> Reply:
        call.authz().require("agent", "read", self.core.node)
        ident = self.core.identity
        member = self.member(wan=False)
        config = {
            "Datacenter": ident.datacenter,
            "PrimaryDatacenter": ident.datacenter,
            "NodeName": ident.node,
            "NodeID": ident.node_id,
            "Partition": "",
            "Revision": REVISION,
            "Server": True,
            "Version": VERSION,
            "BuildDate": "2025-10-01T00:00:00Z",
        }
        agent = self.agent
        ttl_count = sum(1 for lc in agent.checks.values() if lc.defn is not None and lc.defn.ttl_ns > 0)
        body = {
            "Config": config,
            "DebugConfig": {
                "DevMode": True,
                "Datacenter": ident.datacenter,
                "NodeName": ident.node,
                "NodeID": ident.node_id,
                "EnableScriptChecks": agent.enable_script_checks,
                "UseStreamingBackend": False,
                "CheckDeregisterIntervalMin": f"{agent.min_deregister_after:g}s",
                "CheckReapInterval": f"{agent.reap_interval:g}s",
                "ACLsEnabled": self.acl.enabled,
                "ACLDefaultPolicy": self.acl.config.default_policy,
            },
            "Coord": coordinate(),
            "Member": member,
            "Stats": {
                "agent": {
                    "check_monitors": "0",
                    "check_ttls": str(ttl_count),
                    "checks": str(len(agent.checks)),
                    "services": str(len(agent.services)),
                },
                "build": {"prerelease": "", "revision": REVISION, "version": VERSION, "version_metadata": ""},
                "consul": {
                    "acl": "enabled" if self.acl.enabled else "disabled",
                    "bootstrap": "false",
                    "known_datacenters": "1",
                    "leader": "true",
                    "leader_addr": LEADER_ADDR,
                    "server": "true",
                },
                "raft": {"state": "Leader", "num_peers": "0", "last_log_index": str(self.core.store.index)},
                "runtime": {"arch": "amd64", "os": "linux", "version": "go1.22.12"},
                "serf_lan": {"members": "1", "health_score": "0"},
                "serf_wan": {"members": "1", "health_score": "0"},
            },
            "Meta": {"consul-network-segment": "", "consul-version": VERSION},
            "xDS": {
                "SupportedProxies": {"envoy": ["1.33.0", "1.32.3", "1.31.5", "1.30.9"]},
                "Port": 8502,
                "Ports": {"Plaintext": 8502, "TLS": -1},
            },
        }
        return call.reply(body)

    def member(self, *, wan: bool) -> dict[str, Any]:
        ident = self.core.identity
        tags = {
            "acls": "1" if self.acl.enabled else "0",
            "build": f"{VERSION}:{REVISION}",
            "dc": ident.datacenter,
            "ft_fs": "1",
            "ft_si": "1",
            "id": ident.node_id,
            "port": "8300",
            "raft_vsn": "3",
            "role": "consul",
            "segment": "",
            "vsn": "2",
            "vsn_max": "3",
            "vsn_min": "2",
            "wan_join_port": "8302",
        }
        if wan:
            tags.pop("segment")
        return {
            "Name": f"{ident.node}.{ident.datacenter}" if wan else ident.node,
            "Addr": ident.address,
            "Port": 8302 if wan else 8301,
            "Tags": tags,
            "Status": 1,
            "ProtocolMin": 1,
            "ProtocolMax": 5,
            "ProtocolCur": 2,
            "DelegateMin": 2,
            "DelegateMax": 5,
            "DelegateCur": 4,
        }

    def _agent_filtered(self, call: Call, removed: bool) -> dict[str, str]:
        """Agent-local endpoints set the filtered header themselves, when a token was given (Consul: token != "")."""
        return call.filtered(removed)

    async def members(self, call: Call) -> Reply:
        authz = call.authz()
        wan = call.has("wan") and call.param("wan") != ""
        members = [self.member(wan=wan)]
        # Consul filters members by node:read on the member name
        kept = [m for m in members if authz.allows("node", "read", str(m["Name"]))]
        return call.reply(kept, headers=self._agent_filtered(call, len(kept) != len(members)))

    async def services(self, call: Call) -> Reply:
        authz = call.authz()
        expr = filter_of(call, self.service_schema)
        dc = self.core.datacenter
        items = sorted(self.agent.services.values(), key=lambda s: s.id)
        rendered = apply_filter(expr, items, lambda s: agent_service_json(s, dc))
        kept = [item for item in rendered if authz.allows("service", "read", item["Service"])]
        return call.reply(
            {item["ID"]: item for item in kept}, headers=self._agent_filtered(call, len(kept) != len(rendered))
        )

    async def checks(self, call: Call) -> Reply:
        authz = call.authz()
        expr = filter_of(call, self.check_schema)
        items = sorted((lc.record for lc in self.agent.checks.values()), key=lambda c: c.check_id)
        rendered = apply_filter(expr, items, lambda c: check_json(c, indexes=False))
        node = self.core.node
        kept = [
            item
            for item in rendered
            if (authz.allows("service", "read", item["ServiceName"]) if item["ServiceName"] else
                authz.allows("node", "read", node))
        ]  # fmt: skip
        return call.reply(
            {item["CheckID"]: item for item in kept}, headers=self._agent_filtered(call, len(kept) != len(rendered))
        )

    async def service(self, call: Call) -> Reply:
        service_id = call.suffix
        opts = call.options()
        authz = call.authz()
        wanted = call.param("hash")
        loop_deadline: float | None = None
        while True:
            svc = self.agent.services.get(service_id)
            if svc is None:
                raise not_found(f"unknown service ID: {service_id}")
            authz.require("service", "read", svc.name)
            current = self.agent.content_hash(svc)
            if not wanted or wanted != current or self.core.closing:
                break
            now = self.core.clock.monotonic()
            if loop_deadline is None:
                loop_deadline = now + query_timeout(opts.wait, self.core.rng)
            remaining = loop_deadline - now
            if remaining <= 0:
                break
            await wait_for_topics(self.core.store.watch, ("agentsvc:" + service_id,), remaining, self.core.clock)
        body = agent_service_json(svc, self.core.datacenter, content_hash=current)
        return call.reply(body, headers={"X-Consul-ContentHash": current})

    async def health_by_id(self, call: Call) -> Reply:
        service_id = call.suffix
        if not service_id:
            raise bad_request("Missing serviceID")
        authz = call.authz()
        as_text = _wants_text(call)
        svc = self.agent.services.get(service_id)
        if svc is None:
            reason = f"ServiceId {service_id} not found"
            if as_text:
                return text(404, reason)
            return call.reply({"AggregatedStatus": CRITICAL, "Service": None, "Checks": None}, status=404)
        authz.require("service", "read", svc.name)
        status, info = self._service_health(svc)
        code = _health_code(status)
        if as_text:
            return text(code, status)
        return call.reply(info, status=code)

    async def health_by_name(self, call: Call) -> Reply:
        name = call.suffix
        if not name:
            raise bad_request("Missing service Name")
        call.authz().require("service", "read", name)
        as_text = _wants_text(call)
        results: list[dict[str, Any]] = []
        worst = PASSING
        order = {PASSING: 0, WARNING: 1, CRITICAL: 2, "maintenance": 3}
        for svc in sorted(self.agent.services.values(), key=lambda s: s.id):
            if svc.name != name:
                continue
            status, info = self._service_health(svc)
            results.append(info)
            if order[status] > order[worst]:
                worst = status
        if not results:
            reason = f"ServiceName {name} Not Found"
            if as_text:
                return text(404, reason)
            return call.reply([], status=404)
        code = _health_code(worst)
        if as_text:
            return text(code, worst)
        return call.reply(results, status=code)

    def _service_health(self, svc: Service) -> tuple[str, dict[str, Any]]:
        checks = self.agent.service_checks(svc.id)
        status = worst_status([c.status for c in checks], [c.check_id for c in checks])
        info = {
            "AggregatedStatus": status,
            "Service": agent_service_json(svc, self.core.datacenter),
            "Checks": [check_json(c, indexes=False) for c in checks],
        }
        return status, info

    # -- metrics, monitor, leave

    async def metrics(self, call: Call) -> Reply:
        call.authz().require("agent", "read", self.core.node)
        if call.param("format") == "prometheus" or _accepts_openmetrics(call.request.headers.get("Accept", "")):
            if self.prometheus_retention <= 0:
                # Consul answers an empty 200 carrying the reason (its CodeWithPayloadError has no body here)
                return Reply(
                    headers={"X-Consul-Reason": "Prometheus is not enabled since its retention time is not positive"}
                )
            return Reply(body=self.telemetry.prometheus(), content_type=PROMETHEUS_CONTENT_TYPE)
        return call.reply(self.telemetry.summary())

    async def monitor(self, call: Call) -> Reply:
        call.authz().require("agent", "read", self.core.node)
        level = call.param("loglevel") or "INFO"
        if level.upper() not in LEVELS:
            raise bad_request(f"Unknown log level: {level}")
        as_json = call.has("logjson")
        hub = self.core.logs
        subscription = hub.subscribe(level)
        core = self.core

        def render(line: LogLine) -> str:
            return line.json() if as_json else line.text()

        async def stream(response: web.StreamResponse) -> None:
            try:
                while not core.closing:
                    await subscription.wait(0.2)  # Consul flushes every 200 ms
                    lines = subscription.drain()
                    if lines:
                        await response.write("".join(render(line) for line in lines).encode("utf-8"))
            finally:
                hub.unsubscribe(subscription)
                if subscription.dropped:
                    core.log("warn", "agent", "Dropped logs during monitor request",
                             dropped_count=subscription.dropped)  # fmt: skip

        return Reply(stream=stream)

    async def leave(self, call: Call) -> Reply:
        call.authz().require("agent", "write", self.core.node)
        return Reply(after=self.core.leave_requested)

    # -- writes

    def _vet_service_register(self, authz: Authz, svc: Service) -> None:
        authz.require("service", "write", svc.name)
        existing = self.agent.services.get(svc.id)
        if existing is not None:
            authz.require("service", "write", existing.name)
        if svc.kind == "connect-proxy":
            destination = str((svc.proxy or {}).get("DestinationServiceName", ""))
            authz.require("service", "write", destination)

    def _vet_service_update(self, authz: Authz, service_id: str) -> Service:
        existing = self.agent.services.get(service_id)
        if existing is None:
            raise unknown_service(service_id)
        authz.require("service", "write", existing.name)
        return existing

    def _vet_check_update(self, authz: Authz, check_id: str) -> None:
        lc = self.agent.checks.get(check_id)
        if lc is None:
            raise unknown_check(check_id)
        if lc.record.service_name:
            authz.require("service", "write", lc.record.service_name)
        else:
            authz.require("node", "write", self.core.node)

    async def service_register(self, call: Call) -> Reply:
        replace_existing = False
        if call.has("replace-existing-checks"):
            raw = call.param("replace-existing-checks")
            replace_existing = raw == "" or parse_bool(raw) is True
        registration = parse_registration(await call.json(), self.core.node)
        svc, defs = registration.service, registration.checks
        authz = call.authz()
        self._vet_service_register(authz, svc)
        side = registration.sidecar
        if side is not None:
            side_authz = call.authz_for(registration.sidecar_token) if registration.sidecar_token else authz
            self._vet_service_register(side_authz, side.service)
        if not self.agent.enable_script_checks and any(d.args for d in defs):
            raise ApiError(500, SCRIPTS_DISABLED)
        if side is not None:
            side = self._place_sidecar(side)
        self.agent.add_service(svc, defs, replace_existing=replace_existing)
        if side is not None:
            self.agent.add_service(side.service, list(side.checks), replace_existing=replace_existing, sidecar=True)
        self.core.log("info", "agent", "Synced service", service=svc.id)
        return empty()

    def _place_sidecar(self, side: Sidecar) -> Sidecar:
        """Give the sidecar its port and, when it brought none, Consul's default checks."""
        svc = side.service
        if svc.port < 1:
            try:
                port = sidecar.allocate_port(svc.id, self.agent.services.values())
            except sidecar.SidecarError as exc:
                raise ApiError(500, str(exc)) from None
            given = {k: v for k, v in svc.tagged_addresses.items() if k not in AUTO_TAGGED or v.port}
            svc = replace(svc, port=port, tagged_addresses=default_tagged_addresses(svc.address, port, given))
        elif not svc.tagged_addresses:
            svc = replace(svc, tagged_addresses=default_tagged_addresses(svc.address, svc.port, {}))
        parent_id = svc.id.removesuffix(sidecar.SUFFIX)
        checks = side.checks or sidecar.default_checks(svc, parent_id)
        return Sidecar(service=svc, checks=checks)

    async def service_deregister(self, call: Call) -> Reply:
        service_id = call.suffix
        self._vet_service_update(call.authz(), service_id)
        self.agent.remove_service(service_id)
        self.core.log("info", "agent", "Deregistered service", service=service_id)
        return empty()

    def _enable_param(self, call: Call) -> bool:
        if not call.has("enable"):
            raise bad_request("Missing value for enable")
        raw = call.param("enable")
        value = parse_bool(raw)
        if value is None:
            raise bad_request(f'Invalid value for enable: "{raw}"')
        return value

    async def service_maintenance(self, call: Call) -> Reply:
        service_id = call.suffix
        if not service_id:
            raise bad_request("Missing service ID")
        enable = self._enable_param(call)
        svc = self._vet_service_update(call.authz(), service_id)
        check_id = SERVICE_MAINT_PREFIX + service_id
        if enable:
            if check_id not in self.agent.checks:
                rec = Check(
                    node=self.core.node,
                    check_id=check_id,
                    name="Service Maintenance Mode",
                    status=CRITICAL,
                    notes=call.param("reason") or DEFAULT_SERVICE_REASON,
                    service_id=svc.id,
                    service_name=svc.name,
                )
                self.agent.add_check(rec, None)
        else:
            self.agent.remove_check(check_id)
        return empty()

    async def node_maintenance(self, call: Call) -> Reply:
        enable = self._enable_param(call)
        call.authz().require("node", "write", self.core.node)
        if enable:
            if NODE_MAINT_CHECK_ID not in self.agent.checks:
                rec = Check(
                    node=self.core.node,
                    check_id=NODE_MAINT_CHECK_ID,
                    name="Node Maintenance Mode",
                    status=CRITICAL,
                    notes=call.param("reason") or DEFAULT_NODE_REASON,
                )
                self.agent.add_check(rec, None)
        else:
            self.agent.remove_check(NODE_MAINT_CHECK_ID)
        return empty()

    async def check_register(self, call: Call) -> Reply:
        f = Fields(await call.json(), "CheckDefinition", aliases=CHECK_ALIASES, known=CHECK_DEFINITION)
        defn = parse_check_def(f, id_fields=("CheckID", "ID"))
        if not defn.name:
            raise bad_request("Missing check name")
        if defn.status and defn.status not in STATUSES:
            raise bad_request("Bad check status")
        authz = call.authz()
        problem = defn.validate()
        if problem:
            raise bad_request(f"Invalid check: {problem}")
        svc: Service | None = None
        if defn.service_id:
            svc = self.agent.services.get(defn.service_id)
            if svc is None:
                raise not_found(f'ServiceID "{defn.service_id}" does not exist')
        if svc is not None:
            authz.require("service", "write", svc.name)
        else:
            authz.require("node", "write", self.core.node)
        existing = self.agent.checks.get(defn.check_id or defn.name)
        if existing is not None:
            if existing.record.service_name:
                authz.require("service", "write", existing.record.service_name)
            else:
                authz.require("node", "write", self.core.node)
        if defn.args and not self.agent.enable_script_checks:
            raise ApiError(500, SCRIPTS_DISABLED)
        rec = self.agent.check_record(defn, defn.check_id or defn.name, defn.name, svc)
        self.agent.add_check(rec, defn)
        return empty()

    async def check_deregister(self, call: Call) -> Reply:
        self._vet_check_update(call.authz(), call.suffix)
        self.agent.remove_check(call.suffix)
        return empty()

    async def _ttl(self, call: Call, status: str) -> Reply:
        self._vet_check_update(call.authz(), call.suffix)
        self.agent.ttl_update(call.suffix, status, call.param("note"))
        return empty()

    async def check_pass(self, call: Call) -> Reply:
        return await self._ttl(call, PASSING)

    async def check_warn(self, call: Call) -> Reply:
        return await self._ttl(call, WARNING)

    async def check_fail(self, call: Call) -> Reply:
        return await self._ttl(call, CRITICAL)

    async def check_update(self, call: Call) -> Reply:
        f = Fields(await call.json(), "checkUpdate", known=CHECK_UPDATE)
        status = f.string("Status")
        output = f.string("Output")
        if status not in STATUSES:
            raise bad_request(f"Invalid check status: '{status}'")
        self._vet_check_update(call.authz(), call.suffix)
        self.agent.ttl_update(call.suffix, status, output)
        return empty()

    async def token(self, call: Call) -> Reply:
        if not self.acl.enabled:
            raise ApiError(401, "ACL support disabled")
        call.authz().require("agent", "write", self.core.node)
        body = Fields(await call.json(), "AgentToken")
        value = body.string("Token")
        target = call.suffix
        if target in ("acl_token", "default"):
            self.acl.set_default_token(value)
        elif target not in (
            "acl_agent_token", "agent", "acl_agent_master_token", "agent_master", "agent_recovery",
            "acl_replication_token", "replication", "config_file_service_registration", "dns",
        ):  # fmt: skip
            raise not_found(f"Token {target!r} is unknown")
        return empty()

    async def reload(self, call: Call) -> Reply:
        call.authz().require("agent", "write", self.core.node)
        return empty()


def _wants_text(call: Call) -> bool:
    if call.param("format") == "text":
        return True
    return call.request.headers.get("Accept", "").startswith("text/plain")


def _accepts_openmetrics(accept: str) -> bool:
    """Consul's acceptsOpenMetricsMimeType: ``application/openmetrics-text`` or ``text/plain; version=0.4.0``."""
    for mime in accept.split(","):
        parts = mime.split(";")
        raw = parts[0].strip().lower()
        if raw == "application/openmetrics-text":
            return True
        if raw == "text/plain" and len(parts) > 1 and parts[1].strip() == "version=0.4.0":
            return True
    return False


def _health_code(status: str) -> int:
    return {PASSING: 200, WARNING: 429}.get(status, 503)
