"""One service's OpenAPI document, seen through the route table: what a client can call, and how.

The route table is the truth. For each operation at upstream path ``U`` (the document's path under its server's
base path) and each winning route ``R`` of the service, the client path is ``R.strip + U`` (or ``U`` without a
strip). The operation is exposed there only if the table itself, asked for that path, host and method, answers
with ``R`` and the same upstream path: longer prefixes of other services, method filters and host routes are all
taken into account by the one lookup the proxy uses. Operations no route reaches are dropped and listed.

Everything a client needs to know about the gateway replaces what the service says about itself:

- ``security``: the service's own schemes go; the gateway's ``auth`` becomes the one scheme (jwt -> HTTP bearer
  JWT, api_key -> apiKey in its header, basic -> HTTP basic, introspection -> HTTP bearer), with the policy's
  required scopes;
- ``servers``: host routes become per-operation servers; any-host routes use the gateway's own server;
- names: components become ``<service>.<name>`` (every ``$ref`` and discriminator mapping rewritten), operationIds
  ``<service>.<id>``, tags ``<service>.<tag>`` (untagged operations get the service's name);
- an OpenAPI 3.0 document's schemas are brought to 3.1 (``nullable``, boolean ``exclusiveMinimum/Maximum``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from consulgw.errors import InvalidPath
from consulgw.openapi.document import METHODS, check_document
from consulgw.routing.path import canonical_path
from consulgw.routing.rules import RouteSpec
from consulgw.routing.table import MatchKind, RouteTable

_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_SERVER_VARIABLE = re.compile(r"\{([^{}]*)\}")
_PROBE_LABEL = "consulgw-openapi-probe"  # stands for "any subdomain" when a wildcard host route is probed
_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceApi:
    """A service's operations as the gateway exposes them, ready to merge."""

    service: str
    title: str
    version: str
    description: str | None = None
    paths: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: _EMPTY)  # client path -> method -> op
    components: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: _EMPTY)
    security_schemes: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    tags: tuple[Mapping[str, Any], ...] = ()
    operations: int = 0  # operations in the service's document
    exposed: int = 0  # operations in ``paths`` (one reachable at two paths counts twice)
    unrouted: tuple[str, ...] = ()  # "GET /internal/stats", as the service documents it


def namespace(service: str) -> str:
    """The prefix of a service's component names and operationIds (``[A-Za-z0-9_-]``, as OpenAPI allows)."""
    return _NAME_CHARS.sub("_", service) or "_"


def host_server(host: str, scheme: str) -> dict[str, Any]:
    """The ``servers`` entry of a host route (``*.example.com`` becomes a ``{subdomain}`` variable)."""
    variables: dict[str, Any] = {"scheme": {"default": scheme, "enum": ["http", "https"]}}
    if host.startswith("*."):
        variables["subdomain"] = {"default": "api", "description": f"any name under {host[2:]}"}
        url = "{scheme}://{subdomain}." + host[2:]
    else:
        url = "{scheme}://" + host
    return {"url": url, "description": f"routes for host {host}", "variables": variables}


def rewrite_service(
    service: str,
    doc: Mapping[str, Any],
    *,
    table: RouteTable,
    auth: object | None,
    gateway_server: Mapping[str, Any],
    scheme: str = "http",
) -> ServiceApi:
    """Rewrite one service's (checked) document against ``table``; ``auth`` is the service's ``AuthPolicy``."""
    v30 = check_document(doc) == "3.0"
    ns = namespace(service)
    info = doc.get("info", {})
    components: dict[str, dict[str, Any]] = {}
    for kind, entries in doc.get("components", {}).items():
        if kind == "securitySchemes" or not isinstance(entries, Mapping) or kind.startswith("x-"):
            continue
        components[kind] = {f"{ns}.{name}": _transform(value, ns, v30) for name, value in entries.items()}
    schemes, requirement = security_for(auth, ns)
    base = _base_path(doc.get("servers"))
    routes = table.routes_of(service)

    paths: dict[str, dict[str, Any]] = {}
    unrouted: list[str] = []
    operations = exposed = 0
    ids: dict[str, int] = {}
    tags_used: dict[str, None] = {}
    for raw_path, raw_item in doc.get("paths", {}).items():
        item = _transform(raw_item, ns, v30)
        if isinstance(item.get("$ref"), str):
            item = {**_resolve(item["$ref"], components), **{k: v for k, v in item.items() if k != "$ref"}}
        shared_parameters = item.get("parameters", [])
        item_base = _base_path(item.get("servers"), base)
        for method in METHODS:
            operation = item.get(method)
            if not isinstance(operation, Mapping):
                continue
            operations += 1
            upstream = _join(_base_path(operation.get("servers"), item_base), raw_path)
            found = _exposures(table, routes, upstream, method.upper())
            if not found:
                unrouted.append(f"{method.upper()} {upstream}")
                continue
            for client_path, (hosts, labels) in found.items():
                op = dict(operation)
                op.pop("servers", None)
                parameters = _parameters(shared_parameters, op.get("parameters", []))
                if parameters:
                    op["parameters"] = parameters
                if isinstance(op.get("operationId"), str):
                    op["operationId"] = _unique_id(f"{ns}.{op['operationId']}", ids)
                tags = [f"{service}.{t}" for t in op.get("tags", []) if isinstance(t, str)] or [service]
                op["tags"] = tags
                tags_used.update(dict.fromkeys(tags))
                op.pop("security", None)
                if requirement is not None:
                    op["security"] = requirement
                if hosts != {None}:
                    op["servers"] = [
                        dict(gateway_server) if h is None else host_server(h, scheme)
                        for h in sorted(hosts, key=lambda h: (h is None, h or ""))
                    ]
                op["x-consulgw-routes"] = sorted(labels)
                paths.setdefault(client_path, {})[method] = op
                exposed += 1
    return ServiceApi(
        service=service,
        title=str(info.get("title") or service),
        version=str(info.get("version", "")),
        description=info.get("description") if isinstance(info.get("description"), str) else None,
        paths=paths,
        components=components,
        security_schemes=schemes,
        tags=_tags(service, info, doc.get("tags"), tags_used),
        operations=operations,
        exposed=exposed,
        unrouted=tuple(unrouted),
    )


