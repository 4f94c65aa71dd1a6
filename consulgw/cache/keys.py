"""Cache keys: what makes two requests the same for the cache.

A key has two levels, as in APISIX's memory cache (PR 13376): the **slot** is everything the policy names
(method class, host, upstream path, the query as ``key.query`` says, the ``key.headers`` values, ``Accept-Encoding``
always, the verified consumer with ``key.per_consumer``); the **variant** adds the values of the request headers the
stored answer's ``Vary`` names. A slot remembers its ``Vary`` list, so a lookup reads the slot's list first, then the
one variant the request matches.

Keys are SHA-256 digests (hex), so neither a consumer name nor a header value appears in Redis key names, and their
size does not depend on the request. GET and HEAD share slots (HEAD is answered from GET's entry).
"""

from __future__ import annotations

import hashlib
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

QueryRule = Literal["all", "none"] | tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Slot:
    """Where one request's entries live: ``service`` and purge ``generation`` select the namespace."""

    service: str
    generation: str
    digest: str  # the slot's key material, hashed
    path: str  # digest of the upstream path (no query): what an unsafe request invalidates


def _digest(parts: Iterable[str]) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(part.encode("utf-8", "surrogateescape"))
        hasher.update(b"\x00")
    return hasher.hexdigest()[:40]


def path_digest(target: str) -> str:
    return _digest(("path", target.partition("?")[0]))


def normalize_query(query: str, rule: QueryRule) -> str:
    """The query as the key sees it: pairs sorted (all), nothing (none), or only the listed names (sorted)."""
    if rule == "none" or not query:
        return ""
    pairs = [pair for pair in query.split("&") if pair]
    if rule != "all":
        wanted = frozenset(rule)
        pairs = [pair for pair in pairs if urllib.parse.unquote_plus(pair.partition("=")[0]) in wanted]
    return "&".join(sorted(pairs))


def normalize_accept_encoding(value: str | None) -> str:
    """``"gzip, deflate;q=0.5, br;q=0"`` -> ``"deflate,gzip"``: the codings the client accepts, sorted."""
    if not value:
        return ""
    codings: set[str] = set()
    for item in value.split(","):
        name, _, params = item.partition(";")
        name = name.strip().lower()
        if not name:
            continue
        refused = False
        for param in params.split(";"):
            key, _, number = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    refused = float(number.strip()) == 0.0
                except ValueError:
                    refused = False
        if not refused:
            codings.add(name)
    return ",".join(sorted(codings))


def header_values(headers: Mapping[str, str], name: str) -> str:
    """One header's values as the key sees them: every line joined, whitespace folded."""
    getall = getattr(headers, "getall", None)
    values = getall(name, []) if getall is not None else ([headers[name]] if name in headers else [])
    return ",".join(" ".join(v.split()) for v in values)


def slot_for(
    *,
    service: str,
    generation: str,
    host: str,
    target: str,
    query: QueryRule,
    headers: Mapping[str, str],
    key_headers: tuple[str, ...],
    consumer: str | None,
) -> Slot:
    path, _, query_string = target.partition("?")
    parts = [
        "v1",
        host_of(host),
        path,
        normalize_query(query_string, query),
        normalize_accept_encoding(header_values(headers, "Accept-Encoding")),
        consumer or "",
        *(f"{name}={header_values(headers, name)}" for name in key_headers),
    ]
    return Slot(service=service, generation=generation, digest=_digest(parts), path=path_digest(path))


def host_of(host: str) -> str:
    """The Host field as routes see it: lower case, without the port (gateways on other ports share entries)."""
    name = host.strip().lower()
    if name.startswith("["):
        return name[: name.find("]") + 1] if "]" in name else name
    return name.rpartition(":")[0] if ":" in name else name


def variant_for(vary: tuple[str, ...], headers: Mapping[str, str]) -> str:
    """The variant of a slot a request selects, given the slot's ``Vary`` list (``-`` when it varies on nothing)."""
    if not vary:
        return "-"
    return _digest(f"{name}={header_values(headers, name)}" for name in vary)
