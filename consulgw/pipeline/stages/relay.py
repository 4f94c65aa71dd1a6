"""Re-exposing an upstream body that a step has looked at, as the :class:`Spool` the answer writer reads.

``RelayBody`` is a ``Spool`` whose chunks are ``head`` (bytes a step already read: a transform that found the body
larger than its cap) and then whatever ``source`` still gives, read when the client's writer asks, so back-pressure
and the source's own bounds stay as they are. An ``observer`` (the cache's fill) sees every chunk that passes and is
told whether the body ended or was given up; it never holds the body back. Closing the relay closes the source.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import Protocol

from consulgw.upstream.spool import Spool


class BodyObserver(Protocol):
    def chunk(self, data: bytes) -> None: ...

    def end(self) -> None:
        """The whole body has passed."""

    def abort(self) -> None:
        """The body will not be complete (the client went away, the upstream failed mid-body)."""


class RelayBody(Spool):
    __slots__ = ("_head", "_observer", "_relayed", "_source")

    def __init__(
        self, source: Spool | None, *, head: Iterable[bytes] = (), observer: BodyObserver | None = None
    ) -> None:
        super().__init__()
        self._source = source
        self._head = collections.deque(chunk for chunk in head if chunk)
        self._observer = observer
        self._relayed = False

    async def read(self) -> bytes:
        if self._head:
            data = self._head.popleft()
            if self._observer is not None:
                self._observer.chunk(data)
            return data
        if self._relayed or self._source is None or self.closed:
            self._end()
            return b""
        try:
            data = await self._source.read()
        except BaseException:
            self._give_up()
            raise
        if not data:
            self._end()
            return b""
        if self._observer is not None:
            self._observer.chunk(data)
        return data

    def close(self) -> None:
        if not self._relayed:
            self._give_up()
        if self._source is not None:
            self._source.close()
        super().close()

    def _end(self) -> None:
        if not self._relayed:
            self._relayed = True
            if self._observer is not None:
                self._observer.end()

    def _give_up(self) -> None:
        if not self._relayed:
            self._relayed = True
            if self._observer is not None:
                self._observer.abort()
