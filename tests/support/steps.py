"""Steps of the gateway's pipeline behind a real socket, with a terminal the test writes (for property tests that
feed arbitrary upstream answers to a step and check what reaches the client).

``one_exchange(stages_for, terminal, method=..., path=..., headers=..., body=...)`` starts the gateway's own public
app (``consulgw.server.listener``) on 127.0.0.1, runs one request through ``build_chain(stages, terminal)``, the
response phase and the answer writer, and stops everything. Anything but a ``GatewayError`` escaping the chain is
answered 500, as the proxy does, so "never a 500" can be checked from the outside. ``stage_deps(http)`` gives the
collaborators a step build needs, with a real ``CacheOwner``.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from consulgw.auth.jwks import JwksCache
from consulgw.cache.owner import CacheOwner
from consulgw.clock import SystemClock
from consulgw.errors import GatewayError
from consulgw.metrics import GatewayMetrics
from consulgw.pipeline.answer import Answer, error_answer, finish
from consulgw.pipeline.chain import Stage, build_chain
from consulgw.pipeline.context import RequestContext
from consulgw.pipeline.stages.deps import StageDeps
from consulgw.policy.model import PolicyBook
from consulgw.ratelimit.local import LocalLimiter
from consulgw.server.listener import create_public_app, send_continue, write_answer

Terminal = Callable[[RequestContext], Awaitable[Answer]]
CUT = b"<the connection was cut in the middle of the body>"


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: CIMultiDict[str]
    body: bytes


@contextlib.asynccontextmanager
async def stage_deps(service: str = "svc") -> AsyncIterator[StageDeps]:
    clock = SystemClock()
    metrics = GatewayMetrics()
    async with aiohttp.ClientSession() as http, CacheOwner(clock=clock, metrics=metrics) as cache:
        yield StageDeps(
            service=service,
            clock=clock,
            rng=random.Random(3),
            metrics=metrics,
            http=http,
            redis=None,
            consumers=PolicyBook,
            jwks=JwksCache(http=http, clock=clock),
            local_limits=LocalLimiter(clock=clock),
            cache=cache,
            send_continue=send_continue,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Ask:
    """One request to send."""

    method: str = "GET"
    path: str = "/"
    headers: dict[str, str] | None = None
    body: bytes | None = None


async def one_exchange(
    stages: Sequence[Stage],
    terminal: Terminal,
    *,
    method: str = "GET",
    path: str = "/",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    service: str = "svc",
) -> Reply:
    (reply,) = await exchanges(
        stages, terminal, [Ask(method=method, path=path, headers=headers, body=body)], service=service
    )
    return reply


async def exchanges(
    stages: Sequence[Stage], terminal: Terminal, asks: Sequence[Ask], *, service: str = "svc"
) -> list[Reply]:
    """Send ``asks`` one after the other to one server running ``stages`` in front of ``terminal``."""
    chain = build_chain(stages, terminal)

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        ctx = RequestContext(
            request=request,
            request_id="req-1",
            client_ip="127.0.0.1",
            service=service,
            route=f"{service}/",
            started=0.0,
            upstream_target=request.raw_path,
        )
        try:
            answer = await chain(ctx)
        except GatewayError as exc:  # the proxy's own rule
            answer = error_answer(exc, ctx.request_id)
        except Exception:  # what the proxy turns into a 500: the property tests look for it
            answer = error_answer(GatewayError("internal gateway error"), ctx.request_id)
        finish(answer, ctx.request_id)
        return await write_answer(request, answer)

    runner = web.AppRunner(create_public_app(handler), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = next(a[1] for a in runner.addresses if isinstance(a, tuple))
    replies: list[Reply] = []
    try:
        async with aiohttp.ClientSession(auto_decompress=False) as client:
            for ask in asks:
                async with client.request(
                    ask.method,
                    f"http://127.0.0.1:{port}{ask.path}",
                    headers=ask.headers or {},
                    data=ask.body,
                    skip_auto_headers=["Accept-Encoding"],
                ) as resp:
                    try:
                        body = await resp.read()
                    except aiohttp.ClientPayloadError:  # the gateway cut the connection: the upstream broke off
                        body = CUT
                    replies.append(Reply(resp.status, CIMultiDict(resp.headers), body))
    finally:
        await runner.cleanup()
    return replies


def internal_error(reply: Reply) -> bool:
    """The answer the gateway gives for an unexpected failure (never a 500 an upstream sent)."""
    return reply.status == 500 and b'"internal_error"' in reply.body
