"""``consulgw routes``: the route table the gateway would build, read straight from Consul (no gateway needed).

It does what a gateway does on its first view of Consul, with the same code: ``/v1/catalog/services`` picks the
services that carry route tags (``has_route_tags``), ``/v1/health/service/<name>`` reads each one's instances, the
union of their tags goes through ``parse_service_routes`` and everything through ``RouteTable.build``; the KV
policies under the gateway's prefix decide each service's balancer like in the gateway (policy ``lb``, else
``gw.lb``, else ``round_robin``). Every read is non-blocking (no ``?index=``), over one aiohttp session.

It prints the routes in lookup order with each route's service, methods, strip, balancer and instances (address,
health, effective weight), then every rejected tag with its reason ("why is my service not routed?") and every
conflict. ``--json`` prints one JSON document instead, built like the admin API's ``/-/routes`` (same builder,
consulgw.server.routes_document), with every service.

Settings: ``--consul``/``--token``/``--datacenter`` (or ``CONSUL_HTTP_ADDR``, ``CONSUL_HTTP_TOKEN``,
``CONSUL_DATACENTER``), ``--tag-prefix``/``--tag-compat`` (or ``CONSULGW_TAG_PREFIX``, ``CONSULGW_TAG_COMPAT``, so
the gateway's own environment gives the gateway's own answer), KV prefix from ``CONSULGW_KV_PREFIX``.

Exit 0 when Consul was read (even when tags are rejected), 1 with one line on stderr when it could not be read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import aiohttp

from consulgw.composite.routes import composite_routes
from consulgw.discovery.consul_api import ConsulClient, Result
from consulgw.errors import ConfigError, DiscoveryError
from consulgw.model.balancing import effective_lb
from consulgw.model.snapshot import Instance, ServiceSnapshot
from consulgw.policy.book import build_policy_book
from consulgw.policy.model import CompositePolicy, PolicyBook
from consulgw.redaction import redact_url
from consulgw.routing.rules import FABIO, FABIO_TAG_PREFIX, ServiceRoutes, has_route_tags, parse_service_routes
from consulgw.routing.table import RouteTable
from consulgw.server.routes_document import (
    TAG_CHARS,
    TEXT_CHARS,
    DocumentQuery,
    ServiceFacts,
    routes_document,
    truncate,
)
from consulgw.settings import ConsulSettings, consul_settings

_PARALLEL_READS = 8
_REQUEST_TIMEOUT = 10.0  # connect and read timeout of each (non-blocking) read
_NO_WAIT = 0.001  # reads without ?index= return at once; ``wait`` then only sizes the read timeout


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutesReport:
    """What the gateway would build from one read of Consul."""

    consul: ConsulSettings
    services_index: int
    services_total: int  # every service in the catalog, routed or not
    snapshots: Mapping[str, ServiceSnapshot]  # routed services only
    table: RouteTable
    book: PolicyBook
    kv_error: str | None  # the KV policies could not be read (balancers then come from tags only)
    fabio_ignored: tuple[str, ...] = ()  # services with urlprefix- tags, ignored because compat lacks "fabio"

    def lb(self, service: str) -> str:
        """The balancer the gateway uses: the KV policy's ``lb``, else the ``gw.lb`` tag, else round_robin."""
        routes = self.table.services.get(service)
        return effective_lb(self.book.for_service(service).lb, routes.lb if routes is not None else None)


