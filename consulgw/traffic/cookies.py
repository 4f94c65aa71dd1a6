"""Reading one cookie from a request and writing ``Set-Cookie`` (RFC 6265), for the gateway's own cookies.

Only what the traffic steps need: the value of one named cookie, whatever else the client sends (malformed pairs
are skipped, never an error), and a ``Set-Cookie`` line with the attributes a policy chose.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def request_cookie(headers: Iterable[str], name: str) -> str | None:
    """The value of cookie ``name`` in the ``Cookie`` header values ``headers`` (the first one), else None."""
    for header in headers:
        if name not in header:  # the common case: this header does not mention it at all
            continue
        for pair in header.split(";"):
            key, sep, value = pair.partition("=")
            if sep and key.strip() == name:
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                return value
    return None


def set_cookie(
    name: str,
    value: str,
    *,
    path: str = "/",
    max_age: float | None = None,
    secure: bool = False,
    http_only: bool = True,
    same_site: str | None = "lax",
) -> str:
    """One ``Set-Cookie`` field value. ``max_age`` None makes a session cookie."""
    parts = [f"{name}={value}", f"Path={path}"]
    if max_age is not None:
        parts.append(f"Max-Age={math.ceil(max_age)}")
    if secure:
        parts.append("Secure")
    if http_only:
        parts.append("HttpOnly")
    if same_site is not None:
        parts.append(f"SameSite={same_site.capitalize()}")
    return "; ".join(parts)
