"""Rewritten services -> one OpenAPI 3.1 document.

Services are merged in name order, path by path and method by method (a path served by two services for different
methods keeps both). Two services can only claim the same path and method on different hosts (the route table
settles everything else); the document has room for one, so the first service keeps it and the other's operation
is listed in ``Merged.shadowed``. Paths that differ only in the names of their template variables
(``/a/{id}`` and ``/a/{key}``) are the same path to OpenAPI and are treated the same way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from consulgw.openapi.rewrite import ServiceApi

OPENAPI_VERSION = "3.1.0"
_TEMPLATE = re.compile(r"\{[^{}/]*\}")


def gateway_server(scheme: str, authority: str) -> dict[str, Any]:
    """The ``servers`` entry of the gateway's public listener; clients may edit the address in the UI."""
    return {
        "url": "{scheme}://{authority}",
        "description": "the gateway's public listener",
        "variables": {
            "scheme": {"default": scheme, "enum": ["http", "https"]},
            "authority": {"default": authority, "description": "host[:port] the clients use to reach the gateway"},
        },
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class Merged:
    document: Mapping[str, Any]
    shadowed: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))  # service -> ops


def merge(
    apis: Sequence[ServiceApi],
    *,
    title: str,
    version: str,
    description: str,
    server: Mapping[str, Any],
) -> Merged:
    paths: dict[str, dict[str, Any]] = {}
    owners: dict[str, tuple[str, str]] = {}  # template-normalised path -> (literal path, first service)
    shadowed: dict[str, list[str]] = {}
    components: dict[str, dict[str, Any]] = {}
    schemes: dict[str, Any] = {}
    tags: list[Mapping[str, Any]] = []
    for api in sorted(apis, key=lambda a: a.service):
        for path, item in api.paths.items():
            shape = _TEMPLATE.sub("{}", path)
            literal, _ = owners.setdefault(shape, (path, api.service))
            target = paths.setdefault(literal, {})
            for method, operation in item.items():
                if literal != path or method in target:
                    shadowed.setdefault(api.service, []).append(f"{method.upper()} {path}")
                    continue
                target[method] = operation
        for kind, entries in api.components.items():
            components.setdefault(kind, {}).update(entries)
        schemes.update(api.security_schemes)
        tags.extend(api.tags)
    if schemes:
        components["securitySchemes"] = schemes
    document: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": version, "description": description},
        "servers": [dict(server)],
        "paths": paths,
    }
    if components:
        document["components"] = components
    if tags:
        document["tags"] = tags
    return Merged(document=document, shadowed={k: tuple(v) for k, v in shadowed.items()})
