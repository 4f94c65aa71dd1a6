"""What the cache step asks of a store, whichever backend holds the entries (memory or Redis).

A store keeps, per slot, the slot's ``Vary`` list and one entry per variant, each with a time to keep it; and per
upstream path, which keys belong to it (so a successful unsafe request can drop them all). Stores never decide what
is cacheable or fresh: that is :mod:`consulgw.cache.control` and the step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from consulgw.cache.entry import StoredAnswer
from consulgw.cache.keys import Slot


@dataclass(frozen=True, slots=True)
class Found:
    """What a lookup found: the slot's ``Vary`` list (None: the slot is unknown) and the request's variant's entry."""

    vary: tuple[str, ...] | None
    entry: StoredAnswer | None


NOTHING = Found(None, None)


class CacheStore(Protocol):
    backend: str  # "memory" or "redis": a metric label

    async def lookup(self, slot: Slot, headers: Mapping[str, str]) -> Found:
        """Raises ``CacheUnavailable`` when the backend cannot answer."""

    async def store(self, slot: Slot, variant: str, entry: StoredAnswer, keep: float) -> None:
        """Keep ``entry`` for ``keep`` seconds as the slot's ``variant``. Raises ``CacheUnavailable``."""

    async def invalidate(self, slot: Slot) -> None:
        """Drop every entry of the slot's service and generation stored for the slot's upstream path."""
