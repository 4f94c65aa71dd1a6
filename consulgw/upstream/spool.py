"""A body in transit between two connections: chunks in memory, then in a temporary file, up to a cap.

The producer (a connection's protocol callbacks) ``feed``\\ s chunks as fast as its peer sends them; the consumer
``read``\\ s them as fast as its own peer takes them. The spool holds the difference, so neither side waits for the
other until the difference reaches the cap: a slow client does not hold an upstream connection, and a slow upstream
does not make the gateway read a client's body without bound. This is what nginx's proxy buffers and temp files do
in front of gunicorn.

* Delivery is never delayed: ``read`` returns whatever is there at once (everything buffered in memory, joined, up to
  ``_READ_MAX`` bytes) and waits only when nothing is.
* Memory is bounded by ``memory_limit``; past it chunks go to an anonymous temporary file (unlinked at creation),
  bounded by ``file_limit``. When the whole spool holds ``memory_limit + file_limit`` bytes the producer is told to
  stop (``pause``) and told to go on (``resume``) once half of that was read: back-pressure beyond the cap.
* ``close`` discards everything (the consumer went away); the producer's ``abort`` is called if it has not finished.

One event loop, one producer, one consumer; no locks.
"""

from __future__ import annotations

import asyncio
import collections
import tempfile
from collections.abc import Callable
from typing import IO

_READ_MAX = 256 * 1024  # at most this much per read (one write to the client)


class SpoolProducer:
    """What the spool may ask of whoever feeds it (a connection). Every method is optional to override."""

    __slots__ = ()

    def pause(self) -> None:
        """Stop feeding (e.g. ``transport.pause_reading()``)."""

    def resume(self) -> None:
        """Feed again."""

    def abort(self) -> None:
        """The consumer went away before the body ended: give up the rest (e.g. close the connection)."""


_NO_PRODUCER = SpoolProducer()


class Spool:
    __slots__ = (
        "_buffered",
        "_chunks",
        "_done_callbacks",
        "_eof",
        "_error",
        "_file",
        "_file_limit",
        "_file_read",
        "_file_write",
        "_high",
        "_loop",
        "_memory",
        "_memory_limit",
        "_paused",
        "_producer",
        "_temp_dir",
        "_waiter",
        "closed",
        "total",
    )

    def __init__(
        self,
        *,
        memory_limit: int = 64 * 1024,
        file_limit: int = 0,
        temp_dir: str | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._memory_limit = memory_limit
        self._file_limit = file_limit
        self._high = memory_limit + file_limit
        self._chunks: collections.deque[bytes] = collections.deque()
        self._memory = 0  # bytes in _chunks
        self._buffered = 0  # bytes fed and not read yet (memory + file)
        self._file: IO[bytes] | None = None
        self._file_read = 0  # offsets into the temporary file
        self._file_write = 0
        self._temp_dir = temp_dir
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._producer: SpoolProducer = _NO_PRODUCER
        self._done_callbacks: list[Callable[[], None]] | None = None
        self.closed = False
        self.total = 0  # bytes fed in all

    # -- producer side ---------------------------------------------------------------------------------------------

    def attach(self, producer: SpoolProducer) -> None:
        self._producer = producer

    def detach(self) -> None:
        """The producer is done and gone: never call it again (its connection may serve another exchange)."""
        self._producer = _NO_PRODUCER

    def feed(self, data: bytes) -> None:
        if self.closed or self._eof or not data:
            return
        size = len(data)
        self.total += size
        self._buffered += size
        if self._file is not None and self._file_write > self._file_read:
            self._write_file(data)  # older bytes wait in the file: keep the order
        elif self._memory + size <= self._memory_limit or self._file_limit <= 0:
            self._chunks.append(data)
            self._memory += size
        else:
            self._write_file(data)
        if not self._paused and self._buffered >= self._high:
            self._paused = True
            self._producer.pause()
        self._wake()

    def feed_eof(self) -> None:
        if self._eof:
            return
        self._eof = True
        self._wake()
        self._finished()

    def set_exception(self, exc: BaseException) -> None:
        if self._eof or self.closed:
            return
        self._error = exc
        self._eof = True
        self._wake()
        self._finished()

    def add_done_callback(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the producer has finished (end of body or error), or now if it has."""
        if self._eof:
            callback()
            return
        if self._done_callbacks is None:
            self._done_callbacks = []
        self._done_callbacks.append(callback)

    @property
    def error(self) -> BaseException | None:
        """The producer's error when the body broke off before its end (``set_exception``), else None."""
        return self._error

    @property
    def at_eof(self) -> bool:
        """The producer has finished (whatever is left is buffered here)."""
        return self._eof

    # -- consumer side ---------------------------------------------------------------------------------------------

    def whole(self) -> bytes | None:
        """The entire body, if it has fully arrived and never left memory (the common small-answer case)."""
        if not self._eof or self._error is not None or self._file is not None:
            return None
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._memory = self._buffered = 0
        return data

    async def read(self) -> bytes:
        """The next bytes (possibly several chunks joined); ``b""`` at the end; raises the producer's error."""
        while True:
            if self._chunks:
                return self._take_memory()
            if self._file is not None and self._file_read < self._file_write:
                return self._take_file()
            if self._error is not None:
                raise self._error
            if self._eof or self.closed:
                self._close_file()
                return b""
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def __aiter__(self) -> Spool:
        return self

    async def __anext__(self) -> bytes:
        data = await self.read()
        if not data:
            raise StopAsyncIteration
        return data

    def close(self) -> None:
        """Discard everything. If the producer is still going, it is told to abort."""
        if self.closed:
            return
        self.closed = True
        self._chunks.clear()
        self._memory = self._buffered = 0
        self._close_file()
        if not self._eof:
            self._producer.abort()
            self._eof = True
            self._finished()  # the producer is done with this body too: whoever waits for that (in-flight counts) goes on
        self._wake()

    # -- internals -------------------------------------------------------------------------------------------------

    def _take_memory(self) -> bytes:
        chunks = self._chunks
        if len(chunks) == 1 or len(chunks[0]) >= _READ_MAX:
            data = chunks.popleft()
        else:
            parts = []
            size = 0
            while chunks and size + len(chunks[0]) <= _READ_MAX:
                part = chunks.popleft()
                parts.append(part)
                size += len(part)
            data = b"".join(parts)
        self._memory -= len(data)
        self._consumed(len(data))
        return data

    def _take_file(self) -> bytes:
        file = self._file
        assert file is not None
        file.seek(self._file_read)
        data = file.read(min(_READ_MAX, self._file_write - self._file_read))
        self._file_read += len(data)
        if self._file_read >= self._file_write:  # drained: start over in memory
            file.seek(0)
            file.truncate()
            self._file_read = self._file_write = 0
        self._consumed(len(data))
        return data

    def _consumed(self, size: int) -> None:
        self._buffered -= size
        if self._paused and self._buffered <= self._high // 2:
            self._paused = False
            self._producer.resume()

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self._file_read = self._file_write = 0

    def _write_file(self, data: bytes) -> None:
        if self._file is None:
            self._file = tempfile.TemporaryFile(dir=self._temp_dir)  # noqa: SIM115 - owned by the spool, closed by close()
        file = self._file
        file.seek(self._file_write)
        file.write(data)
        file.flush()
        self._file_write += len(data)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _finished(self) -> None:
        callbacks = self._done_callbacks
        if callbacks:
            self._done_callbacks = None
            for callback in callbacks:
                callback()
