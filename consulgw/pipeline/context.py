"""Per-request values passed down the stage chain. Stages never mutate; they pass ``ctx.replace(...)`` on."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web


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
        return HeaderEdits(remove=self.remove + other.remove, set=self.set + other.set, add=self.add + other.add)

    def apply(self, headers: MutableMapping[str, str]) -> None:
        """Apply to a case-insensitive multidict (aiohttp CIMultiDict) in place."""
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


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestContext:
    """What the gateway knows about one request as it flows through the stages."""

    request_id: str
    client_ip: str
    service: str
    route: str  # stable route label, e.g. "api.example.com/users"; safe as a metric label
    started: float  # clock.monotonic() at arrival
    consumer: str | None = None  # verified identity (consumer name or JWT subject)
    upstream_edits: HeaderEdits = NO_EDITS  # applied to the request sent upstream
    response_edits: HeaderEdits = NO_EDITS  # applied to the response sent to the client (also on errors)

    def replace(self, **changes: object) -> RequestContext:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def with_upstream(self, edits: HeaderEdits) -> RequestContext:
        return dataclasses.replace(self, upstream_edits=self.upstream_edits.merged(edits))

    def with_response(self, edits: HeaderEdits) -> RequestContext:
        return dataclasses.replace(self, response_edits=self.response_edits.merged(edits))


Next = Callable[[RequestContext], Awaitable[web.StreamResponse]]


class Stage(Protocol):
    """One concern of the pipeline (auth, rate limit, CORS, ...). The request is an aiohttp ``web.BaseRequest``
    (the public listener is a low-level ``web.Server``: no router, no app).

    A stage either answers by itself (returns a response or raises a GatewayError subclass, which the server
    renders as JSON with ``ctx.response_edits`` applied) or calls ``call_next`` with a possibly replaced context.
    Per-request state lives in locals and ``ctx``, never on ``self``.
    """

    async def __call__(self, ctx: RequestContext, request: web.BaseRequest, call_next: Next) -> web.StreamResponse: ...


def build_chain(stages: tuple[Stage, ...], terminal: Next, request: web.BaseRequest) -> Next:
    """Fold stages around the terminal handler for one request (cheap closures; stages themselves are shared)."""
    handler = terminal
    for stage in reversed(stages):
        handler = _bind(stage, request, handler)
    return handler


def _bind(stage: Stage, request: web.BaseRequest, call_next: Next) -> Next:
    async def run(ctx: RequestContext) -> web.StreamResponse:
        return await stage(ctx, request, call_next)

    return run
