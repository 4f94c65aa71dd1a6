"""A stored answer: what the cache keeps of an upstream answer, and how old it is.

Times are wall-clock seconds (``Clock.time``), because a Redis entry is read by other processes and hosts. The age
follows RFC 9111 section 4.2.3 in its simple form: the ``Age`` the answer carried when it was stored plus the time
it has been resident since.

``encode``/``decode`` give the bytes a Redis entry holds: one line of JSON (status, reason, headers, times, flags)
then the body. ``decode`` raises ``ValueError`` for anything it did not write.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# Fields never stored: recomputed per answer (Age, our Cache-Status), or framing the writer redoes.
NOT_STORED = frozenset({"age", "content-length", "transfer-encoding", "connection", "keep-alive", "set-cookie"})
# Fields a 304 must not change in the stored answer (RFC 9111 section 3.2: the body's framing and encoding).
KEEP_ON_REFRESH = frozenset({"content-length", "content-encoding", "transfer-encoding", "content-range"})
_VERSION = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredAnswer:
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    stored_at: float  # wall clock when the answer (or its last 304) arrived
    initial_age: float  # its Age header then
    lifetime: float  # freshness lifetime, seconds
    shared: bool  # public / s-maxage / must-revalidate: may answer credentialed requests without a consumer key
    must_revalidate: bool  # never served stale
    vary: tuple[str, ...]  # request headers the answer varies on (lower case)

    def age(self, now: float) -> float:
        return self.initial_age + max(0.0, now - self.stored_at)

    def ttl(self, now: float) -> float:
        """Seconds of freshness left (negative once stale)."""
        return self.lifetime - self.age(now)

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None

    @property
    def validators(self) -> bool:
        return self.header("ETag") is not None or self.header("Last-Modified") is not None

    @property
    def size(self) -> int:
        """Bytes this entry costs in memory (body, fields, bookkeeping), for the memory bound."""
        return len(self.body) + sum(len(k) + len(v) + 16 for k, v in self.headers) + 256

    def encode(self) -> bytes:
        meta = {
            "v": _VERSION,
            "s": self.status,
            "r": self.reason,
            "h": [list(pair) for pair in self.headers],
            "t": self.stored_at,
            "a": self.initial_age,
            "l": self.lifetime,
            "sh": self.shared,
            "mr": self.must_revalidate,
            "vy": list(self.vary),
        }
        return json.dumps(meta, separators=(",", ":")).encode() + b"\n" + self.body

    @classmethod
    def decode(cls, data: bytes) -> StoredAnswer:
        head, sep, body = data.partition(b"\n")
        if not sep:
            raise ValueError("not a stored answer")
        try:
            meta: Any = json.loads(head)
            if meta.get("v") != _VERSION:
                raise ValueError("a stored answer of another version")
            return cls(
                status=int(meta["s"]),
                reason=str(meta["r"]),
                headers=tuple((str(k), str(v)) for k, v in meta["h"]),
                body=body,
                stored_at=float(meta["t"]),
                initial_age=float(meta["a"]),
                lifetime=float(meta["l"]),
                shared=bool(meta["sh"]),
                must_revalidate=bool(meta["mr"]),
                vary=tuple(str(v) for v in meta["vy"]),
            )
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a stored answer ({type(exc).__name__})") from None


def stored_headers(headers: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple((k, v) for k, v in headers if k.lower() not in NOT_STORED)


def refreshed_headers(stored: tuple[tuple[str, str], ...], fresh: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The stored fields updated with those of a 304 (RFC 9111 section 3.2): each name the 304 carries replaces all
    stored fields of that name, except framing and encoding."""
    replacing = {k.lower() for k, _ in fresh if k.lower() not in KEEP_ON_REFRESH and k.lower() not in NOT_STORED}
    kept = [(k, v) for k, v in stored if k.lower() not in replacing]
    added = [(k, v) for k, v in fresh if k.lower() in replacing]
    return (*kept, *added)
