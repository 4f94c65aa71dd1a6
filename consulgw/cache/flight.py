"""Single-flight: one fill per cache slot at a time in this process.

The first request that misses a slot becomes its leader; requests that miss the same slot while the leader is
filling it wait (up to a bound) for the leader to land, then look the slot up again. So 100 concurrent misses on one
key send one request upstream, and 99 answers come from the entry the first one stored. A leader always lands,
whatever happens to its request (``Flight`` is used with ``async with``/``try``/``finally``).
"""

from __future__ import annotations

import asyncio
import contextlib


class Flights:
    def __init__(self) -> None:
        self._landed: dict[str, asyncio.Event] = {}

    def take_off(self, key: str) -> asyncio.Event | None:
        """None: the caller leads the fill of ``key`` and must ``land(key)``. Otherwise the event to wait for."""
        event = self._landed.get(key)
        if event is not None:
            return event
        self._landed[key] = asyncio.Event()
        return None

    def land(self, key: str) -> None:
        event = self._landed.pop(key, None)
        if event is not None:
            event.set()

    def flying(self, key: str) -> bool:
        return key in self._landed

    @staticmethod
    async def wait(event: asyncio.Event, timeout: float) -> bool:
        """Wait for a leader to land; False when it took longer than ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await event.wait()
                return True
        return False

    def __len__(self) -> int:
        return len(self._landed)
