"""The live PolicyBook: every KV document under the prefix, validated, built whole from one KV snapshot.

KV layout, relative to the prefix (default ``consulgw/``)::

    defaults              policy merged under every service's policy
    services/<service>    one service's policy (JSON object)
    consumers/<name>      one consumer (API-key digests, password hash, scopes, own rate limit)
    composites/<name>     one composite route (consulgw.composite): its policy sections merge onto the defaults'
    cache-purge/<service> any value: a new value empties the service's cache (read by consulgw.cache.purge)

Rules (``build_policy_book``):

- A service's effective policy is ``merge_documents(defaults, services/<service>)``, validated as a whole: objects
  merge key by key with the service document winning, lists and scalars replace, ``null`` switches an inherited
  section off (``"auth": null``). A service without a document gets the defaults.
- A document that fails keeps the previous good value for its key: a bad ``services/x`` keeps x's previous effective
  policy (or the defaults if x never had a good one); a bad ``defaults`` keeps the previous defaults (document and
  parsed value); a bad ``consumers/x`` keeps the previous consumer x (or none); a bad ``composites/x`` keeps the
  previous composite x (or none). The reason is in
  ``book.errors[<relative key>]`` (messages name the full KV key).
- A deleted document is gone: the service falls back to the defaults, the consumer disappears, deleted defaults
  become the built-in defaults.
- An API-key digest listed by two consumers is refused for both (absent from ``consumers_by_key``) and the
  conflict is recorded under both consumer keys; the consumers stay in force otherwise.
- Other keys are ignored (the prefix may be shared), except those that look like mistakes: a first path segment
  close to ``services``/``consumers``/``defaults`` (``service/users``), nested names (``services/a/b``) and keys
  below ``defaults/``. Those are recorded in ``errors``. Folder keys (ending in ``/``) are ignored.

Building is pure: same KV and previous book, same result. Values whose raw bytes (and the defaults) did not change
since ``previous`` are reused without re-parsing.

Parsing is CPU work (JSON-schema validation: about 0.3 ms a document), and a ``defaults`` change re-parses every
service document: seconds at 10,000 services. ``iter_policy_book`` and ``iter_changed_services`` are the same
builds as generators that yield between documents, so a caller on an event loop can run them in slices and serve
requests in between (consulgw/server/view.py); ``build_policy_book`` and ``changed_services`` run them to the end.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from consulgw.errors import PolicyError
from consulgw.policy.consumers import digest_hint
from consulgw.policy.model import DEFAULT_POLICY, CompositePolicy, Consumer, PolicyBook, ServicePolicy
from consulgw.policy.parse import (
    decode_document,
    merge_documents,
    parse_composite,
    parse_consumer,
    parse_policy,
    valid_service_name,
)
from consulgw.steps import Steps, run_steps

DEFAULTS_KEY = "defaults"
SERVICES_DIR = "services/"
CONSUMERS_DIR = "consumers/"
COMPOSITES_DIR = "composites/"
CACHE_PURGE_DIR = "cache-purge/"
_KNOWN_TOP = ("services", "consumers", "defaults", "composites", "cache-purge")
__all__ = [
    "build_policy_book",
    "changed_services",
    "consumers_changed",
    "iter_changed_services",
    "iter_policy_book",
    "valid_service_name",
]
_REUSED_PER_YIELD = 256  # documents taken over from the previous book between two yields (each costs microseconds)


def build_policy_book(
    kv: Mapping[str, bytes | None], *, previous: PolicyBook | None, prefix: str = "consulgw/"
) -> PolicyBook:
    """Build the book from every KV pair under the prefix (keys relative to it, values raw bytes)."""
    return run_steps(iter_policy_book(kv, previous=previous, prefix=prefix))


def iter_policy_book(
    kv: Mapping[str, bytes | None], *, previous: PolicyBook | None, prefix: str = "consulgw/"
) -> Steps[PolicyBook]:
    """``build_policy_book`` as a generator: it yields after each document it parses (and every 256 it reuses) and
    returns the book."""
    prev = previous if previous is not None else PolicyBook()
    errors: dict[str, str] = {}
    sources: dict[str, bytes | None] = {}

    defaults, defaults_document = _build_defaults(kv, prev, prefix, errors, sources)
    defaults_same = dict(defaults_document) == dict(prev.defaults_document)

    services: dict[str, ServicePolicy] = {}
    consumers: dict[str, Consumer] = {}
    composites: dict[str, CompositePolicy] = {}
    reused = 0
    for rel in sorted(kv):
        reused += 1
        if reused >= _REUSED_PER_YIELD:
            reused = 0
            yield
        raw = kv[rel]
        if rel == DEFAULTS_KEY or rel.endswith("/"):
            continue
        if rel.startswith(SERVICES_DIR):
            name = rel[len(SERVICES_DIR) :]
            if not valid_service_name(name):
                errors[rel] = f"{prefix}{rel}: {name!r} is not a service name (one key per service: services/<name>)"
                continue
            sources[rel] = raw
            reuse = defaults_same and rel in prev.sources and prev.sources[rel] == raw and rel not in prev.errors
            if reuse and name in prev.services:
                services[name] = prev.services[name]
                continue
            yield
            try:
                services[name] = _service_policy(raw, defaults_document, key=prefix + rel)
            except PolicyError as exc:
                errors[rel] = str(exc)
                if name in prev.services:
                    services[name] = prev.services[name]
        elif rel.startswith(CONSUMERS_DIR):
            name = rel[len(CONSUMERS_DIR) :]
            sources[rel] = raw
            reuse = rel in prev.sources and prev.sources[rel] == raw and rel not in prev.errors
            if reuse and name in prev.consumers:
                consumers[name] = prev.consumers[name]
                continue
            yield
            try:
                consumers[name] = parse_consumer(_present(raw, prefix + rel), key=prefix + rel, name=name)
            except PolicyError as exc:
                errors[rel] = str(exc)
                if name in prev.consumers:
                    consumers[name] = prev.consumers[name]
        elif rel.startswith(COMPOSITES_DIR):
            _composite(rel, kv[rel], prev, prefix, defaults_document, defaults_same, composites, errors, sources)
        elif rel.startswith(CACHE_PURGE_DIR):
            name = rel[len(CACHE_PURGE_DIR) :]
            if not valid_service_name(name):
                errors[rel] = f"{prefix}{rel}: {name!r} is not a service name (one key per service: cache-purge/<name>)"
        else:
            mistake = _looks_like_mistake(rel)
            if mistake is not None:
                errors[rel] = f"{prefix}{rel}: {mistake}"

    by_key = _index_consumers(consumers, prefix, errors)
    return PolicyBook(
        defaults=defaults,
        services=MappingProxyType(services),
        consumers=MappingProxyType(consumers),
        consumers_by_key=MappingProxyType(by_key),
        errors=MappingProxyType(errors),
        composites=MappingProxyType(composites),
        defaults_document=defaults_document,
        sources=MappingProxyType(sources),
    )


def _composite(
    rel: str,
    raw: bytes | None,
    prev: PolicyBook,
    prefix: str,
    defaults_document: Mapping[str, object],
    defaults_same: bool,
    composites: dict[str, CompositePolicy],
    errors: dict[str, str],
    sources: dict[str, bytes | None],
) -> None:
    """``composites/<name>``: parsed onto the defaults' policy sections; a bad document keeps the previous one."""
    name = rel[len(COMPOSITES_DIR) :]
    if "/" in name or not name:
        errors[rel] = f"{prefix}{rel}: {name!r} is not a composite name (one key per composite: composites/<name>)"
        return
    sources[rel] = raw
    reuse = defaults_same and rel in prev.sources and prev.sources[rel] == raw and rel not in prev.errors
    if reuse and name in prev.composites:
        composites[name] = prev.composites[name]
        return
    key = prefix + rel
    try:
        composites[name] = parse_composite(_present(raw, key), key=key, name=name, defaults=defaults_document)
    except PolicyError as exc:
        errors[rel] = str(exc)
        if name in prev.composites:
            composites[name] = prev.composites[name]


