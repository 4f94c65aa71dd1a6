"""Request IDs: unique, cheap, injectable.

A random per-process prefix plus a counter: 32 lower-case hex characters like a UUID's hex form, without a
``os.urandom`` call per request (uuid4 was visible in the proxy's profile). IDs are unique across processes and
replicas as long as their 48-bit random prefixes differ.
"""

from __future__ import annotations

import itertools
import os


class RequestIds:
    __slots__ = ("_counter", "_prefix")

    def __init__(self, prefix: str | None = None) -> None:
        self._prefix = prefix if prefix is not None else os.urandom(6).hex()
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter):020x}"
