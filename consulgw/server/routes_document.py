"""The route table as one JSON document: the admin API's ``/-/routes`` and ``consulgw routes --json`` build it here.

The document is bounded, whatever the size of the catalog (the dashboard polls ``/-/routes`` twice a second):

* at most ``limit`` services per answer (100 by default, at most 1,000), in name order, each with its instances,
  and only their routes; ``next`` is the name to pass as ``?after=`` for the following services, or null;
* ``?service=NAME`` (repeatable, or comma-separated) keeps only those services;
* ``route_errors``, ``conflicts`` and ``policy_errors`` list at most 100 entries each;
* ``totals`` counts everything the filter selects, shown or not;
* a tag longer than 512 characters and a reason or message longer than 1,024 are cut, ending with
  ``…(N chars)``.

Each caller adds its own ``consul`` part (and the admin API its ``version``); the admin API passes a ``Runtime`` to
add per-instance counters (in flight, requests sent, breaker state) and per-service ones (rate-limited requests).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from consulgw.composite.routes import describe_composite
from consulgw.model.snapshot import Instance, ServiceSnapshot
from consulgw.policy.model import CompositePolicy, ServicePolicy
from consulgw.routing.rules import RouteError, RouteSpec, ServiceRoutes
from consulgw.routing.table import RouteTable
from consulgw.server.traffic_document import traffic_summary

DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000
MAX_PROBLEMS: Final = 100
MAX_FILTER: Final = 100
TAG_CHARS: Final = 512
TEXT_CHARS: Final = 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class DocumentQuery:
    """Which part of the document to build: the services named (all when None), after a name, how many."""

    services: frozenset[str] | None = None
    after: str | None = None
    limit: int | None = DEFAULT_LIMIT  # None: every service (the CLI, which nobody polls)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceFacts:
    """What the document says about one routed service."""

    snapshot: ServiceSnapshot
    routes: ServiceRoutes
    lb: str
    policy: ServicePolicy | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Runtime:
    """Counters that live outside the view, added to the document by the admin API."""

    instance: Callable[[str, Instance], Mapping[str, Any]]
    service: Callable[[str], Mapping[str, Any]]


class QueryError(ValueError):
    """A query string the admin API answers with 400."""


def parse_query(values: Mapping[str, list[str]]) -> DocumentQuery:
    """``?service=a&service=b,c&after=x&limit=50`` -> DocumentQuery; QueryError names the bad parameter."""
    unknown = sorted(set(values) - {"service", "after", "limit"})
    if unknown:
        raise QueryError(f"unknown parameter {unknown[0]!r}; expected service, after or limit")
    names = [name.strip() for raw in values.get("service", []) for name in raw.split(",") if name.strip()]
    if len(names) > MAX_FILTER:
        raise QueryError(f"service names at most {MAX_FILTER} services")
    limit = DEFAULT_LIMIT
    if values.get("limit"):
        text = values["limit"][-1]
        if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
            raise QueryError(f"limit must be a whole number from 1 to {MAX_LIMIT}, got {text[:20]!r}")
        limit = int(text)
    after = values["after"][-1] if values.get("after") else None
    return DocumentQuery(services=frozenset(names) if names else None, after=after, limit=limit)


def routes_document(
    *,
    table: RouteTable,
    services: Mapping[str, ServiceFacts],
    policy_errors: Mapping[str, str],
    composites: Mapping[str, CompositePolicy] = MappingProxyType({}),
    query: DocumentQuery = DocumentQuery(),
    runtime: Runtime | None = None,
) -> dict[str, Any]:
    """``routes``, ``services``, ``route_errors``, ``conflicts``, ``policy_errors``, ``composites``, ``totals`` and
    ``next``."""
    selected = sorted(n for n in services if query.services is None or n in query.services)
    after = [n for n in selected if query.after is None or n > query.after]
    shown = after if query.limit is None else after[: query.limit]
    more = query.limit is not None and len(after) > query.limit
    shown_set = frozenset(shown)
    wanted = frozenset(selected) if query.services is not None else None

    shown_composites = {
        c.label
        for name, c in composites.items()
        if query.services is None or name in query.services or c.label in query.services
    }
    routes = [_route(r, services) for r in table.routes if r.service in shown_set or r.service in shown_composites]
    route_errors = [e for e in table.errors if wanted is None or e.service in wanted]
    conflicts = [c for c in table.conflicts if wanted is None or c.winner in wanted or not wanted.isdisjoint(c.losers)]
    policy = {k: v for k, v in sorted(policy_errors.items()) if wanted is None or _concerns(k, wanted)}
    return {
        "routes": routes,
        "services": {name: _service(name, services[name], runtime) for name in shown},
        "route_errors": [{"service": e.service, **_error(e)} for e in route_errors[:MAX_PROBLEMS]],
        "conflicts": [
            {"host": c.host, "prefix": c.prefix, "winner": c.winner, "losers": list(c.losers[:MAX_PROBLEMS])}
            for c in conflicts[:MAX_PROBLEMS]
        ],
        "policy_errors": {k: truncate(v, TEXT_CHARS) for k, v in list(policy.items())[:MAX_PROBLEMS]},
        "composites": {
            name: {**describe_composite(c), "policy": policy_summary(c.policy)}
            for name, c in sorted(composites.items())
            if c.label in shown_composites
        },
        "totals": {
            "services": len(selected),
            "routes": sum(1 for r in table.routes if wanted is None or r.service in wanted),
            "route_errors": len(route_errors),
            "conflicts": len(conflicts),
            "policy_errors": len(policy),
        },
        "next": shown[-1] if more and shown else None,
    }


def truncate(text: str, limit: int) -> str:
    """``text`` if it has at most ``limit`` characters, else its start and ``…(N chars)``."""
    return text if len(text) <= limit else f"{text[:limit]}…({len(text)} chars)"


def instance_json(inst: Instance) -> dict[str, Any]:
    return {
        "id": inst.id,
        "node": inst.node,
        "address": inst.address,
        "port": inst.port,
        "scheme": inst.scheme,
        "health": inst.health.value,
        "weight": inst.weight,
        "weights": {"passing": inst.weights.passing, "warning": inst.weights.warning},
    }


def policy_summary(policy: ServicePolicy) -> dict[str, Any]:
    """What is in force, without secrets (no JWT secret, no key material, no header rule values)."""
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
        "max_in_flight": policy.max_in_flight,
        "cache": None
        if policy.cache is None
        else {"backend": policy.cache.backend, "mode": policy.cache.mode, "ttl": policy.cache.ttl},
        "transform": policy.transform is not None,
        **traffic_summary(policy),
    }


def _route(route: RouteSpec, services: Mapping[str, ServiceFacts]) -> dict[str, Any]:
    facts = services.get(route.service)
    return {
        "route": route.label,
        "service": route.service,
        "host": route.host,
        "prefix": route.prefix,
        "strip": route.strip,
        "methods": sorted(route.methods) if route.methods else None,
        "tag": truncate(route.tag, TAG_CHARS),
        "lb": facts.lb if facts is not None else None,
    }


def _service(name: str, facts: ServiceFacts, runtime: Runtime | None) -> dict[str, Any]:
    instances = []
    for inst in facts.snapshot.instances:
        entry = instance_json(inst)
        if runtime is not None:
            entry.update(runtime.instance(name, inst))
        instances.append(entry)
    out: dict[str, Any] = {"lb": facts.lb}
    if facts.policy is not None:
        out["policy"] = policy_summary(facts.policy)
    out["instances"] = instances
    out["route_errors"] = [_error(e) for e in facts.routes.errors[:MAX_PROBLEMS]]
    if runtime is not None:
        out.update(runtime.service(name))
    return out


def _error(error: RouteError) -> dict[str, Any]:
    return {
        "tag": truncate(error.tag, TAG_CHARS),
        "reason": truncate(error.reason, TEXT_CHARS),
        "fix": truncate(error.fix, TAG_CHARS) if error.fix is not None else None,
    }


def _concerns(key: str, services: Iterable[str]) -> bool:
    """A policy error about one of ``services`` (``services/<name>``), or about no service (defaults, consumers)."""
    if not key.startswith("services/"):
        return True
    return key.removeprefix("services/") in services
