"""``consulgw policy validate|get|put``: per-service policies in Consul KV.

- ``validate FILE`` checks a document offline (no Consul), as a complete policy: exit 0 and ``ok: <summary>``, or
  exit 1 and the error naming the file, the JSON path and the value. With an explicit ``--consul URL`` it checks
  the document merged onto that Consul's stored ``defaults`` instead (nothing is written).
- ``get SERVICE`` prints ``<prefix>services/SERVICE`` pretty-printed; exit 1 when there is none. A stored document
  the gateway would reject is still printed, with the reason as a warning on stderr.
- ``put SERVICE FILE`` validates the document merged onto the stored ``defaults`` (exactly what the gateway will
  do), then writes it with check-and-set on the ModifyIndex it read (``cas=0`` when the key is new). If someone
  else wrote the key in between, nothing is written and the command exits 1.

``FILE`` may be ``-`` for standard input. Errors are one line on stderr, exit status 1; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping

from consulgw.duration import format_go_duration
from consulgw.errors import DiscoveryError, PolicyError
from consulgw.policy.book import DEFAULTS_KEY, SERVICES_DIR, valid_service_name
from consulgw.policy.model import ApiKeyAuth, BasicAuth, IntrospectionAuth, ServicePolicy
from consulgw.policy.parse import decode_document, merge_documents, parse_policy
from consulgw.policy.store import KvStore, kv_prefix


def main(args: argparse.Namespace) -> int:
    action = str(args.policy_command)
    try:
        if action == "validate":
            return _validate(args)
        store = KvStore.from_args(args, os.environ)
        try:
            if action == "get":
                return _get(args, store)
            return _put(args, store)
        finally:
            store.close()
    except (PolicyError, DiscoveryError, _Failed) as exc:
        print(f"consulgw policy {action}: error: {exc}", file=sys.stderr)
        return 1


class _Failed(Exception):
    """A one-line failure of this command."""


def read_input(path: str) -> tuple[bytes, str]:
    """The bytes of FILE (``-``: standard input) and the name to use for it in messages."""
    if path == "-":
        return sys.stdin.buffer.read(), "<stdin>"
    try:
        with open(path, "rb") as handle:
            return handle.read(), path
    except OSError as exc:
        raise _Failed(f"cannot read {path}: {exc.strerror or exc}") from exc


def summarize(policy: ServicePolicy) -> str:
    """One line describing a policy, without any secret."""
    d = format_go_duration
    parts = [f"timeouts connect {d(round(policy.timeouts.connect * 1e9))} read {d(round(policy.timeouts.read * 1e9))}"]
    if policy.lb is not None:
        parts.append(f"lb {policy.lb}")
    if policy.retries.attempts:
        parts.append(f"retries {policy.retries.attempts} on {','.join(sorted(policy.retries.on)) or 'nothing'}")
    auth = policy.auth
    if isinstance(auth, ApiKeyAuth):
        parts.append(f"auth api_key ({auth.header})")
    elif isinstance(auth, BasicAuth):
        parts.append(f"auth basic (realm {auth.realm})")
    elif isinstance(auth, IntrospectionAuth):
        parts.append(f"auth introspection (via {'discovery' if auth.discovery else 'endpoint'}, {auth.cache} cache)")
    elif auth is not None:
        source = (
            "secret"
            if auth.secret
            else "public_key"
            if auth.public_key
            else "jwks_url"
            if auth.jwks_url
            else "discovery"
        )
        parts.append(f"auth jwt ({','.join(auth.algorithms)} via {source})")
    if policy.rate_limit is not None:
        rl = policy.rate_limit
        parts.append(f"rate limit {rl.requests} per {d(round(rl.per * 1e9))} by {rl.key} ({rl.backend})")
    if policy.circuit_breaker is not None:
        cb = policy.circuit_breaker
        parts.append(
            f"circuit breaker after {cb.failure_threshold} failures, {d(round(cb.recovery_timeout * 1e9))} open"
        )
    if policy.cors is not None:
        count = len(policy.cors.origins)
        parts.append(f"cors {count} origin{'s' if count != 1 else ''}")
    rules = policy.headers
    count = sum(len(r.add) + len(r.set) + len(r.remove) for r in (rules.request, rules.response))
    if count:
        parts.append(f"{count} header rule{'s' if count != 1 else ''}")
    if policy.max_body_bytes is not None:
        parts.append(f"max body {policy.max_body_bytes} bytes")
    return ", ".join(parts)


def _validate(args: argparse.Namespace) -> int:
    raw, label = read_input(str(args.file))
    if getattr(args, "consul", None) is None:
        policy = parse_policy(raw, key=label)  # offline: the document as a complete policy
    else:
        store = KvStore.from_args(args, os.environ)  # --consul given: as the gateway will see it, merged on defaults
        try:
            decode_document(raw, key=label)
            policy = _effective(raw, _defaults_document(store, kv_prefix(args, os.environ)), label)
        finally:
            store.close()
    print(f"ok: {summarize(policy)}")
    return 0


def _service_key(args: argparse.Namespace, prefix: str) -> str:
    service = str(args.service)
    if not valid_service_name(service):
        raise _Failed(f"{service!r} is not a service name (no slashes, spaces or control characters)")
    return f"{prefix}{SERVICES_DIR}{service}"


def _defaults_document(store: KvStore, prefix: str) -> Mapping[str, object]:
    """The stored defaults as the gateway would use them; {} (with a warning) when absent or rejected."""
    key = prefix + DEFAULTS_KEY
    entry = store.get(key)
    if not entry.exists or entry.value is None:
        return {}
    try:
        document = decode_document(entry.value, key=key)
        parse_policy(document, key=key)
    except PolicyError as exc:
        print(f"warning: {exc} (validating without the defaults)", file=sys.stderr)
        return {}
    return document if isinstance(document, Mapping) else {}


def _effective(raw: bytes, defaults: Mapping[str, object], key: str) -> ServicePolicy:
    document = decode_document(raw, key=key)
    if isinstance(document, Mapping):
        document = merge_documents(defaults, document)
    return parse_policy(document, key=key)


def _get(args: argparse.Namespace, store: KvStore) -> int:
    prefix = kv_prefix(args, os.environ)
    key = _service_key(args, prefix)
    entry = store.get(key)
    if not entry.exists or entry.value is None:
        raise _Failed(f"no policy stored at {key} (the service runs with {prefix}{DEFAULTS_KEY})")
    try:
        document = decode_document(entry.value, key=key)
    except PolicyError as exc:
        sys.stdout.write(entry.value.decode("utf-8", "replace"))
        print(f"warning: the gateway rejects this document: {exc}", file=sys.stderr)
        return 0
    print(json.dumps(document, indent=2, ensure_ascii=False))
    try:
        _effective(entry.value, _defaults_document(store, prefix), key)
    except PolicyError as exc:
        print(f"warning: the gateway rejects this document: {exc}", file=sys.stderr)
    return 0


def _put(args: argparse.Namespace, store: KvStore) -> int:
    prefix = kv_prefix(args, os.environ)
    key = _service_key(args, prefix)
    raw, label = read_input(str(args.file))
    decode_document(raw, key=label)  # syntax errors name the file
    policy = _effective(raw, _defaults_document(store, prefix), key)
    current = store.get(key)
    if current.exists and current.value == raw:
        print(f"ok: {key} unchanged: {summarize(policy)}")
        return 0
    if not store.cas_put(key, raw, current.modify_index):
        raise _Failed(
            f"{key} was changed by someone else while this command ran (it was at index {current.modify_index}); "
            f"nothing was written -- look at `consulgw policy get {args.service}` and run put again"
        )
    print(f"ok: wrote {key}: {summarize(policy)}")
    return 0
