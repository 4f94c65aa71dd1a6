"""``consulgw consumer add NAME [--api-key KEY ...] [--password PASSWORD]``.

Creates or updates ``<prefix>consumers/NAME``. API keys are stored as SHA-256 digests and merged with the keys the
consumer already has; a password is stored as a salted scrypt hash (replacing the previous one); scopes and the
consumer's own rate limit, if present in the stored document, are kept. The write is a check-and-set on the
ModifyIndex that was read, so a concurrent edit is never overwritten silently.

Keys and passwords are never printed back: output names keys by a digest prefix (``sha256:1a2b3c4d…``).
``--password -`` reads the password from the first line of standard input (keeps it out of shell history and ps).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping

from consulgw.errors import DiscoveryError, PolicyError
from consulgw.policy.book import CONSUMERS_DIR
from consulgw.policy.consumers import api_key_digest, digest_hint, hash_password
from consulgw.policy.parse import decode_document, parse_consumer, valid_consumer_name
from consulgw.policy.store import KvStore, kv_prefix

_WEAK_KEY_CHARS = 16


class _Failed(Exception):
    """A one-line failure of this command."""


def main(args: argparse.Namespace) -> int:
    action = str(args.consumer_command)
    try:
        return _add(args)
    except (PolicyError, DiscoveryError, _Failed) as exc:
        print(f"consulgw consumer {action}: error: {exc}", file=sys.stderr)
        return 1


def _add(args: argparse.Namespace) -> int:
    name = str(args.name)
    if not valid_consumer_name(name):
        raise _Failed(f"{name!r} is not a consumer name (letters, digits, '.', '_', '@', '-'; at most 128)")
    keys: list[str] = list(args.api_key or [])
    for key in keys:
        if not key.strip():
            raise _Failed("--api-key: an API key must not be empty")
        if len(key) < _WEAK_KEY_CHARS:
            print(
                f"warning: an API key of {len(key)} characters is easy to guess; use 32+ random characters "
                "(python -c 'import secrets; print(secrets.token_urlsafe(32))')",
                file=sys.stderr,
            )
    password: str | None = args.password
    if password == "-":
        password = sys.stdin.readline().rstrip("\r\n")
    if password is not None and not password:
        raise _Failed("--password: the password must not be empty")

    prefix = kv_prefix(args, os.environ)
    kv_key = f"{prefix}{CONSUMERS_DIR}{name}"
    store = KvStore.from_args(args, os.environ)
    try:
        entry = store.get(kv_key)
        document: dict[str, object] = {}
        if entry.exists and entry.value is not None:
            try:
                existing = decode_document(entry.value, key=kv_key)
                parse_consumer(existing, key=kv_key, name=name)
            except PolicyError as exc:
                raise _Failed(f"the stored document is rejected ({exc}); fix or delete it first") from None
            if isinstance(existing, Mapping):
                document = dict(existing)
        stored = [str(d).lower() for d in _as_list(document.get("api_key_sha256"))]
        added = [api_key_digest(key) for key in keys]
        new = [digest for digest in dict.fromkeys(added) if digest not in stored]
        if keys:
            document["api_key_sha256"] = stored + new
        if password is not None:
            document["password_hash"] = hash_password(password)
        payload = (json.dumps(document, indent=2) + "\n").encode("utf-8")
        consumer = parse_consumer(payload, key=kv_key, name=name)
        if not store.cas_put(kv_key, payload, entry.modify_index):
            raise _Failed(
                f"{kv_key} was changed by someone else while this command ran; nothing was written, run it again"
            )
    finally:
        store.close()
    described = [digest_hint(d) + (" (new)" if d in new else "") for d in sorted(consumer.api_key_sha256)]
    details = [f"api keys: {', '.join(described)}" if described else "no api keys"]
    if password is not None:
        details.append("password set")
    elif consumer.password_hash:
        details.append("password unchanged")
    verb = "updated" if entry.exists else "created"
    print(f"ok: {verb} {kv_key}: {'; '.join(details)}")
    return 0


def _as_list(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else []
