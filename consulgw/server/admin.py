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
from consulgw.logs import REDACTED, is_secret_key
from consulgw.metrics import GatewayMetrics
from consulgw.openapi.catalog import OpenApiCatalog
from consulgw.policy.model import ServicePolicy, SplitMatch, Subset
from consulgw.server.history import TrafficHistory
from consulgw.server.view import GatewayView
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


_ROUTES_CHEAP = 0.02  # a /-/routes render faster than this is never reused
_ROUTES_REUSE = 10  # an expensive render is served again for up to this many times its own cost


def sync_age(status: WatcherStatus, clock: Clock) -> float | None:
    """Seconds the view may be behind Consul: 0 while every watch is connected, else time since last contact."""
    if status.last_success is None:
        return None
    if status.consul_reachable:
        return 0.0
    return max(0.0, clock.monotonic() - status.last_success)


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

    rendered: list[tuple[float, float, bytes]] = []  # (rendered at, seconds it took, body): the last render

    async def routes(_: web.Request) -> web.Response:
        # Rendering runs on the event loop that serves traffic (188 ms at 1,000 services x 10 instances in
        # docs/benchmarks.md). A cheap render is always fresh; an expensive one is reused for up to ten times its
        # own cost, so dashboards and scrapers together never take more than about a tenth of the loop.
        now = deps.clock.monotonic()
        if rendered:
            at, cost, body = rendered[0]
            if cost > _ROUTES_CHEAP and now - at < _ROUTES_REUSE * cost:
                return web.Response(body=body, content_type="application/json")
        body = json.dumps(describe(deps)).encode()  # one line: indentation doubled the size and the time
        rendered[:] = [(now, deps.clock.monotonic() - now, body)]
        return web.Response(body=body, content_type="application/json")

    counted_errors = [0]  # the watcher's errors_total already added to consulgw_consul_errors_total

    async def metrics(_: web.Request) -> web.Response:
        status = deps.status()
        # Discovery does not know about metrics (one-way imports): bring its failure count over at scrape time.
        if status.errors_total > counted_errors[0]:
            deps.metrics.consul_errors.inc(status.errors_total - counted_errors[0])
        counted_errors[0] = status.errors_total
        age = sync_age(status, deps.clock)
        deps.metrics.sync_age.set(age if age is not None else -1)
        deps.metrics.consul_index.labels("services").set(status.services_index)
        deps.metrics.consul_index.labels("kv").set(status.kv_index)
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

    Secrets are found the way log lines find them (``consulgw.logs.is_secret_key``), on field names and on header
    names: header lists become ``{name: value}`` objects first, so ``Authorization`` set by a header rule is masked
    like a JWT ``secret``.
    """
    return dict(_redact(dataclasses.asdict(policy)))


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: REDACTED if is_secret_key(str(k)) and v is not None else _redact(v) for k, v in value.items()}
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


def describe(deps: AdminDeps) -> dict[str, Any]:
    """The whole state as one JSON document (the dashboard and `/-/routes` consumers read this)."""
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
    }
    if view is None:
        return {"version": 0, "consul": consul, "routes": [], "services": {}, "route_errors": [], "conflicts": []}
    rate_limited = _counter_by_service(deps.metrics, "consulgw_rate_limited")
    services: dict[str, Any] = {}
    for name, entry in sorted(view.services.items()):
        pool_stats = deps.pools.stats(name)
        instances = []
        for inst in entry.snapshot.instances:
            stats = pool_stats.get(inst.id)
            instances.append(
                {
                    "id": inst.id,
                    "node": inst.node,
                    "address": inst.address,
                    "port": inst.port,
                    "health": inst.health.value,
                    "weight": inst.weight,
                    "weights": {"passing": inst.weights.passing, "warning": inst.weights.warning},
                    "in_flight": stats.in_flight if stats is not None else 0,
                    "requests": stats.requests if stats is not None else 0,
                    "breaker": deps.breakers.state(name, inst.id),
                }
            )
        services[name] = {
            "lb": entry.lb,
            "policy": policy_summary(entry.policy),
            "instances": instances,
            "route_errors": [{"tag": e.tag, "reason": e.reason} for e in entry.routes.errors],
            "rate_limited": rate_limited.get(name, 0),
            "openapi": deps.openapi.status(name) if deps.openapi is not None else None,
            **traffic_facts(name, entry.policy, deps.pools),
        }
    return {
        "version": view.version,
        "consul": consul,
        "routes": [
            {
                "route": r.label,
                "service": r.service,
                "host": r.host,
                "prefix": r.prefix,
                "strip": r.strip,
                "methods": sorted(r.methods) if r.methods else None,
                "tag": r.tag,
            }
            for r in view.table.routes
        ],
        "services": services,
        "route_errors": [{"service": e.service, "tag": e.tag, "reason": e.reason} for e in view.table.errors],
        "conflicts": [
            {"host": c.host, "prefix": c.prefix, "winner": c.winner, "losers": list(c.losers)}
            for c in view.table.conflicts
        ],
        "policy_errors": dict(view.book.errors),
    }


def policy_summary(policy: ServicePolicy) -> dict[str, Any]:
    """What is in force, without secrets (no JWT secret, no key material)."""
    auth = policy.auth
    limit = policy.rate_limit
    breaker = policy.circuit_breaker
    return {
        "lb": policy.lb,
        "timeouts": {"connect": policy.timeouts.connect, "read": policy.timeouts.read},
        "retries": {"attempts": policy.retries.attempts, "on": sorted(policy.retries.on)},
        "auth": None if auth is None else {"type": auth.type},
        "rate_limit": None
        if limit is None
        else {"requests": limit.requests, "per": limit.per, "key": limit.key, "backend": limit.backend},
        "circuit_breaker": None
        if breaker is None
        else {"failure_threshold": breaker.failure_threshold, "recovery_timeout": breaker.recovery_timeout},
        "cors": policy.cors is not None,
        "max_body_bytes": policy.max_body_bytes,
        **traffic_summary(policy),
    }


# -- traffic management (issue 9): the sections in force and the subsets' pools ------------------------------------


def traffic_summary(policy: ServicePolicy) -> dict[str, Any]:
    """The traffic sections of ``policy`` as JSON (nothing in them is secret)."""
    split, sticky, mirror = policy.split, policy.sticky, policy.mirror
    return {
        "lb_key": str(policy.lb_key) if policy.lb_key is not None else None,
        "subsets": {s.name: _subset_json(s) for s in policy.subsets},
        "split": None
        if split is None
        else {
            "default": split.default,
            "weights": dict(split.weights),
            "match": [_match_json(rule) for rule in split.match],
            "hash": str(split.hash) if split.hash is not None else "none",
            "on_empty": split.on_empty,
            "response_header": split.response_header,
        },
        "sticky": None if sticky is None else dataclasses.asdict(sticky),
        "slow_start": None if policy.slow_start is None else {"window": policy.slow_start.window},
        "mirror": None
        if mirror is None
        else {
            "to": [{"target": t.label, "percent": t.percent} for t in mirror.to],
            "methods": sorted(mirror.methods),
            "max_body_bytes": mirror.max_body_bytes,
            "timeout": mirror.timeout,
            "max_in_flight": mirror.max_in_flight,
            "headers": {"set": dict(mirror.headers.set), "remove": list(mirror.headers.remove)},
        },
    }


def _subset_json(subset: Subset) -> dict[str, Any]:
    if subset.service is not None:
        return {"service": subset.service}
    return {
        "meta": {key: list(values) for key, values in subset.meta},
        "tags": [*subset.tags, *(f"!{tag}" for tag in subset.without_tags)],
    }


def _match_json(rule: SplitMatch) -> dict[str, Any]:
    out: dict[str, Any] = {"to": rule.to}
    for key, pairs in (("header", rule.headers), ("cookie", rule.cookies), ("query", rule.query)):
        if pairs:
            out[key] = {name: list(values) for name, values in pairs}
    if rule.consumers:
        out["consumer"] = sorted(rule.consumers)
    return out


def traffic_facts(service: str, policy: ServicePolicy, pools: UpstreamPools) -> dict[str, Any]:
    """One line per traffic section in force, for people (the dashboard shows them), plus ``subset_pools``: how
    many instances each subset's pool holds right now (``in_pool``: taking traffic; ``draining``: healthy at weight
    0, still serving sticky sessions)."""
    facts: dict[str, Any] = {}
    if policy.subsets:
        counts: dict[str, dict[str, Any]] = {}
        parts = []
        for subset in policy.subsets:
            pool = pools.pool(subset.service) if subset.service is not None else pools.subset(service, subset.name)
            in_pool = len(pool) if pool is not None else 0
            draining = len(pool.draining) if pool is not None else 0
            counts[subset.name] = {"in_pool": in_pool, "draining": draining, "service": subset.service}
            parts.append(f"{subset.name} {in_pool} in pool ({_selector_text(subset)})")
        facts["subsets"] = " · ".join(parts)
        facts["subset_pools"] = counts
    split = policy.split
    if split is not None:
        parts = [f"{name} {weight}" for name, weight in split.weights] or [f"{split.default} (no weights)"]
        parts += [f"{_rule_text(rule)} → {rule.to}" for rule in split.match]
        parts.append(f"hash {split.hash if split.hash is not None else 'none'}")
        parts.append(f"default {split.default}, on_empty {split.on_empty}")
        facts["split"] = " · ".join(parts)
    sticky = policy.sticky
    if sticky is not None:
        drain = "keeps draining sessions" if sticky.keep_draining else "re-pins draining sessions"
        facts["sticky"] = f"cookie {sticky.cookie} · on_unavailable {sticky.on_unavailable} · {drain}"
    if policy.slow_start is not None:
        facts["slow_start"] = f"window {policy.slow_start.window:g}s"
    mirror = policy.mirror
    if mirror is not None:
        targets = " · ".join(f"{t.label} {t.percent:g}%" for t in mirror.to)
        facts["mirror"] = (
            f"{targets} · {', '.join(sorted(mirror.methods))} · bodies up to {mirror.max_body_bytes} bytes · "
            f"timeout {mirror.timeout:g}s · at most {mirror.max_in_flight} in flight"
        )
    return facts


def _selector_text(subset: Subset) -> str:
    if subset.service is not None:
        return f"service {subset.service}"
    bits = [f"{key}={'|'.join(values)}" for key, values in subset.meta]
    bits += list(subset.tags) + [f"!{tag}" for tag in subset.without_tags]
    return ", ".join(bits) if bits else "every instance"


def _rule_text(rule: SplitMatch) -> str:
    bits = [f"header {name}={'|'.join(values)}" for name, values in rule.headers]
    bits += [f"cookie {name}={'|'.join(values)}" for name, values in rule.cookies]
    bits += [f"query {name}={'|'.join(values)}" for name, values in rule.query]
    if rule.consumers:
        bits.append(f"consumer {'|'.join(sorted(rule.consumers))}")
    return " and ".join(bits)


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
