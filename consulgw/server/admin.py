"""The admin listener: liveness, readiness, the route table as JSON, Prometheus metrics, the dashboard and its
time series, and the API documentation (OpenAPI documents and the interactive reference page)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from aiohttp import web

from consulgw.clock import Clock
from consulgw.discovery.watcher import WatcherStatus
from consulgw.metrics import GatewayMetrics
from consulgw.model.snapshot import Instance
from consulgw.openapi.catalog import OpenApiCatalog
from consulgw.policy.model import ServicePolicy
from consulgw.redaction import REDACTED, is_secret_name
from consulgw.routing.table import RouteTable
from consulgw.server.consul_status import kv_denied, sync_age
from consulgw.server.history import TrafficHistory
from consulgw.server.routes_document import (
    DocumentQuery,
    QueryError,
    Runtime,
    ServiceFacts,
    parse_query,
    routes_document,
)
from consulgw.server.traffic_document import traffic_facts
from consulgw.server.view import GatewayView
from consulgw.traffic.failover import FailoverBoard
from consulgw.upstream.breaker import BreakerBoard
from consulgw.upstream.pool import UpstreamPools


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminDeps:
    view: Callable[[], GatewayView | None]
    status: Callable[[], WatcherStatus]
    pools: UpstreamPools
    breakers: BreakerBoard
    metrics: GatewayMetrics
    clock: Clock
    max_staleness: float
    listening: Callable[[], bool] = lambda: True  # the public listener accepts connections
    openapi: OpenApiCatalog | None = None  # /-/openapi.json, /-/openapi/<service>.json, /-/docs
    history: TrafficHistory | None = None  # /-/timeseries (the dashboard's charts)
    record_consul: Callable[[], None] = lambda: None  # bring the watcher's status into the metrics (at scrape time)
    failover: FailoverBoard | None = None  # which datacenter serves each failed-over service (/-/routes)


_ROUTES_CHEAP = 0.02  # a /-/routes render faster than this is never reused
_ROUTES_REUSE = 10  # an expensive render is served again for up to this many times its own cost


def create_admin_app(deps: AdminDeps) -> web.Application:
    app = web.Application()

    async def healthy(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(_: web.Request) -> web.Response:
        view = deps.view()
        status = deps.status()
        age = sync_age(status, deps.clock)
        if view is None or not view.snapshot.complete:
            return web.json_response({"ready": False, "reason": "first view of Consul not loaded yet"}, status=503)
        if not deps.listening():
            return web.json_response({"ready": False, "reason": "public listener not open yet"}, status=503)
        if age is None or age > deps.max_staleness:
            reason = (
                f"view of Consul is {age:.1f}s old (budget {deps.max_staleness:g}s)"
                if age is not None
                else "no contact"
            )
            return web.json_response({"ready": False, "reason": reason, "sync_age_seconds": age}, status=503)
        return web.json_response({"ready": True, "sync_age_seconds": age, "version": view.version})

    rendered: list[tuple[float, float, bytes]] = []  # (rendered at, seconds it took, body): the last plain render

    async def routes(request: web.Request) -> web.Response:
        # Rendering runs on the event loop that serves traffic. The document is bounded (a page of services, see
        # consulgw.server.routes_document); a plain render (no query) that was expensive is still reused for up
        # to ten times its own cost, so dashboards and scrapers together never take more than about a tenth of it.
        try:
            query = parse_query({k: request.query.getall(k) for k in request.query})
        except QueryError as exc:
            return web.json_response({"error": "bad_query", "message": str(exc)}, status=400)
        plain = not request.query_string
        now = deps.clock.monotonic()
        if plain and rendered:
            at, cost, body = rendered[0]
            if cost > _ROUTES_CHEAP and now - at < _ROUTES_REUSE * cost:
                return web.Response(body=body, content_type="application/json")
        body = json.dumps(describe(deps, query)).encode()  # one line: indentation doubled the size and the time
        if plain:
            rendered[:] = [(now, deps.clock.monotonic() - now, body)]
        return web.Response(body=body, content_type="application/json")

    async def metrics(_: web.Request) -> web.Response:
        # Discovery does not know about metrics (one-way imports): its status is brought over at scrape time.
        deps.record_consul()
        return web.Response(body=deps.metrics.render(), headers={"Content-Type": deps.metrics.content_type})

    async def dashboard(_: web.Request) -> web.Response:
        page = resources.files("consulgw.server").joinpath("dashboard.html").read_text(encoding="utf-8")
        return web.Response(text=page, content_type="text/html", headers={"Cache-Control": "no-store"})

    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    app.router.add_get("/-/routes", routes)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", dashboard)
    add_openapi_routes(app, deps)
    add_dashboard_routes(app, deps)
    return app


# -- the dashboard's data ----------------------------------------------------------------------------------------

MAX_TIMESERIES_SERVICES = 20  # services per /-/timeseries answer: the answer stays small whatever the gateway holds


def add_dashboard_routes(app: web.Application, deps: AdminDeps) -> None:
    no_store = {"Cache-Control": "no-store"}

    async def timeseries(request: web.Request) -> web.Response:
        history = deps.history
        if history is None:
            return web.json_response({"error": "not_enabled", "message": "no time series in this process"}, status=404)
        named = request.query.getall("service", [])
        try:
            points = int(request.query.get("points", history.points))
            limit = int(request.query.get("limit", 12))
        except ValueError:
            return web.json_response({"error": "bad_request", "message": "points and limit are integers"}, status=400)
        data = history.snapshot(
            named or None,
            limit=max(1, min(limit, MAX_TIMESERIES_SERVICES)),
            points=max(1, min(points, history.points)),
        )
        return web.Response(body=json.dumps(data).encode(), content_type="application/json", headers=no_store)

    async def policy(request: web.Request) -> web.Response:
        service = request.match_info["service"]
        view = deps.view()
        entry = view.services.get(service) if view is not None else None
        if entry is None:
            return web.json_response(
                {"error": "no_service", "message": f"{service!r} is not a routed service"}, status=404, headers=no_store
            )
        return web.json_response({"service": service, "policy": policy_document(entry.policy)}, headers=no_store)

    app.router.add_get("/-/timeseries", timeseries)
    app.router.add_get("/-/policy/{service}", policy)


def policy_document(policy: ServicePolicy) -> dict[str, Any]:
    """The whole effective policy as JSON, with every secret replaced by the logs' ``[redacted]``.

    Secrets are found the way log lines find them (``consulgw.redaction.is_secret_name``), on field names and on header
    names: header lists become ``{name: value}`` objects first, so ``Authorization`` set by a header rule is masked
    like a JWT ``secret``.
    """
    return dict(_redact(dataclasses.asdict(policy)))


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: REDACTED if is_secret_name(str(k)) and v is not None else _redact(v) for k, v in value.items()}
    if isinstance(value, tuple | list) and value and all(_is_header_pair(v) for v in value):
        return _redact(dict(value))
    if isinstance(value, frozenset | set):
        return sorted(_redact(v) for v in value)
    if isinstance(value, tuple | list):
        return [_redact(v) for v in value]
    return value


def _is_header_pair(value: object) -> bool:
    return isinstance(value, tuple | list) and len(value) == 2 and all(isinstance(v, str) for v in value)


# -- API documentation -------------------------------------------------------------------------------------------

_DOCS_ASSETS = {  # name -> content type; the only files /-/docs/<name> serves (consulgw/openapi/assets)
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "LICENSE": "text/plain",
    "NOTICE": "text/plain",
    "swagger-ui-bundle.js.LICENSE.txt": "text/plain",
    "VENDORED.md": "text/plain",
}


def add_openapi_routes(app: web.Application, deps: AdminDeps) -> None:
    catalog = deps.openapi
    no_store = {"Cache-Control": "no-store"}

    async def merged(_: web.Request) -> web.Response:
        body = catalog.merged_json() if catalog is not None else b'{"error": "openapi is not enabled"}'
        return web.Response(body=body, content_type="application/json", headers=no_store)

    async def one(request: web.Request) -> web.Response:
        service = request.match_info["service"]
        body = catalog.service_json(service) if catalog is not None else None
        if body is None:
            reason = {"error": "no_document", "message": f"no OpenAPI document for service {service!r} (yet)"}
            return web.json_response(reason, status=404, headers=no_store)
        return web.Response(body=body, content_type="application/json", headers=no_store)

    async def docs(_: web.Request) -> web.Response:
        page = resources.files("consulgw.openapi").joinpath("docs.html").read_text(encoding="utf-8")
        return web.Response(text=page, content_type="text/html", headers=no_store)

    async def docs_slash(_: web.Request) -> web.Response:
        raise web.HTTPFound("../docs")  # the page's links are relative to /-/docs

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        content_type = _DOCS_ASSETS.get(name)
        if content_type is None:
            raise web.HTTPNotFound()
        data = resources.files("consulgw.openapi").joinpath("assets", "swagger-ui", name).read_bytes()
        return web.Response(body=data, content_type=content_type, headers={"Cache-Control": "max-age=3600"})

    app.router.add_get("/-/openapi.json", merged)
    app.router.add_get("/-/openapi/{service}.json", one)
    app.router.add_get("/-/docs", docs)
    app.router.add_get("/-/docs/", docs_slash)
    app.router.add_get("/-/docs/{name}", asset)


def describe(deps: AdminDeps, query: DocumentQuery | None = None) -> dict[str, Any]:
    """The state as one JSON document (the dashboard and `/-/routes` consumers read this): the view's version, what
    the watcher knows of Consul, and the route document (consulgw.server.routes_document) with runtime counters."""
    view = deps.view()
    status = deps.status()
    consul = {
        "reachable": status.consul_reachable,
        "complete": status.complete,
        "services_index": status.services_index,
        "kv_index": status.kv_index,
        "watches": status.watches,
        "errors_total": status.errors_total,
        "sync_age_seconds": sync_age(status, deps.clock),
        "max_conns": status.max_conns,
        "in_flight": status.in_flight,
        "live": status.live,
        "parked": status.parked,
        "kv_access": status.kv_access,
        "kv_read_denied": kv_denied(status),
        "kv_error": status.kv_error,
    }
    if view is None:
        empty = routes_document(table=RouteTable(), services={}, policy_errors={})
        return {"version": 0, "consul": consul, **empty}
    rate_limited = _counter_by_service(deps.metrics, "consulgw_rate_limited")
    pool_stats: dict[str, Any] = {}

    def instance(service: str, inst: Instance) -> dict[str, Any]:
        stats = pool_stats.setdefault(service, deps.pools.stats(service)).get(inst.id)
        return {
            "in_flight": stats.in_flight if stats is not None else 0,
            "requests": stats.requests if stats is not None else 0,
            "breaker": deps.breakers.state(service, inst.id),
        }

    def service_runtime(name: str) -> dict[str, Any]:
        runtime: dict[str, Any] = {"rate_limited": rate_limited.get(name, 0)}
        entry = view.services.get(name)
        if entry is not None:
            runtime.update(traffic_facts(name, entry.policy, deps.pools, deps.failover))
        if deps.openapi is not None:
            runtime["openapi"] = deps.openapi.status(name)
        return runtime

    facts = {
        name: ServiceFacts(snapshot=entry.snapshot, routes=entry.routes, lb=entry.lb, policy=entry.policy)
        for name, entry in view.services.items()
    }
    document = routes_document(
        table=view.table,
        services=facts,
        policy_errors=view.book.errors,
        composites=view.book.composites,
        query=query or DocumentQuery(),
        runtime=Runtime(instance=instance, service=service_runtime),
    )
    return {"version": view.version, "consul": consul, **document}


def _counter_by_service(metrics: GatewayMetrics, name: str) -> dict[str, int]:
    totals: dict[str, int] = {}
    for family in metrics.registry.collect():
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                service = sample.labels.get("service", "")
                totals[service] = totals.get(service, 0) + int(sample.value)
    return totals
