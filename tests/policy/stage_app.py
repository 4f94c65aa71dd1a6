"""A tiny app that runs stages on a real aiohttp server and ends in a terminal that plays the forwarder.

The terminal applies ``ctx.upstream_edits`` to the request headers it "sends" (echoed back as JSON), streams the body
through ``LimitedBody`` with the recorded limit, answers with headers a backend would set, and applies
``ctx.response_edits``. GatewayErrors are rendered like the server does (JSON + ``exc.headers``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict

from consulgw.errors import GatewayError
from consulgw.pipeline.context import RequestContext, Stage, build_chain
from consulgw.pipeline.stages.body_limit import LimitedBody, body_limit

ClientFactory = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]

BACKEND_HEADERS = (
    ("Access-Control-Allow-Origin", "*"),  # a backend's own CORS answer: the gateway's policy wins
    ("Vary", "Accept-Encoding"),
    ("Server", "backend/1.0"),
    ("X-Backend", "yes"),
)


CALLS = web.AppKey("calls", list[str])


def stage_app(stages: tuple[Stage, ...]) -> web.Application:
    calls: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        ctx = RequestContext(request_id="req-1", client_ip="127.0.0.1", service="users", route="users", started=0.0)

        async def terminal(final: RequestContext) -> web.StreamResponse:
            calls.append(request.method)
            upstream = CIMultiDict(request.headers)
            final.upstream_edits.apply(upstream)
            received = 0
            async for chunk in LimitedBody(request.content, body_limit(request)):
                received += len(chunk)
            response = web.json_response({"upstream_headers": [[k, v] for k, v in upstream.items()], "body": received})
            for name, value in BACKEND_HEADERS:
                response.headers.add(name, value)
            final.response_edits.apply(response.headers)
            return response

        try:
            return await build_chain(stages, terminal, request)(ctx)
        except GatewayError as exc:
            response = web.json_response({"error": exc.code, "message": exc.message}, status=exc.status)
            for name, value in exc.headers.items():
                response.headers[name] = value
            return response

    app = web.Application()
    app[CALLS] = calls
    app.router.add_route("*", "/{tail:.*}", handler)
    return app
