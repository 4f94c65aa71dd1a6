"""Purge as data: ``consulgw/cache-purge/<service>`` holds any value, and a new value empties that service's cache.

The generation of a service is a digest of that value ("" while the key does not exist). It is part of every key
the service's entries are stored under, so when the value changes every gateway stops seeing the old entries at the
moment its KV snapshot shows the new value: nothing has to be told to each gateway, and a gateway that starts later
computes the same generation. The old entries are then deleted (memory at once, Redis in the background), and those
nobody deletes expire with their TTL. Writing the same value again is not a change (use a new value, e.g. the
date); deleting the key is one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

PURGE_DIR = "cache-purge/"


def generations(kv: Mapping[str, bytes | None]) -> dict[str, str]:
    """``{service: generation}`` for every ``cache-purge/<service>`` key (keys relative to the KV prefix)."""
    found: dict[str, str] = {}
    for rel, value in kv.items():
        if not rel.startswith(PURGE_DIR):
            continue
        service = rel[len(PURGE_DIR) :]
        if not service or "/" in service:
            continue
        found[service] = hashlib.sha256(b"purge\x00" + (value or b"")).hexdigest()[:12]
    return found