def main(args: argparse.Namespace) -> int:
    consul = consul_settings(args, os.environ)
    tag_prefix = _pick(args, "tag_prefix", "CONSULGW_TAG_PREFIX") or "gw"
    compat = _compat(_pick(args, "tag_compat", "CONSULGW_TAG_COMPAT") or "")
    kv_prefix = (os.environ.get("CONSULGW_KV_PREFIX") or "consulgw/").lstrip("/")
    if not kv_prefix.endswith("/"):
        kv_prefix += "/"
    try:
        report = asyncio.run(read_routes(consul, tag_prefix=tag_prefix, compat=compat, kv_prefix=kv_prefix))
    except DiscoveryError as exc:
        where = redact_url(consul.address) + (f" (datacenter {consul.datacenter})" if consul.datacenter else "")
        print(f"consulgw routes: error: cannot read Consul at {where}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(as_json(report), indent=2))
    else:
        sys.stdout.write(as_text(report))
    return 0


def _pick(args: argparse.Namespace, attr: str, env: str) -> str | None:
    value = getattr(args, attr, None)
    if value is not None:
        return str(value)
    return os.environ.get(env) or None


def _compat(text: str) -> frozenset[str]:
    items = frozenset(c.strip() for c in text.split(",") if c.strip())
    for item in sorted(items):
        if item != FABIO:
            raise ConfigError(f"--tag-compat / CONSULGW_TAG_COMPAT: {item!r} is not supported (only 'fabio')")
    return items


async def read_routes(
    consul: ConsulSettings, *, tag_prefix: str, compat: frozenset[str], kv_prefix: str
) -> RoutesReport:
    """Read the catalog, the health of each routed service and the KV policies; build the table."""
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=_PARALLEL_READS), timeout=timeout) as http:
        client = ConsulClient(consul, http, request_timeout=_REQUEST_TIMEOUT)
        catalog = await client.catalog_services(wait=_NO_WAIT)
        routed = sorted(
            name for name, tags in catalog.value.items() if has_route_tags(tags, tag_prefix=tag_prefix, compat=compat)
        )
        fabio_ignored = tuple(
            sorted(
                name
                for name, tags in catalog.value.items()
                if FABIO not in compat and any(t.strip().startswith(FABIO_TAG_PREFIX) for t in tags)
            )
        )
        answers = await asyncio.gather(
            *(client.health_service(name, wait=_NO_WAIT) for name in routed), return_exceptions=True
        )  # every read finishes before the session closes; the first failure is reported
        healths: list[Result[tuple[Instance, ...]]] = []
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
            healths.append(answer)
        kv_error: str | None = None
        kv: dict[str, bytes] = {}
        try:
            listing = await client.kv_list(kv_prefix, wait=_NO_WAIT)
        except DiscoveryError as exc:  # e.g. a token without key_prefix read: routes are still right
            kv_error = str(exc)
        else:
            size = len(kv_prefix)
            kv = {key[size:]: value for key, value in listing.value.items() if key.startswith(kv_prefix) and key[size:]}
    snapshots = {
        name: ServiceSnapshot(
            name=name, index=max(result.index, 1), instances=tuple(sorted(result.value, key=lambda i: i.id))
        )
        for name, result in zip(routed, healths, strict=True)
    }
    parsed: list[ServiceRoutes] = [
        parse_service_routes(name, snap.tags, tag_prefix=tag_prefix, compat=compat, datacenter=snap.datacenter)
        for name, snap in snapshots.items()
    ]
    book = build_policy_book(kv, previous=None, prefix=kv_prefix)
    return RoutesReport(
        consul=consul,
        services_index=max(catalog.index, 1),
        services_total=len(catalog.value),
        snapshots=MappingProxyType(snapshots),
        table=RouteTable.build([*parsed, *composite_routes(book.composites)]),
        book=book,
        kv_error=kv_error,
        fabio_ignored=fabio_ignored,
    )


# -- output ---------------------------------------------------------------------------------------------------------


def as_json(report: RoutesReport) -> dict[str, Any]:
    """The report as one JSON document, built like the admin API's ``/-/routes`` (consulgw.server.routes_document)
    with every service (nobody polls the CLI), without the gateway's runtime counters, plus ``consul`` read facts."""
    facts = {
        name: ServiceFacts(
            snapshot=snap,
            routes=report.table.services.get(name) or ServiceRoutes(service=name),
            lb=report.lb(name),
            policy=report.book.for_service(name),
        )
        for name, snap in report.snapshots.items()
    }
    document = routes_document(
        table=report.table,
        services=facts,
        policy_errors=report.book.errors,
        composites=report.book.composites,
        query=DocumentQuery(limit=None),
    )
    return {
        "consul": {
            "address": redact_url(report.consul.address),
            "datacenter": report.consul.datacenter,
            "services_index": report.services_index,
            "services_total": report.services_total,
            "services_routed": len(report.snapshots),
            "kv_error": report.kv_error,
            "fabio_tags_ignored": list(report.fabio_ignored),
        },
        **document,
    }


