"""Composite routes in the route table: each composite is one more "service" whose name is ``composite:<name>``,
with the one route of its document. The table then applies its usual precedence and conflict rules to them (a
service and a composite claiming the same host, prefix and a method is a reported conflict; the smaller name wins)."""

from __future__ import annotations

from collections.abc import Mapping

from consulgw.policy.model import CompositePolicy
from consulgw.routing.rules import ServiceRoutes


def composite_routes(composites: Mapping[str, CompositePolicy]) -> list[ServiceRoutes]:
    return [ServiceRoutes(service=c.label, routes=(c.route,)) for _, c in sorted(composites.items())]
