"""Composite routes in the route table: each composite is one more "service" whose name is ``composite:<name>``,
with the one route of its document. The table then applies its usual precedence and conflict rules to them (a
service and a composite claiming the same host, prefix and a method is a reported conflict; the smaller name wins)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from consulgw.policy.model import CompositePolicy
from consulgw.routing.rules import ServiceRoutes


def composite_routes(composites: Mapping[str, CompositePolicy]) -> list[ServiceRoutes]:
    return [ServiceRoutes(service=c.label, routes=(c.route,)) for _, c in sorted(composites.items())]


def describe_composite(composite: CompositePolicy) -> dict[str, Any]:
    """A composite as JSON for people and tools (``/-/routes``, ``consulgw routes --json``): no secrets in it."""
    return {
        "route": composite.route.label,
        "service": composite.label,
        "methods": sorted(composite.route.methods or ()),
        "timeout": composite.timeout,
        "merge": composite.merge,
        "partial_status": composite.partial_status,
        "forward_headers": list(composite.forward_headers),
        "calls": [
            {
                "name": call.name,
                "service": call.service,
                "path": call.path.text,
                "required": call.required,
                "timeout": call.timeout,
                "default": json.loads(call.default) if call.default is not None else None,
            }
            for call in composite.calls
        ],
    }
