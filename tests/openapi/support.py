"""Small OpenAPI documents and helpers shared by the openapi tests."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from openapi_spec_validator import validate

from consulgw.openapi.document import METHODS
from consulgw.routing.rules import parse_service_routes
from consulgw.routing.table import RouteTable

SERVER = {"url": "http://gateway.test"}


def table(routes: dict[str, Iterable[str]]) -> RouteTable:
    """A route table from ``{service: [gw.route values]}``."""
    return RouteTable.build(
        parse_service_routes(service, [f"gw.route={value}" for value in values]) for service, values in routes.items()
    )


def doc(paths: dict[str, Any], *, version: str = "3.1.0", **extra: Any) -> dict[str, Any]:
    """A minimal valid document with ``paths``; ``extra`` top-level keys are added as given."""
    return {"openapi": version, "info": {"title": "T", "version": "1"}, "paths": copy.deepcopy(paths), **extra}


def op(operation_id: str | None = None, **extra: Any) -> dict[str, Any]:
    """An operation with one 200 response."""
    operation: dict[str, Any] = {"responses": {"200": {"description": "ok"}}, **extra}
    if operation_id is not None:
        operation["operationId"] = operation_id
    return operation


def operations(document: dict[str, Any]) -> set[str]:
    """``"GET /path"`` for every operation of a document."""
    return {f"{m.upper()} {p}" for p, item in document.get("paths", {}).items() for m in METHODS if m in item}


def valid(document: dict[str, Any]) -> dict[str, Any]:
    """Assert ``document`` is valid OpenAPI (openapi-spec-validator), and return it."""
    validate(document)
    return document
