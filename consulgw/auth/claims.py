"""Claim rules shared by JWT verification (``jwt``) and token introspection (``introspection``).

- Numbers (``exp``, ``nbf``, ``iat``): JSON numbers that are finite; ``true``/``false`` are not numbers.
- Scopes: the union of ``scope`` (a space-separated string, RFC 6749 section 3.3 / RFC 7662 / RFC 8693), ``scp``
  and ``scopes`` (arrays of strings or space-separated strings). Each scope token is ``%x21 / %x23-5B / %x5D-7E``
  (printable ASCII without space, ``"`` and ``\\``), so scopes can be joined into ``X-User-Scopes`` unambiguously.
- Audiences: ``aud`` is a string or an array of strings; a policy's audience matches when any listed one is there.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
MAX_SCOPE_CHARS = 1024


def number(value: object) -> float | None:
    """A finite JSON number as float; None for anything else (booleans included)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        result = float(value)
    except OverflowError:  # an integer too large for a float
        return None
    return result if math.isfinite(result) else None


def is_scope_token(value: str) -> bool:
    return len(value) <= MAX_SCOPE_CHARS and SCOPE_TOKEN.fullmatch(value) is not None


def token_scopes(claims: Mapping[str, object]) -> frozenset[str] | None:
    """Union of ``scope``, ``scp`` and ``scopes``; None when any of them is malformed."""
    found: set[str] = set()
    for name in ("scope", "scp", "scopes"):
        value = claims.get(name)
        if value is None:
            continue
        items: Iterable[str]
        if isinstance(value, str):
            items = value.split(" ")
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            items = [part for item in value for part in item.split(" ")]
        else:
            return None
        for item in items:
            if not item:
                continue
            if not is_scope_token(item):
                return None
            found.add(item)
    return frozenset(found)


def audiences(claims: Mapping[str, object]) -> tuple[str, ...] | None:
    """The ``aud`` claim as a tuple (empty when absent); None when it is neither a string nor a list of strings."""
    value = claims.get("aud")
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    return None
