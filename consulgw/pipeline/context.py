"""Per-request values passed down the pipeline. Steps never change them; they pass ``ctx.replace(...)`` on.

``Inbound`` is what the pipeline reads of the client's request: the attributes of aiohttp's ``BaseRequest`` that it
uses, written down as a Protocol so a step can also be given a request the gateway made up itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from multidict import CIMultiDictProxy

if TYPE_CHECKING:
    from consulgw.pipeline.target import Target


class BodyReader(Protocol):
    """The client's body, as aiohttp's StreamReader offers it."""

    async def readany(self) -> bytes: ...

    async def readexactly(self, n: int) -> bytes: ...

    def iter_chunked(self, n: int) -> AsyncIterator[bytes]: ...


class Inbound(Protocol):
    """The client's request as the pipeline sees it (aiohttp's ``web.BaseRequest`` is one)."""

    @property
    def method(self) -> str: ...

    @property
    def host(self) -> str: ...

    @property
    def path(self) -> str: ...

    @property
    def raw_path(self) -> str: ...

    @property
    def query_string(self) -> str: ...

    @property
    def headers(self) -> CIMultiDictProxy[str]: ...

    @property
    def content_length(self) -> int | None: ...

    @property
    def body_exists(self) -> bool: ...

    @property
    def content(self) -> BodyReader: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class HeaderEdits:
    """Header changes to apply to a message: remove first, then set (replace), then add (append)."""

    remove: tuple[str, ...] = ()
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.remove or self.set or self.add)

    def merged(self, other: HeaderEdits) -> HeaderEdits:
        """These edits followed by ``other``."""
        if not self:
            return other
        if not other:
            return self
        return HeaderEdits(remove=self.remove + other.remove, set=self.set + other.set, add=self.add + other.add)

    def apply(self, headers: MutableMapping[str, str]) -> None:
        """Apply to a case-insensitive multidict (multidict's CIMultiDict) in place."""
        for name in self.remove:
            headers.pop(name, None)
            while name in headers:  # multidicts keep repeated names
                headers.pop(name, None)
        for name, value in self.set:
            while name in headers:
                headers.pop(name, None)
            headers[name] = value
        add = getattr(headers, "add", None)
        for name, value in self.add:
            if add is not None:
                add(name, value)
            else:
                headers[name] = value


NO_EDITS = HeaderEdits()


class RequestContext(NamedTuple):
    """What the gateway knows about one request as it flows through the pipeline.

    A NamedTuple rather than a frozen dataclass: it is built once per request and copied by several steps, and a
    tuple's construction and ``_replace`` cost a fraction of a frozen dataclass's ``object.__setattr__`` per field
    (with JWT + rate limit + CORS the copies were 11 us of a 250 us request in the profile). Build it with keywords.
    """

    request: Inbound
    request_id: str
    client_ip: str
    service: str
    route: str  # stable route label, e.g. "api.example.com/users"; safe as a metric label
    started: float  # clock.monotonic() at arrival
    upstream_target: str  # request-target for the upstream: the path after the route's strip, plus "?query"
    forwarded: tuple[tuple[str, str], ...] = ()  # X-Forwarded-* for this request
    drop: tuple[str, ...] = ()  # client headers never forwarded
    consumer: str | None = None  # verified identity (consumer name or JWT subject)
    upstream_edits: HeaderEdits = NO_EDITS  # applied to the request sent upstream
    response_edits: HeaderEdits = NO_EDITS  # applied to the answer sent to the client (every answer)
    target: Target | None = None  # where the request may go; set by the target-selection step
    # A request body a step made to replace the client's (a request transform): the forwarder sends it instead of
    # reading ``request.content``. Bytes are sent with their length and can be retried; a stream is sent once.
    body: bytes | AsyncIterable[bytes] | None = None

    def replace(self, **changes: Any) -> RequestContext:
        """A copy with ``changes``; an unknown field is a TypeError (as for a dataclass), never silently added."""
        try:
            return self._replace(**changes)
        except ValueError as exc:  # NamedTuple's own complaint about unexpected field names
            raise TypeError(f"RequestContext has no field(s) {sorted(set(changes) - set(self._fields))}") from exc

    def with_upstream(self, edits: HeaderEdits) -> RequestContext:
        return self._replace(upstream_edits=self.upstream_edits.merged(edits))

    def with_response(self, edits: HeaderEdits) -> RequestContext:
        return self._replace(response_edits=self.response_edits.merged(edits))
