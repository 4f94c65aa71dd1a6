"""Time as an injected dependency, so tests are deterministic without patching."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never goes backwards."""

    def time(self) -> float:
        """Wall-clock seconds since the epoch (JWT exp/nbf, Retry-After dates)."""

    async def sleep(self, seconds: float) -> None:
        """Suspend the caller for ``seconds``."""


class SystemClock:
    """The real clock."""

    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
