"""Config entries (``/v1/config``): stored, versioned and listed like Consul's, with check-and-set.

The dev agent keeps the entries (service-defaults, proxy-defaults, ...) so clients can write and read them back;
nothing in the agent acts on them (there is no service mesh here), except that ingress and terminating gateway
entries answer ``/v1/catalog/gateway-services/<gateway>``.

ACLs: entries named after a service (service-defaults, router, splitter, resolver, intentions, gateways) need
``service:read`` / ``service:write`` on that name; the mesh-wide kinds (proxy-defaults, mesh, ...) are readable by
anyone and need ``mesh:write`` (which falls back to ``operator:write``) to change.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from consulgw.devagent.blocking import Answer, parse_uint64
from consulgw.devagent.core import Core, Tally
from consulgw.devagent.errors import DecodeError, bad_request, server_error
from consulgw.devagent.http import Call, Reply, Router

KINDS = frozenset(
    {
        "service-defaults", "proxy-defaults", "service-router", "service-splitter", "service-resolver",
        "ingress-gateway", "terminating-gateway", "service-intentions", "mesh", "exported-services",
        "sameness-group", "api-gateway", "bound-api-gateway", "http-route", "tcp-route", "inline-certificate",
        "file-system-certificate", "jwt-provider", "control-plane-request-limit", "registration",
    }
)  # fmt: skip
TOPIC = "config-entries"
SERVICE_KINDS = frozenset(
    {
        "service-defaults", "service-router", "service-splitter", "service-resolver", "service-intentions",
        "ingress-gateway", "terminating-gateway", "api-gateway", "bound-api-gateway",
    }
)  # fmt: skip
GATEWAY_KINDS = ("ingress-gateway", "terminating-gateway")


def _can_read(call: Call, kind: str, name: str) -> bool:
    if kind in SERVICE_KINDS:
        return call.authz().allows("service", "read", name)
    return True


def _require_write(call: Call, kind: str, name: str) -> None:
    if kind in SERVICE_KINDS:
        call.authz().require("service", "write", name)
    else:
        call.authz().require("mesh", "write")


def _get(body: dict[str, Any], key: str) -> Any:
    folded = key.lower()
    for k, v in body.items():
        if k.lower().replace("_", "") == folded:
            return v
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigEntry:
    kind: str
    name: str
    body: dict[str, Any]
    create_index: int = 0
    modify_index: int = 0

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"Kind": self.kind, "Name": self.name}
        out.update((k, v) for k, v in self.body.items() if k.lower() not in ("kind", "name"))
        out["CreateIndex"] = self.create_index
        out["ModifyIndex"] = self.modify_index
        return out


class ConfigEndpoints:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.entries: dict[tuple[str, str], ConfigEntry] = {}
        self.table_index = 0

    def register(self, router: Router) -> None:
        router.add("/v1/config", ("PUT",), self.apply)
        router.add("/v1/config/", ("GET", "DELETE"), self.dispatch)

    def _commit(self) -> int:
        """Config entries share the Raft index with everything else."""
        with self.core.store.write() as tx:
            index = tx.index
        self.table_index = index
        self.core.store.watch.notify([TOPIC])
        return index

    def _cas(self, call: Call) -> int | None:
        if not call.has("cas"):
            return None
        value = parse_uint64(call.param("cas"))
        if value is None:
            raise bad_request(f"Invalid cas value: {call.param('cas')!r}")
        return value

    async def apply(self, call: Call) -> Reply:
        self.core.check_dc(call)
        body = await call.json()
        if not isinstance(body, dict):
            raise DecodeError("json: cannot unmarshal into Go value of type structs.ConfigEntry")
        fields = {k.lower(): v for k, v in body.items()}
        kind, name = fields.get("kind"), fields.get("name")
        if not isinstance(kind, str) or not kind:
            raise DecodeError("Payload does not contain a kind/Kind key at the top level")
        if kind not in KINDS:
            raise DecodeError(f"invalid config entry kind: {kind}")
        if not isinstance(name, str) or not name:
            raise server_error("Name is required")
        _require_write(call, kind, name)
        cas = self._cas(call)
        old = self.entries.get((kind, name))
        if cas is not None and (
            (cas == 0 and old is not None) or (cas != 0 and (old is None or old.modify_index != cas))
        ):
            return call.reply(False)
        entry = ConfigEntry(kind=kind, name=name, body=dict(body))
        if old is not None and old.body == entry.body:
            return call.reply(True)
        index = self._commit()
        self.entries[(kind, name)] = replace(entry, create_index=old.create_index if old else index, modify_index=index)
        return call.reply(True)

    async def dispatch(self, call: Call) -> Reply:
        kind, _, name = call.suffix.partition("/")
        if not kind:
            raise bad_request("Must provide either a kind or both kind and name")
        if call.request.method == "DELETE":
            return await self.delete(call, kind, name)
        opts = self.core.read_options(call)

        if name and not _can_read(call, kind, name):
            call.authz().require("service", "read", name)
        tally = Tally()

        def query() -> Answer:
            if name:
                entry = self.entries.get((kind, name))
                return Answer(
                    index=self.table_index, topics=(TOPIC,), found=entry is not None,
                    render=lambda: entry.json() if entry is not None else None,
                )  # fmt: skip
            found = [e for (k, n), e in sorted(self.entries.items()) if k == kind and tally.keep(_can_read(call, k, n))]
            return Answer(index=self.table_index, topics=(TOPIC,), render=lambda: [e.json() for e in found])

        answer = await self.core.blocking(opts, query)
        if not answer.found:
            reply = call.reply_meta(None, answer.index, opts, status=404)
            reply.body = f"Config entry not found for {kind!r} / {name!r}".encode()
            reply.content_type = "text/plain; charset=utf-8"
            return reply
        return call.reply_meta(answer.value, answer.index, opts, filtered=tally.removed)

    async def delete(self, call: Call, kind: str, name: str) -> Reply:
        self.core.check_dc(call)
        if not name:
            raise bad_request("Must provide both a kind and name to delete")
        _require_write(call, kind, name)
        cas = self._cas(call)
        old = self.entries.get((kind, name))
        if cas is not None and (old is None or old.modify_index != cas):
            return call.reply(False)
        if old is not None:
            del self.entries[(kind, name)]
            self._commit()
        if cas is not None:
            return call.reply(True)
        return call.reply({})

    def gateway_services(self, gateway: str) -> list[dict[str, Any]]:
        """Consul's GatewayServices for ``gateway``: one mapping per service its ingress/terminating entry links."""
        out: list[dict[str, Any]] = []
        for kind in GATEWAY_KINDS:
            entry = self.entries.get((kind, gateway))
            if entry is None:
                continue
            index = {"CreateIndex": entry.create_index, "ModifyIndex": entry.modify_index}
            if kind == "terminating-gateway":
                for svc in _get(entry.body, "Services") or []:
                    if not isinstance(svc, dict) or not isinstance(_get(svc, "Name"), str):
                        continue
                    mapping: dict[str, Any] = {
                        "Gateway": {"Name": gateway},
                        "Service": {"Name": _get(svc, "Name")},
                        "GatewayKind": kind,
                    }
                    for field in ("CAFile", "CertFile", "KeyFile", "SNI"):
                        if _get(svc, field):
                            mapping[field] = _get(svc, field)
                    out.append({**mapping, **index})
                continue
            for listener in _get(entry.body, "Listeners") or []:
                if not isinstance(listener, dict):
                    continue
                for svc in _get(listener, "Services") or []:
                    if not isinstance(svc, dict) or not isinstance(_get(svc, "Name"), str):
                        continue
                    mapping = {
                        "Gateway": {"Name": gateway},
                        "Service": {"Name": _get(svc, "Name")},
                        "GatewayKind": kind,
                    }
                    if _get(listener, "Port"):
                        mapping["Port"] = _get(listener, "Port")
                    mapping["Protocol"] = _get(listener, "Protocol") or "tcp"
                    if _get(svc, "Hosts"):
                        mapping["Hosts"] = _get(svc, "Hosts")
                    out.append({**mapping, **index})
        out.sort(key=lambda m: (m["Service"]["Name"], m.get("Port", 0)))
        return out
