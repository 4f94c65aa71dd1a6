"""Steps of the pipeline on a real socket, in front of an echo terminal that plays the upstream.

The server is the gateway's own public app (``consulgw.server.listener``): the chain is built with
``build_chain``, every answer goes through the response phase (``finish``) and the gateway's answer writer, exactly as
in ``consulgw run``. Only route lookup and the transport are replaced: every request belongs to ``service``, and the
terminal answers itself. It echoes, as JSON, what an upstream would have received (the client's headers with the
context's upstream edits applied, the body size read through ``LimitedBody`` with ``max_body_bytes``) and the
verified consumer, and adds headers a backend would set (``BACKEND_HEADERS``), so tests can see the response edits win.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

from aiohttp import web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict

from consulgw.pipeline.answer import Answer, finish
from consulgw.pipeline.chain import Stage, build_chain
from consulgw.pipeline.context import RequestContext
from consulgw.pipeline.stages.body_limit import LimitedBody
from consulgw.server.listener import create_public_app, write_answer

CLIENT_IP_HEADER = "X-Test-Client-IP"  # lets one test client act as many addresses
BACKEND_HEADERS = (
    ("Access-Control-Allow-Origin", "*"),  # a backend's own CORS answer: the gateway's policy wins
    ("Vary", "Accept-Encoding"),
    ("Server", "backend/1.0"),
    ("X-Backend", "yes"),
)
CALLS = web.AppKey("calls", list[str])  # methods that reached the terminal, in order
ClientFactory = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]


def pipeline_app(
    stages: Sequence[Stage], *, service: str = "svc", max_body_bytes: int | None = None
) -> web.Application:
    calls: list[str] = []

    async def terminal(ctx: RequestContext) -> Answer:
        request = ctx.request
        calls.append(request.method)
        upstream = CIMultiDict(request.headers)
        ctx.upstream_edits.apply(upstream)
        received = 0
        async for chunk in LimitedBody(request.content, max_body_bytes):
            received += len(chunk)
        body = {
            "consumer": ctx.consumer,
            "upstream": {k: upstream.getall(k) for k in upstream if k.lower().startswith("x-")},
            "upstream_headers": [[k, v] for k, v in upstream.items()],
            "body": received,
        }
        headers = CIMultiDict(BACKEND_HEADERS)
        headers["Content-Type"] = "application/json"
        return Answer(status=200, headers=headers, body=json.dumps(body).encode(), edits=ctx.response_edits)

    chain = build_chain(stages, terminal)

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        ctx = RequestContext(
            request=request,
            request_id="req-1",
            client_ip=request.headers.get(CLIENT_IP_HEADER, request.remote or "127.0.0.1"),
            service=service,
            route=f"{service}/",
            started=0.0,
            upstream_target=request.raw_path,
        )
        answer = await chain(ctx)
        finish(answer, ctx.request_id)
        return await write_answer(request, answer)

    app = create_public_app(handler)
    app[CALLS] = calls
    return app


@asynccontextmanager
async def serve_stages(
    stages: Sequence[Stage], *, service: str = "svc", max_body_bytes: int | None = None
) -> AsyncIterator[str]:
    """Run ``stages`` in front of the echo terminal on 127.0.0.1; yields the base URL."""
    runner = web.AppRunner(pipeline_app(stages, service=service, max_body_bytes=max_body_bytes))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
