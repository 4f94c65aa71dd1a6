"""Rate-limit key names: ``consulgw:rl:<service>:<key-kind>:<quota>:<sha256 of the key value>``.

The quota part (``<capacity>c<interval_us>us``) makes a changed limit start from a full bucket: GCRA state is a
theoretical arrival time computed with the old emission interval, and carrying it into a raised limit would keep
throttled clients throttled for up to the old window. An unchanged limit keeps its key, so unrelated policy edits
do not reset counters.

The value (a client IP, a consumer name, a header value such as an API key) is hashed so raw identifiers and
credentials never reach Redis (or this process's memory, for long header values); the kind keeps an IP and a
header value that happen to be equal apart. Kinds: ``ip``, ``consumer``, ``header.<lower-case header name>``.

Redis Cluster: a key has no ``{hash tag}``, so the keys of one service spread over every slot and node. Each GCRA
decision is one script call on one key (``KEYS[1]``), which therefore always hashes to one slot, whichever node
owns it (``tests/ratelimit/test_redisclient.py`` runs it on a three-node cluster). Decisions batched in one
pipeline must be sent per node on a Cluster (redis-py's cluster pipeline does so); one script call over several
keys would need a common hash tag, which would put a whole service's limits on one node.
"""

from __future__ import annotations

import hashlib

DEFAULT_PREFIX = "consulgw:rl"


def limit_key(service: str, kind: str, value: str, *, quota: str = "", prefix: str = DEFAULT_PREFIX) -> str:
    digest = hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()
    if quota:
        return f"{prefix}:{service}:{kind}:{quota}:{digest}"
    return f"{prefix}:{service}:{kind}:{digest}"
