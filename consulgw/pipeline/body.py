"""The client's request body as every reader of it must take it: within time and size limits.

The forwarder reads the body through it, and so does any step that reads the body itself (a JSON request
transform): a client that trickles or stalls gets the same ``408`` wherever its body is read.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from consulgw.errors import RequestTimeout
from consulgw.pipeline.context import BodyReader
from consulgw.pipeline.stages.body_limit import too_large


class TimedBody:
    """The client's body, read within time and size limits.

    Time, as Apache's mod_reqtimeout (``body=30,MinRate=500``): the body has ``timeout`` seconds, extended by one
    second per ``min_rate`` bytes received, and no read may wait longer than ``timeout``; a client that trickles or
    stalls gets ``408`` (``RequestTimeout``). Size: more than ``limit`` bytes is ``413`` (``PayloadTooLarge``), raised
    before the chunk that crosses the limit is passed on.
    """

    __slots__ = ("_content", "_deadline", "_limit", "_loop", "_min_rate", "_timeout", "received")

    def __init__(self, content: BodyReader, timeout: float, min_rate: int, limit: int | None) -> None:
        self._content = content
        self._timeout = timeout
        self._min_rate = min_rate
        self._limit = limit
        self._loop = asyncio.get_running_loop()
        self._deadline = self._loop.time() + timeout
        self.received = 0

    def _wait(self) -> float:
        left = self._deadline + self.received / self._min_rate - self._loop.time()
        if left <= 0:
            raise _stalled(self._timeout)
        return min(left, self._timeout)

    async def exactly(self, length: int) -> bytes:
        try:
            async with asyncio.timeout(self._wait() + length / self._min_rate):
                return await self._content.readexactly(length)
        except TimeoutError:
            raise _stalled(self._timeout) from None

    async def next(self) -> bytes:
        try:
            async with asyncio.timeout(self._wait()):
                chunk = await self._content.readany()
        except TimeoutError:
            raise _stalled(self._timeout) from None
        self.received += len(chunk)
        if self._limit is not None and self.received > self._limit:
            raise too_large(self._limit)  # the chunk crossing the limit is never sent
        return chunk

    readany = next  # a BodyReader too: steps that read a body themselves (transform) get the same limits

    async def stream(self) -> AsyncIterator[bytes]:
        while chunk := await self.next():
            yield chunk


def _stalled(timeout: float) -> RequestTimeout:
    return RequestTimeout(f"the request body did not arrive in time (more than {timeout:g} s, or too slowly after)")