def changed_services(old: PolicyBook | None, new: PolicyBook, services: Iterable[str] = ()) -> frozenset[str]:
    """Services whose effective policy differs between two books.

    ``services`` are the names the caller serves (e.g. the route table's); they matter because a service without a
    document of its own changes whenever the defaults change. Names with documents in either book are always
    considered. With ``old`` None, every considered name is returned.
    """
    return run_steps(iter_changed_services(old, new, services))


def iter_changed_services(
    old: PolicyBook | None, new: PolicyBook, services: Iterable[str] = ()
) -> Steps[frozenset[str]]:
    """``changed_services`` as a generator that yields every 64 names compared."""
    if old is None:
        return frozenset(services) | frozenset(new.services)
    changed: set[str] = set()
    seen: set[str] = set()
    count = 0
    for names in (services, new.services, old.services):
        for name in names:
            if name in seen:
                continue
            seen.add(name)
            if old.for_service(name) != new.for_service(name):  # ~20 microseconds: nested dataclasses
                changed.add(name)
            count += 1
            if count % 64 == 0:
                yield
    return frozenset(changed)


def consumers_changed(old: PolicyBook | None, new: PolicyBook) -> bool:
    """True when consumers (and so API-key lookups) differ; pipelines need no rebuild for that."""
    if old is None:
        return bool(new.consumers)
    return dict(old.consumers) != dict(new.consumers) or dict(old.consumers_by_key) != dict(new.consumers_by_key)


