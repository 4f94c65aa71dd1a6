"""Consul tags -> route specs (``rules``) -> one immutable, pre-indexed route table (``table``)."""

from consulgw.routing.rules import (
    RouteError,
    RouteSpec,
    ServiceRoutes,
    has_route_tags,
    parse_service_routes,
)
from consulgw.routing.table import MatchKind, RouteConflict, RouteMatch, RouteTable

__all__ = [
    "MatchKind",
    "RouteConflict",
    "RouteError",
    "RouteMatch",
    "RouteSpec",
    "RouteTable",
    "ServiceRoutes",
    "has_route_tags",
    "parse_service_routes",
]
