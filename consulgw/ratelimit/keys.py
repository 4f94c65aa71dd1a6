"""Rate-limit key names: ``consulgw:rl:<service>:<key-kind>:<sha256 of the key value>``.

The value (a client IP, a consumer name, a header value such as an API key) is hashed so raw identifiers and
credentials never reach Redis (or this process's memory, for long header values); the kind keeps an IP and a
header value that happen to be equal apart. Kinds: ``ip``, ``consumer``, ``header.<lower-case header name>``.
"""

from __future__ import annotations

import hashlib

DEFAULT_PREFIX = "consulgw:rl"


def limit_key(service: str, kind: str, value: str, *, prefix: str = DEFAULT_PREFIX) -> str:
    digest = hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{prefix}:{service}:{kind}:{digest}"
