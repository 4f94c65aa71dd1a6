"""``/v1/agent/*`` over HTTP: request decoding and validation (whole, before anything changes), the handlers,
``agent/self``, ``agent/members`` and the agent-local health endpoints (consul-api.md section 3)."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from consulgw.devagent.agent import LocalAgent, unknown_check, unknown_service, worst_status
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
)
from consulgw.devagent.errors import ApiError, DecodeError, bad_request, not_found
from consulgw.devagent.http import Call, Reply, Router, empty, text
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


def parse_service_definition(body: Any, node: str) -> tuple[Service, list[CheckDef]]:
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
    if not name:
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
    def __init__(self, core: Core, agent: LocalAgent) -> None:
        self.core = core
        self.agent = agent
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
                "ACLsEnabled": False,
                "ACLDefaultPolicy": "allow",
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
                    "acl": "disabled",
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
            "acls": "0",
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

    async def members(self, call: Call) -> Reply:
        wan = call.has("wan") and call.param("wan") not in ("0", "false")
        return call.reply([self.member(wan=wan)])

    async def services(self, call: Call) -> Reply:
        expr = filter_of(call, self.service_schema)
        dc = self.core.datacenter
        items = sorted(self.agent.services.values(), key=lambda s: s.id)
        rendered = apply_filter(expr, items, lambda s: agent_service_json(s, dc))
        return call.reply({item["ID"]: item for item in rendered})

    async def checks(self, call: Call) -> Reply:
        expr = filter_of(call, self.check_schema)
        items = sorted((lc.record for lc in self.agent.checks.values()), key=lambda c: c.check_id)
        rendered = apply_filter(expr, items, lambda c: check_json(c, indexes=False))
        return call.reply({item["CheckID"]: item for item in rendered})

    async def service(self, call: Call) -> Reply:
        service_id = call.suffix
        opts = call.options()
        wanted = call.param("hash")
        loop_deadline: float | None = None
        while True:
            svc = self.agent.services.get(service_id)
            if svc is None:
                raise not_found(f"unknown service ID: {service_id}")
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
        as_text = _wants_text(call)
        svc = self.agent.services.get(service_id)
        if svc is None:
            reason = f"ServiceId {service_id} not found"
            if as_text:
                return text(404, reason)
            return call.reply({"AggregatedStatus": CRITICAL, "Service": None, "Checks": None}, status=404)
        status, info = self._service_health(svc)
        code = _health_code(status)
        if as_text:
            return text(code, status)
        return call.reply(info, status=code)

    async def health_by_name(self, call: Call) -> Reply:
        name = call.suffix
        if not name:
            raise bad_request("Missing service Name")
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

    # -- writes

    async def service_register(self, call: Call) -> Reply:
        replace_existing = False
        if call.has("replace-existing-checks"):
            raw = call.param("replace-existing-checks")
            replace_existing = raw == "" or parse_bool(raw) is True
        svc, defs = parse_service_definition(await call.json(), self.core.node)
        if not self.agent.enable_script_checks and any(d.args for d in defs):
            raise ApiError(500, SCRIPTS_DISABLED)
        self.agent.add_service(svc, defs, replace_existing=replace_existing)
        return empty()

    async def service_deregister(self, call: Call) -> Reply:
        service_id = call.suffix
        if not self.agent.remove_service(service_id):
            raise unknown_service(service_id)
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
        svc = self.agent.services.get(service_id)
        if svc is None:
            raise unknown_service(service_id)
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
        problem = defn.validate()
        if problem:
            raise bad_request(f"Invalid check: {problem}")
        svc: Service | None = None
        if defn.service_id:
            svc = self.agent.services.get(defn.service_id)
            if svc is None:
                raise not_found(f'ServiceID "{defn.service_id}" does not exist')
        if defn.args and not self.agent.enable_script_checks:
            raise ApiError(500, SCRIPTS_DISABLED)
        rec = self.agent.check_record(defn, defn.check_id or defn.name, defn.name, svc)
        self.agent.add_check(rec, defn)
        return empty()

    async def check_deregister(self, call: Call) -> Reply:
        if not self.agent.remove_check(call.suffix):
            raise unknown_check(call.suffix)
        return empty()

    async def _ttl(self, call: Call, status: str) -> Reply:
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
        self.agent.ttl_update(call.suffix, status, output)
        return empty()

    async def token(self, call: Call) -> Reply:
        raise ApiError(401, "ACL support disabled")

    async def reload(self, call: Call) -> Reply:
        return empty()


def _wants_text(call: Call) -> bool:
    if call.param("format") == "text":
        return True
    return call.request.headers.get("Accept", "").startswith("text/plain")


def _health_code(status: str) -> int:
    return {PASSING: 200, WARNING: 429}.get(status, 503)
