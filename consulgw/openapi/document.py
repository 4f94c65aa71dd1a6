"""A fetched OpenAPI body -> a checked document. JSON only: YAML would need a runtime dependency (see docs).

The checks are structural, enough for the rewrite to work on: an object with ``openapi: 3.0.x | 3.1.x``, an ``info``
with ``title`` and ``version``, and ``paths`` whose keys start with ``/`` and whose values are objects. Anything
else is an ``OpenApiError`` naming what is wrong, and the caller keeps the last good document.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from consulgw.errors import OpenApiError

_VERSION = re.compile(r"3\.([01])\.\d+(-.+)?")
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def parse_document(body: bytes, *, content_type: str | None = None) -> dict[str, Any]:
    """Decode and check one document. ``content_type`` is the response's Content-Type, used for a clearer error."""
    text = _text(body)
    stripped = text.lstrip()
    if not stripped.startswith("{"):
        if "yaml" in (content_type or "").lower() or stripped.startswith(("openapi:", "swagger:", "---", "#")):
            raise OpenApiError("the document is YAML; the gateway reads JSON only (serve the JSON form)")
        raise OpenApiError("the document is not a JSON object")
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise OpenApiError(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise OpenApiError("the document is nested too deeply") from None
    except ValueError as exc:
        raise OpenApiError(f"not valid JSON: {str(exc)[:120]}") from None
    check_document(doc)
    return dict(doc)


def check_document(doc: object) -> str:
    """Raise ``OpenApiError`` unless ``doc`` looks like an OpenAPI 3.0 or 3.1 document; return "3.0" or "3.1"."""
    if not isinstance(doc, Mapping):
        raise OpenApiError("the document is not a JSON object")
    if "swagger" in doc:
        raise OpenApiError("Swagger 2.0 documents are not supported; serve OpenAPI 3.0 or 3.1")
    version = doc.get("openapi")
    match = _VERSION.fullmatch(version) if isinstance(version, str) else None
    if match is None:
        raise OpenApiError(f"openapi: {_show(version)} is not an OpenAPI 3.0 or 3.1 version")
    info = doc.get("info")
    if not isinstance(info, Mapping) or not isinstance(info.get("title"), str) or "version" not in info:
        raise OpenApiError("info: must be an object with 'title' and 'version'")
    paths = doc.get("paths", {})
    if not isinstance(paths, Mapping):
        raise OpenApiError("paths: must be an object")
    for path, item in paths.items():
        if not isinstance(path, str) or not path.startswith("/"):
            raise OpenApiError(f"paths: key {_show(path)} does not start with '/'")
        if not isinstance(item, Mapping):
            raise OpenApiError(f"paths.{path}: must be an object")
        for method in METHODS:
            if method in item and not isinstance(item[method], Mapping):
                raise OpenApiError(f"paths.{path}.{method}: must be an object")
    components = doc.get("components", {})
    if not isinstance(components, Mapping) or any(not isinstance(v, Mapping) for v in components.values()):
        raise OpenApiError("components: must be an object of objects")
    return f"3.{match.group(1)}"


def count_operations(doc: Mapping[str, Any]) -> int:
    paths = doc.get("paths", {})
    return sum(1 for item in paths.values() for method in METHODS if method in item)


def _text(body: bytes) -> str:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OpenApiError(f"the document is not UTF-8 (bad byte at offset {exc.start})") from None
    return text[1:] if text.startswith("\ufeff") else text


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "…"
