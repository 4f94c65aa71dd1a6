"""The public listener's request handler: resolve, run the service's stages, forward, log one line.

It reads the active view once per request and uses that view to the end, so a table swap never affects a
request in flight. Every failure becomes a JSON error ``{"error", "message", "request_id"}``; nothing else
(no stack trace) ever reaches a client.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import structlog
from aiohttp import web

from consulgw.clock import Clock
from consulgw.errors import GatewayError, MethodNotAllowed, NoHealthyUpstream, NoRoute
from consulgw.logs import access_logger
from consulgw.metrics import GatewayMetrics
from consulgw.pipeline.context import NO_EDITS, HeaderEdits, RequestContext, build_chain
from consulgw.pipeline.forward import Forwarder, Outcome, Target
from consulgw.routing.path import EncodedSlashes
from consulgw.routing.table import MatchKind
from consulgw.server.view import GatewayView
from consulgw.upstream.headers import (
    TrustedProxies,
    client_headers_to_drop,
    forwarded_headers,
    request_id_from,
    require_single_credentials,
)
from consulgw.upstream.pool import UpstreamPools

_NO_SERVICE = "-"


class ProxyHandler:
    def __init__(
        self,
        *,
        view: Callable[[], GatewayView | None],
        pools: UpstreamPools,
        forwarder: Forwarder,
        metrics: GatewayMetrics,
        trusted: TrustedProxies,
        clock: Clock,
        new_request_id: Callable[[], str],
        scheme: str = "http",
        encoded_slashes: EncodedSlashes = "keep",
    ) -> None:
        self._view = view
        self._pools = pools
        self._forwarder = forwarder
        self._metrics = metrics
        self._trusted = trusted
        self._clock = clock
        self._new_request_id = new_request_id
        self._scheme = scheme
        self._encoded_slashes: EncodedSlashes = encoded_slashes
        self._log = access_logger()
        self._errors = structlog.get_logger("consulgw.proxy")
        self.inflight = 0
        # One process: read at scrape time, not updated per request. Several workers: each writes its own count.
        self._count_inflight = metrics.multiprocess_dir is not None
        if not self._count_inflight:
            metrics.inflight.set_function(lambda: self.inflight)

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        started = self._clock.monotonic()
        self.inflight += 1
        if self._count_inflight:
            self._metrics.inflight.inc()
        request_id = request_id_from(request.headers.get("X-Request-ID")) or self._new_request_id()
        peer = request.remote or ""
        trusted_peer = self._trusted.trusts(peer)
        client_ip = (
            self._trusted.client_ip(peer, request.headers.getall("X-Forwarded-For", [])) if trusted_peer else peer
        )
        service, route_label = _NO_SERVICE, "no_route"
        outcome = Outcome()
        response_edits: HeaderEdits = NO_EDITS
        error_code: str | None = None
        response: web.StreamResponse | None = None
        try:
            view = self._view()
            if view is None:
                raise NoHealthyUpstream("the gateway has not loaded its first view of Consul yet")
            method = request.method
            if method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
                # A CORS preflight belongs to the route of the method it asks about; its CORS stage answers it.
                method = request.headers["Access-Control-Request-Method"]
            # The table matches the canonical path (consulgw.routing.path; 400 invalid_path when there is none)
            # and match.upstream_path is that same path after strip, with the query as sent.
            match = view.table.lookup(request.host, request.raw_path, method, encoded_slashes=self._encoded_slashes)
            if match.kind is MatchKind.METHOD_NOT_ALLOWED:
                allowed = ", ".join(match.allowed)
                raise MethodNotAllowed(f"{request.method} is not allowed here", headers={"Allow": allowed})
            if match.route is None:
                raise NoRoute(f"no route for {request.method} {request.path}")
            route = match.route
            service, route_label = route.service, route.label
            require_single_credentials(request.headers)  # two Authorization headers: 400 ambiguous_credentials
            entry = view.services.get(service)
            pool = self._pools.pool(service)
            if entry is None or pool is None:
                raise NoHealthyUpstream(f"no healthy instance of {service}")
            target = Target(
                service=service,
                policy=entry.policy,
                pool=pool,
                path_qs=match.upstream_path,
                drop=client_headers_to_drop(request.headers, trusted=trusted_peer),
                forwarded=tuple(
                    forwarded_headers(
                        incoming=request.headers,
                        peer=peer,
                        scheme=self._scheme,
                        host=request.host,
                        trusted=self._trusted,
                    )
                ),
            )
            ctx = RequestContext(
                request_id=request_id,
                client_ip=client_ip,
                service=service,
                route=route_label,
                started=started,
            )
            forwarder = self._forwarder

            async def terminal(final: RequestContext) -> web.StreamResponse:
                nonlocal response_edits
                response_edits = final.response_edits
                return await forwarder.forward(final, request, target, outcome)

            handler = build_chain(entry.stages, terminal, request) if entry.stages else terminal
            response = await handler(ctx)
            return response
        except GatewayError as exc:
            error_code = exc.code
            response = error_response(exc, request_id, response_edits)
            return response
        except (ConnectionResetError, asyncio.CancelledError):
            error_code = "client_disconnected"
            raise
        except Exception:  # noqa: BLE001 - the one place where an unexpected failure becomes a 500
            error_code = "internal_error"
            self._errors.exception("request_failed", request_id=request_id, service=service)
            response = _json_error(500, "internal_error", "internal gateway error", request_id)
            return response
        finally:
            elapsed = self._clock.monotonic() - started
            status = response.status if response is not None else 499
            self._metrics.observe_request(service, route_label, status, elapsed)
            self.inflight -= 1
            if self._count_inflight:
                self._metrics.inflight.dec()
            self._log.info(
                "request_completed",
                request_id=request_id,
                method=request.method,
                path=request.path,
                route=route_label,
                service=service,
                instance=outcome.instance,
                status=status,
                duration_ms=round(elapsed * 1000, 3),
                bytes=outcome.bytes_sent or _body_size(response),
                client_ip=client_ip,
                attempts=outcome.attempts,
                error=error_code,
            )


def _body_size(response: web.StreamResponse | None) -> int:
    body = response.body if isinstance(response, web.Response) else None
    return len(body) if isinstance(body, bytes) else 0


def error_response(exc: GatewayError, request_id: str, edits: HeaderEdits = NO_EDITS) -> web.Response:
    response = _json_error(exc.status, exc.code, exc.message, request_id)
    for name, value in exc.headers.items():
        response.headers[name] = value
    if edits:
        edits.apply(response.headers)
    return response


def _json_error(status: int, code: str, message: str, request_id: str) -> web.Response:
    body = json.dumps({"error": code, "message": message, "request_id": request_id})
    return web.Response(
        status=status,
        text=body,
        content_type="application/json",
        headers={"X-Request-ID": request_id, "Cache-Control": "no-store"},
    )