def as_text(report: RoutesReport) -> str:
    """The report for people: routes in lookup order with their instances, then rejected tags and conflicts."""
    table = report.table
    dc = report.consul.datacenter or "the agent's datacenter"
    lines = [
        f"Consul {redact_url(report.consul.address)} ({dc}), services index {report.services_index}: "
        f"{report.services_total} services, {len(report.snapshots)} with route tags",
        "",
        f"Routes, in lookup order ({len(table.routes)}):",
    ]
    if not table.routes:
        lines.append("  (none)")
    composites = {c.label: c for c in report.book.composites.values()}
    for route in table.routes:
        methods = ",".join(sorted(route.methods)) if route.methods else "any"
        composite = composites.get(route.service)
        if composite is not None:  # a composite route (KV composites/<name>): its calls instead of instances
            lines.append(f"  {route.label}  ->  {route.service}   methods {methods}   from {route.tag}")
            lines.extend(_call_lines(composite, report))
            continue
        lines.append(
            f"  {route.label}  ->  {route.service}   methods {methods}   strip {route.strip or '-'}"
            f"   lb {report.lb(route.service)}   tag {truncate(route.tag, TAG_CHARS)!r}"
        )
        lines.extend(_instance_lines(report.snapshots[route.service].instances))
    unrouted = [name for name in sorted(report.snapshots) if not table.routes_of(name)]
    if unrouted:
        lines += ["", "Services with route tags but no route:"]
        for name in unrouted:
            lines.append(f"  {name}: every route tag was rejected or lost a conflict (see below)")
            lines.extend(_instance_lines(report.snapshots[name].instances))
    lines += ["", f"Rejected tags ({len(table.errors)}):"]
    lines += [
        f"  {e.service}: {truncate(e.tag, TAG_CHARS)!r}: {truncate(e.reason, TEXT_CHARS)}" for e in table.errors
    ] or ["  (none)"]
    lines += ["", f"Conflicts ({len(table.conflicts)}):"]
    lines += [f"  {c.message}" for c in table.conflicts] or ["  (none)"]
    if report.book.errors:
        lines += ["", f"Rejected policies ({len(report.book.errors)}):"]
        lines += [f"  {key}: {truncate(reason, TEXT_CHARS)}" for key, reason in sorted(report.book.errors.items())]
    if report.fabio_ignored:
        names = ", ".join(report.fabio_ignored)
        lines += ["", f"Note: Fabio urlprefix- tags on {names} are ignored; add --tag-compat fabio to read them"]
    if report.kv_error:
        lines += ["", f"Note: KV policies not read ({report.kv_error}); balancers shown come from tags only"]
    return "\n".join(lines) + "\n"


def _call_lines(composite: CompositePolicy, report: RoutesReport) -> list[str]:
    lines = []
    for call in composite.calls:
        kind = "required" if call.required else "optional"
        routed = "" if call.service in report.snapshots else "   (service not routed: the call fails)"
        lines.append(f"      call {call.name}: {call.service} {call.path.text}   {kind}{routed}")
    return lines


def _instance_lines(instances: Sequence[Instance]) -> list[str]:
    if not instances:
        return ["      (no instances registered)"]
    in_pool = sum(1 for i in instances if i.weight > 0)
    lines = [
        f"      {i.id}  {i.scheme}://{i.endpoint}  {i.health.value}  weight {i.weight}"
        + ("" if i.weight > 0 else "  (out of the pool)")
        for i in instances
    ]
    if in_pool == 0:
        lines.append("      no instance takes traffic: requests get 503 no_healthy_upstream")
    return lines