def _build_defaults(
    kv: Mapping[str, bytes | None],
    prev: PolicyBook,
    prefix: str,
    errors: dict[str, str],
    sources: dict[str, bytes | None],
) -> tuple[ServicePolicy, Mapping[str, object]]:
    if DEFAULTS_KEY not in kv:
        return DEFAULT_POLICY, MappingProxyType({})
    raw = kv[DEFAULTS_KEY]
    sources[DEFAULTS_KEY] = raw
    if DEFAULTS_KEY in prev.sources and prev.sources[DEFAULTS_KEY] == raw and DEFAULTS_KEY not in prev.errors:
        return prev.defaults, prev.defaults_document
    key = prefix + DEFAULTS_KEY
    try:
        document = decode_document(_present(raw, key), key=key)
        policy = parse_policy(document, key=key)
    except PolicyError as exc:
        errors[DEFAULTS_KEY] = str(exc)
        return prev.defaults, prev.defaults_document
    if not isinstance(document, Mapping):  # parse_policy accepts only objects; this keeps mypy and readers sure
        return prev.defaults, prev.defaults_document
    return policy, MappingProxyType(dict(document))


def _service_policy(raw: bytes | None, defaults_document: Mapping[str, object], *, key: str) -> ServicePolicy:
    document = decode_document(_present(raw, key), key=key)
    if isinstance(document, Mapping):
        document = merge_documents(defaults_document, document)
    return parse_policy(document, key=key)


def _present(raw: bytes | None, key: str) -> bytes:
    if raw is None:
        raise PolicyError(f"{key}: the key has no value (expected a JSON object)")
    return raw


def _looks_like_mistake(rel: str) -> str | None:
    top, sep, rest = rel.partition("/")
    if top == DEFAULTS_KEY:
        return "the defaults are one document at 'defaults', not a folder"
    if top in _KNOWN_TOP:
        return None
    close = difflib.get_close_matches(top.lower(), _KNOWN_TOP, n=1, cutoff=0.75)
    if not close:
        return None
    suggestion = close[0] + (sep + rest if close[0] != DEFAULTS_KEY else "")
    return f"not a consulgw key; did you mean {suggestion!r}?"


def _index_consumers(consumers: Mapping[str, Consumer], prefix: str, errors: dict[str, str]) -> dict[str, Consumer]:
    owners: dict[str, list[str]] = {}
    for name in sorted(consumers):
        for digest in consumers[name].api_key_sha256:
            owners.setdefault(digest, []).append(name)
    by_key: dict[str, Consumer] = {}
    for digest, names in sorted(owners.items()):
        if len(names) == 1:
            by_key[digest] = consumers[names[0]]
            continue
        for name in names:
            rel = CONSUMERS_DIR + name
            others = ", ".join(repr(other) for other in names if other != name)
            problem = (
                f"{prefix}{rel}: api_key_sha256: {digest_hint(digest)} is also listed by consumer {others}; "
                "the key is refused for all of them until only one lists it"
            )
            errors[rel] = f"{errors[rel]}; {problem}" if rel in errors else problem
    return by_key
