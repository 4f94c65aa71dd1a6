"""A service's pipeline: its steps folded once around the terminal, when its policy changes (never per request).

A step has one job and the shape ``async step(ctx, request, call_next) -> Answer``: it answers by itself (returns an
:class:`~consulgw.pipeline.answer.Answer`, or raises a ``GatewayError``) or passes a possibly replaced context on
with ``await call_next(ctx)``. Per-request state lives in locals and ``ctx``, never on ``self``.

A ``GatewayError`` raised by a step becomes an error answer right there, carrying the response edits of the context
that step was given (so a 401 from auth gets the CORS headers of the CORS step before it). No exception crosses more
than one link, and every step above sees an ``Answer`` come back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from consulgw.errors import GatewayError
from consulgw.pipeline.answer import Answer, error_answer
from consulgw.pipeline.context import Inbound, RequestContext

Next = Callable[[RequestContext], Awaitable[Answer]]


class Stage(Protocol):
    """One step of the pipeline (auth, rate limit, CORS, target selection, ...)."""

    async def __call__(self, ctx: RequestContext, request: Inbound, call_next: Next) -> Answer: ...


def build_chain(stages: Sequence[Stage], terminal: Next) -> Next:
    """Fold ``stages`` around ``terminal``; call the result with a request's context."""
    handler = _guard(terminal)
    for stage in reversed(stages):
        handler = _link(stage, handler)
    return handler


def _link(stage: Stage, call_next: Next) -> Next:
    async def run(ctx: RequestContext) -> Answer:
        try:
            return await stage(ctx, ctx.request, call_next)
        except GatewayError as exc:
            return error_answer(exc, ctx.request_id, ctx.response_edits)

    return run


def _guard(terminal: Next) -> Next:
    async def run(ctx: RequestContext) -> Answer:
        try:
            return await terminal(ctx)
        except GatewayError as exc:
            return error_answer(exc, ctx.request_id, ctx.response_edits)

    return run
