"""The memory backend: one LRU of stored answers per process, bounded in bytes (``--cache-memory-bytes``).

Every slot index and entry counts its size (body, fields, bookkeeping); inserting past the bound evicts the least
recently used items first, and an entry larger than the whole bound is not stored. Expired items are dropped when
they are read, or as they reach the old end of the LRU. Purging a service and invalidating a path use per-service
and per-path key sets kept beside the LRU, so neither walks the whole cache.

One event loop, no locks.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from consulgw.cache.entry import StoredAnswer
from consulgw.cache.keys import Slot, variant_for
from consulgw.cache.store import NOTHING, Found
from consulgw.clock import Clock

# ("v", service, generation, slot digest) for a slot's Vary list; ("e", ..., variant) for an entry.
Key = tuple[str, ...]
_INDEX_SIZE = 128


@dataclass(slots=True)
class _Item:
    value: StoredAnswer | tuple[str, ...]
    size: int
    expires: float
    path: tuple[str, str, str]  # (service, generation, path digest)


class MemoryStore:
    backend = "memory"

    def __init__(self, *, max_bytes: int, clock: Clock, on_size: Callable[[int], None] = lambda _: None) -> None:
        self._max = max_bytes
        self._clock = clock
        self._on_size = on_size
        self._items: OrderedDict[Key, _Item] = OrderedDict()
        self._bytes = 0
        self._by_service: dict[str, set[Key]] = {}
        self._by_path: dict[tuple[str, str, str], set[Key]] = {}

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    async def lookup(self, slot: Slot, headers: Mapping[str, str]) -> Found:
        base = ("v", slot.service, slot.generation, slot.digest)
        vary = self._get(base)
        if not isinstance(vary, tuple):
            return NOTHING
        entry = self._get(("e", slot.service, slot.generation, slot.digest, variant_for(vary, headers)))
        return Found(vary, entry if isinstance(entry, StoredAnswer) else None)

    async def store(self, slot: Slot, variant: str, entry: StoredAnswer, keep: float) -> None:
        size = entry.size
        if size + _INDEX_SIZE > self._max or keep <= 0:
            return
        expires = self._clock.time() + keep
        path = (slot.service, slot.generation, slot.path)
        base = ("v", slot.service, slot.generation, slot.digest)
        index = self._items.get(base)
        index_expires = max(expires, index.expires) if index is not None else expires
        self._put(base, _Item(entry.vary, _INDEX_SIZE, index_expires, path))
        self._put(("e", slot.service, slot.generation, slot.digest, variant), _Item(entry, size, expires, path))

    async def invalidate(self, slot: Slot) -> None:
        for key in list(self._by_path.get((slot.service, slot.generation, slot.path), ())):
            self._drop(key)

    def purge(self, service: str) -> int:
        """Drop every item of ``service``; returns how many."""
        keys = list(self._by_service.get(service, ()))
        for key in keys:
            self._drop(key)
        return len(keys)

    # -- internals -------------------------------------------------------------------------------------------------

    def _get(self, key: Key) -> StoredAnswer | tuple[str, ...] | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item.expires <= self._clock.time():
            self._drop(key)
            return None
        self._items.move_to_end(key)
        return item.value

    def _put(self, key: Key, item: _Item) -> None:
        if key in self._items:
            self._drop(key, report=False)
        self._evict(item.size)
        self._items[key] = item
        self._bytes += item.size
        self._by_service.setdefault(key[1], set()).add(key)
        self._by_path.setdefault(item.path, set()).add(key)
        self._on_size(self._bytes)

    def _evict(self, incoming: int) -> None:
        while self._items and self._bytes + incoming > self._max:
            self._drop(next(iter(self._items)), report=False)  # least recently used first

    def _drop(self, key: Key, *, report: bool = True) -> None:
        item = self._items.pop(key, None)
        if item is None:
            return
        self._bytes -= item.size
        service_keys = self._by_service.get(key[1])
        if service_keys is not None:
            service_keys.discard(key)
            if not service_keys:
                del self._by_service[key[1]]
        path_keys = self._by_path.get(item.path)
        if path_keys is not None:
            path_keys.discard(key)
            if not path_keys:
                del self._by_path[item.path]
        if report:
            self._on_size(self._bytes)
