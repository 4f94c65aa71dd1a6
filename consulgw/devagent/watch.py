"""Wake-ups for blocking queries: one shared future per topic, resolved and dropped on the next change.

A blocking query runs, then waits on the futures of the topics its answer depends on (``nodes``, ``svc:web``,
``kvk:config/app``, ``kvp:config/``...). A write resolves the futures of the topics it touched, which wakes every
waiter at once: 1,000 watchers of one key cost one future and 1,000 callbacks, and nothing polls. Futures are
reference-counted by their waiters, so a topic nobody watches any more holds no memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

KV_PREFIX = "kvp:"
KV_KEY = "kvk:"


class _Topic:
    __slots__ = ("future", "waiters")

    def __init__(self, future: asyncio.Future[None]) -> None:
        self.future = future
        self.waiters = 0


class Watch:
    __slots__ = ("_prefixes", "_topics")

    def __init__(self) -> None:
        self._topics: dict[str, _Topic] = {}
        self._prefixes: set[str] = set()  # watched KV prefixes, so a write can find them without scanning keys

    def acquire(self, topic: str) -> asyncio.Future[None]:
        entry = self._topics.get(topic)
        if entry is None:
            entry = _Topic(asyncio.get_running_loop().create_future())
            self._topics[topic] = entry
            if topic.startswith(KV_PREFIX):
                self._prefixes.add(topic[len(KV_PREFIX) :])
        entry.waiters += 1
        return entry.future

    def release(self, topic: str, fut: asyncio.Future[None]) -> None:
        entry = self._topics.get(topic)
        if entry is None or entry.future is not fut:
            return  # already resolved by a write; a newer future may be in its place
        entry.waiters -= 1
        if entry.waiters <= 0:
            self._drop(topic)

    def _drop(self, topic: str) -> _Topic | None:
        entry = self._topics.pop(topic, None)
        if entry is not None and topic.startswith(KV_PREFIX):
            self._prefixes.discard(topic[len(KV_PREFIX) :])
        return entry

    def notify(self, topics: Iterable[str]) -> None:
        for topic in topics:
            entry = self._drop(topic)
            if entry is not None and not entry.future.done():
                entry.future.set_result(None)

    def kv_topics(self, key: str) -> list[str]:
        """Topics a write of ``key`` touches: the key itself and every watched prefix of it."""
        topics = [KV_KEY + key]
        if self._prefixes:
            if len(self._prefixes) <= len(key) + 1:
                topics.extend(KV_PREFIX + p for p in self._prefixes if key.startswith(p))
            else:
                topics.extend(KV_PREFIX + key[:n] for n in range(len(key) + 1) if key[:n] in self._prefixes)
        return topics

    def cancel_all(self) -> None:
        for entry in self._topics.values():
            if not entry.future.done():
                entry.future.cancel()
        self._topics.clear()
        self._prefixes.clear()

    @property
    def topic_count(self) -> int:
        return len(self._topics)
