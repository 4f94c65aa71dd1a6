"""A request the gateway makes itself (a composite's call, a cache's background revalidation), shaped like the
client's (:class:`~consulgw.pipeline.context.Inbound`), with no body. It outlives the client's request, so it copies
what it needs instead of reading the client's connection."""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator

from multidict import CIMultiDict, CIMultiDictProxy

from consulgw.pipeline.context import Inbound


class NoBody:
    """The body reader of a request without a body."""

    __slots__ = ()

    async def readany(self) -> bytes:
        return b""

    async def readexactly(self, n: int) -> bytes:
        if n:
            raise EOFError("the request has no body")
        return b""

    async def iter_chunked(self, n: int) -> AsyncIterator[bytes]:
        nothing: tuple[bytes, ...] = ()
        for chunk in nothing:
            yield chunk


_NO_BODY = NoBody()


class MadeRequest:
    __slots__ = ("_headers", "_host", "_method", "_raw_path")

    def __init__(self, *, method: str, host: str, raw_path: str, headers: CIMultiDict[str]) -> None:
        self._method = method
        self._host = host
        self._raw_path = raw_path
        self._headers = CIMultiDictProxy(headers)

    @classmethod
    def copy_of(cls, request: Inbound) -> MadeRequest:
        """The client's request line and headers, without its body (for a GET or HEAD)."""
        return cls(
            method=request.method, host=request.host, raw_path=request.raw_path, headers=CIMultiDict(request.headers)
        )

    @property
    def method(self) -> str:
        return self._method

    @property
    def host(self) -> str:
        return self._host

    @property
    def path(self) -> str:
        return urllib.parse.unquote(self._raw_path.partition("?")[0])

    @property
    def raw_path(self) -> str:
        return self._raw_path

    @property
    def query_string(self) -> str:
        return self._raw_path.partition("?")[2]

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return self._headers

    @property
    def content_length(self) -> int | None:
        return None

    @property
    def body_exists(self) -> bool:
        return False

    @property
    def content(self) -> NoBody:
        return _NO_BODY
