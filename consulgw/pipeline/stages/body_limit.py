"""Request body size limit from the service's ``max_body_bytes``.

Two halves, because the body is streamed, never buffered whole:

1. ``BodyLimitStage`` (in the chain, before auth): a declared ``Content-Length`` above the limit raises
   ``PayloadTooLarge`` (413) at once, before any byte of the body is read or anything is sent upstream.
2. The forwarder (built with the same policy) enforces the limit while streaming a body without a length
   (``Transfer-Encoding: chunked``) by sending ``LimitedBody(request.content, limit)``: an async iterator of chunks
   whose chunk crossing the limit is never yielded; iteration raises ``PayloadTooLarge`` instead and ``exceeded``
   becomes True. The upstream then sees an aborted request (the connection is closed mid-body), and the attempt is
   not retried.

``max_body_bytes: 0`` refuses every request that has a body.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from consulgw.errors import PayloadTooLarge
from consulgw.pipeline.answer import Answer
from consulgw.pipeline.chain import Next
from consulgw.pipeline.context import Inbound, RequestContext


class ByteStream(Protocol):
    """What ``request.content`` (aiohttp StreamReader) offers."""

    async def readany(self) -> bytes: ...


def too_large(limit: int, length: int | None = None) -> PayloadTooLarge:
    if length is not None:
        return PayloadTooLarge(f"request body of {length} bytes exceeds the limit of {limit} bytes")
    return PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")


class LimitedBody:
    """Stream ``content`` in chunks, raising PayloadTooLarge as soon as more than ``limit`` bytes arrive."""

    __slots__ = ("_content", "_iterated", "exceeded", "limit", "received")

    def __init__(self, content: ByteStream, limit: int | None) -> None:
        self._content = content
        self.limit = limit
        self.received = 0
        self.exceeded = False
        self._iterated = False

    def error(self) -> PayloadTooLarge:
        return too_large(self.limit if self.limit is not None else 0)

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self._iterated:
            raise RuntimeError("a request body can be streamed once")
        self._iterated = True
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        while True:
            chunk = await self._content.readany()
            if not chunk:
                return
            self.received += len(chunk)
            if self.limit is not None and self.received > self.limit:
                self.exceeded = True
                raise self.error()
            yield chunk


async def limited_body(content: ByteStream, limit: int | None) -> AsyncIterator[bytes]:
    """Generator form of LimitedBody."""
    async for chunk in LimitedBody(content, limit):
        yield chunk


@dataclass(frozen=True, slots=True, kw_only=True)
class BodyLimitStage:
    """Stateless; built once per policy by ``from_policy``."""

    limit: int

    @classmethod
    def from_policy(cls, max_body_bytes: int) -> BodyLimitStage:
        return cls(limit=max_body_bytes)

    async def __call__(self, ctx: RequestContext, request: Inbound, call_next: Next) -> Answer:
        length = request.content_length
        if length is not None and length > self.limit:
            raise too_large(self.limit, length)
        if self.limit == 0 and length is None and request.body_exists:
            raise too_large(self.limit)
        return await call_next(ctx)