def security_for(auth: object | None, ns: str) -> tuple[dict[str, Any], list[dict[str, list[str]]] | None]:
    """(securitySchemes, the requirement every operation gets) for a service's auth policy; ``None``: public."""
    if auth is None:
        return {}, None
    kind = str(getattr(auth, "type", ""))
    header = str(getattr(auth, "header", "Authorization") or "Authorization")
    scopes = sorted(str(s) for s in getattr(auth, "required_scopes", ()) or ())
    scheme: dict[str, Any]
    if kind == "jwt":
        if header.lower() == "authorization":
            scheme = {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
        else:
            scheme = {"type": "apiKey", "in": "header", "name": header}
        scheme["description"] = "A JWT, verified by the gateway."
    elif kind == "api_key":
        scheme = {"type": "apiKey", "in": "header", "name": header, "description": "An API key of a consumer."}
    elif kind == "basic":
        scheme = {"type": "http", "scheme": "basic", "description": "A consumer's name and password."}
    elif kind == "introspection":
        scheme = {
            "type": "http",
            "scheme": "bearer",
            "description": "An OAuth2 access token, checked by the gateway with token introspection (RFC 7662).",
        }
    else:
        scheme = {"type": "http", "scheme": "bearer", "description": f"Checked by the gateway ({kind or 'auth'})."}
    name = f"{ns}.{kind or 'auth'}"
    return {name: scheme}, [{name: scopes}]


# -- exposures ---------------------------------------------------------------------------------------------------


def _exposures(
    table: RouteTable, routes: Sequence[RouteSpec], upstream: str, method: str
) -> dict[str, tuple[set[str | None], set[str]]]:
    """client path -> (hosts, route labels) where the table sends ``method upstream`` to this service."""
    found: dict[str, tuple[set[str | None], set[str]]] = {}
    for route in routes:
        if route.methods is not None and method not in route.methods:
            continue
        strip = route.strip
        client = upstream if strip is None else (strip if upstream == "/" else strip + upstream)
        try:
            match = table.lookup(_probe_host(route.host), _encode(client), method)
        except InvalidPath:
            continue  # a documented path no client could send as such
        if match.kind is not MatchKind.FOUND or match.route != route or match.upstream_path != _encode(upstream):
            continue
        hosts, labels = found.setdefault(client, (set(), set()))
        hosts.add(route.host)
        labels.add(route.label)
    return found


def _probe_host(host: str | None) -> str | None:
    if host is not None and host.startswith("*."):
        return f"{_PROBE_LABEL}.{host[2:]}"
    return host


def _encode(path: str) -> str:
    """A documented path as it travels on the wire, in the canonical form the route table matches and forwards
    (``consulgw.routing.path``): non-ASCII as %XX; a path that has no canonical form comes back as it is."""
    wire = "".join(
        char if char.isascii() and char.isprintable() else "".join(f"%{b:02X}" for b in char.encode("utf-8"))
        for char in path
    )
    try:
        return canonical_path(wire).path
    except InvalidPath:
        return wire


def _join(base: str, path: str) -> str:
    return base + path if base else path


def _base_path(servers: object, default: str = "") -> str:
    """The path part of the first server's URL (variables at their defaults), without a trailing slash."""
    if not isinstance(servers, list) or not servers or not isinstance(servers[0], Mapping):
        return default
    server = servers[0]
    url = server.get("url")
    if not isinstance(url, str):
        return default
    variables = server.get("variables") if isinstance(server.get("variables"), Mapping) else {}

    def value(match: re.Match[str]) -> str:
        variable = variables.get(match.group(1)) if variables else None
        return str(variable.get("default", "")) if isinstance(variable, Mapping) else ""

    url = _SERVER_VARIABLE.sub(value, url)
    try:
        path = urlsplit(url).path if "://" in url or url.startswith("//") else url.split("?", 1)[0]
    except ValueError:
        return default
    path = path.rstrip("/")
    return path if path.startswith("/") else ("/" + path if path else "")


# -- names and references ----------------------------------------------------------------------------------------


def _transform(value: Any, ns: str, v30: bool) -> Any:
    """A deep copy with component references namespaced (and, for 3.0, schemas brought to 3.1)."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key == "$ref" and isinstance(item, str):
                out[key] = _ref(item, ns)
            elif key == "discriminator" and isinstance(item, Mapping):
                out[key] = _discriminator(item, ns, v30)
            elif key == "links" and isinstance(item, Mapping):
                out[key] = {name: _link(link, ns, v30) for name, link in item.items()}
            else:
                out[key] = _transform(item, ns, v30)
        if v30:
            _upgrade_schema(out)
        return out
    if isinstance(value, list):
        return [_transform(item, ns, v30) for item in value]
    return value


def _ref(ref: str, ns: str) -> str:
    prefix = "#/components/"
    if not ref.startswith(prefix):
        return ref
    kind, sep, tail = ref[len(prefix) :].partition("/")
    if not sep or not tail:
        return ref
    return f"{prefix}{kind}/{ns}.{tail}"


def _discriminator(value: Mapping[str, Any], ns: str, v30: bool) -> dict[str, Any]:
    out = _transform(value, ns, v30)
    mapping = value.get("mapping")
    if isinstance(mapping, Mapping):
        out["mapping"] = {
            k: (_ref(v, ns) if v.startswith("#") else f"{ns}.{v}" if "/" not in v else v) if isinstance(v, str) else v
            for k, v in mapping.items()
        }
    return dict(out)


def _link(value: Any, ns: str, v30: bool) -> Any:
    out = _transform(value, ns, v30)
    if isinstance(out, dict) and isinstance(out.get("operationId"), str):
        out["operationId"] = f"{ns}.{out['operationId']}"
    return out


def _upgrade_schema(schema: dict[str, Any]) -> None:
    """OpenAPI 3.0 schema keywords that mean something else (or nothing) in 3.1 / JSON Schema 2020-12."""
    nullable = schema.get("nullable")
    if isinstance(nullable, bool):
        del schema["nullable"]
        if nullable:
            kind = schema.get("type")
            if isinstance(kind, str):
                schema["type"] = [kind, "null"]
            enum = schema.get("enum")
            if isinstance(enum, list) and None not in enum:
                schema["enum"] = [*enum, None]
    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        flag = schema.get(bound)
        if isinstance(flag, bool):
            del schema[bound]
            number = schema.get(limit)
            if flag and isinstance(number, int | float) and not isinstance(number, bool):
                schema[bound] = schema.pop(limit)


def _resolve(ref: str, components: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    prefix = "#/components/pathItems/"
    if ref.startswith(prefix):
        found = components.get("pathItems", {}).get(ref[len(prefix) :])
        if isinstance(found, Mapping):
            return dict(found)
    return {}


def _parameters(shared: object, own: object) -> list[Any]:
    """Path-item parameters pushed into the operation (the operation's own win on name + location)."""
    own_list = own if isinstance(own, list) else []
    keys = {_param_key(p) for p in own_list}
    inherited = [p for p in (shared if isinstance(shared, list) else []) if _param_key(p) not in keys]
    return [*inherited, *own_list]


def _param_key(param: object) -> tuple[str, str]:
    if isinstance(param, Mapping):
        if isinstance(param.get("$ref"), str):
            return ("$ref", param["$ref"])
        return (str(param.get("name")), str(param.get("in")))
    return ("?", repr(param))


def _unique_id(candidate: str, used: dict[str, int]) -> str:
    count = used.get(candidate, 0) + 1
    used[candidate] = count
    return candidate if count == 1 else f"{candidate}_{count}"


def _tags(
    service: str, info: Mapping[str, Any], declared: object, used: Mapping[str, None]
) -> tuple[dict[str, Any], ...]:
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    if service in used:
        description = info.get("description") if isinstance(info.get("description"), str) else None
        title = str(info.get("title") or service)
        out.append({"name": service, "description": description or title})
        seen.add(service)
    for tag in declared if isinstance(declared, list) else []:
        if isinstance(tag, Mapping) and isinstance(tag.get("name"), str):
            name = f"{service}.{tag['name']}"
            if name in used and name not in seen:
                out.append({k: v for k, v in tag.items() if k not in ("name", "parent")} | {"name": name})
                seen.add(name)
    out.extend({"name": name} for name in used if name not in seen)
    return tuple(out)
