"""The public listener's request handler. The steps of every request, in order:

1. **Route**: read the active view once (a swap never affects a request in flight) and look the request up in its
   route table; no route, a wrong method or no view yet is answered at once.
2. **The service's pipeline**, built once per service policy (``ServiceEntry.chain``): the policy stages (CORS, body
   limit, auth, rate limit, header transforms), then target selection, then the forwarder, which sends through the
   upstream transport. See :mod:`consulgw.pipeline.chain`.
3. **Response phase** (:func:`consulgw.pipeline.answer.finish`): one rule for every answer, whoever made it.
4. **Write** the answer to the client (:mod:`consulgw.server.listener`), then one ``request_completed`` log line and
   the request metrics.

Every failure becomes a JSON error answer; nothing else (no stack trace) ever reaches a client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog
from aiohttp import web

from consulgw.clock import Clock
from consulgw.errors import GatewayError, MethodNotAllowed, NoHealthyUpstream, NoRoute
from consulgw.logs import access_logger
from consulgw.metrics import GatewayMetrics
from consulgw.pipeline.answer import Answer, error_answer, finish
from consulgw.pipeline.context import RequestContext
from consulgw.routing.path import EncodedSlashes
from consulgw.routing.table import MatchKind
from consulgw.server.guard import guard_of
from consulgw.server.history import TrafficRecorder
from consulgw.server.listener import write_answer
from consulgw.server.view import GatewayView
from consulgw.tracing.api import NO_TRACER, Tracer
from consulgw.upstream.headers import (
    TrustedProxies,
    client_headers_to_drop,
    forwarded_headers,
    request_id_from,
    require_single_credentials,
)

_NO_SERVICE = "-"


class ProxyHandler:
    def __init__(
        self,
        *,
        view: Callable[[], GatewayView | None],
        metrics: GatewayMetrics,
        recorder: TrafficRecorder,
        trusted: TrustedProxies,
        clock: Clock,
        new_request_id: Callable[[], str],
        scheme: str = "http",
        encoded_slashes: EncodedSlashes = "keep",
        tracer: Tracer = NO_TRACER,
    ) -> None:
        self._view = view
        self._metrics = metrics
        self._recorder = recorder
        self._trusted = trusted
        self._clock = clock
        self._new_request_id = new_request_id
        self._scheme = scheme
        self._encoded_slashes: EncodedSlashes = encoded_slashes
        self._tracer = tracer  # the SERVER span of each request (consulgw.tracing); a no-op while tracing is off
        self._log = access_logger()
        self._errors = structlog.get_logger("consulgw.proxy")
        self.inflight = 0
        # One process: read at scrape time, not updated per request. Several workers: each writes its own count.
        self._count_inflight = metrics.multiprocess_dir is not None
        if not self._count_inflight:
            metrics.inflight.set_function(lambda: self.inflight)

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        started = self._clock.monotonic()
        guard = guard_of(request.transport)
        if guard is not None:
            guard.request_started()
        self.inflight += 1
        if self._count_inflight:
            self._metrics.inflight.inc()
        headers = request.headers
        request_id = request_id_from(headers.get("X-Request-ID")) or self._new_request_id()
        peer = request.remote or ""
        trusted = self._trusted
        trusted_peer = trusted.trusts(peer)
        client_ip = trusted.client_ip(peer, headers.getall("X-Forwarded-For", [])) if trusted_peer else peer
        trace = self._tracer.request(request, trusted_peer, request_id, client_ip)
        service, route_label = _NO_SERVICE, "no_route"
        answer: Answer | None = None
        response: web.StreamResponse | None = None
        error: str | None = None
        try:
            try:
                view = self._view()
                if view is None:
                    raise NoHealthyUpstream("the gateway has not loaded its first view of Consul yet")
                method = request.method
                if method == "OPTIONS" and "Access-Control-Request-Method" in headers:
                    # A CORS preflight belongs to the route of the method it asks about; its CORS step answers it.
                    method = headers["Access-Control-Request-Method"]
                # The table matches the canonical path (consulgw.routing.path; 400 invalid_path when there is none)
                # and match.upstream_path is that same path after strip, with the query as sent.
                match = view.table.lookup(request.host, request.raw_path, method, encoded_slashes=self._encoded_slashes)
                if match.kind is MatchKind.METHOD_NOT_ALLOWED:
                    raise MethodNotAllowed(
                        f"{request.method} is not allowed here", headers={"Allow": ", ".join(match.allowed)}
                    )
                route = match.route
                if route is None:
                    raise NoRoute(f"no route for {request.method} {request.path}")
                service, route_label = route.service, route.label
                require_single_credentials(headers)  # two Authorization headers: 400 ambiguous_credentials
                entry = view.entry(service)  # a routed service or a composite route
                if entry is None:
                    raise NoHealthyUpstream(f"no healthy instance of {service}")
                trace.start(route, entry.service_policy.tracing)
                ctx = RequestContext(
                    request=request,
                    request_id=request_id,
                    client_ip=client_ip,
                    service=service,
                    route=route_label,
                    started=started,
                    upstream_target=match.upstream_path,
                    forwarded=forwarded_headers(
                        incoming=headers, peer=peer, scheme=self._scheme, host=request.host, trusted=trusted
                    ),
                    drop=client_headers_to_drop(headers, trusted=trusted_peer),
                )
                answer = await entry.chain(ctx)
            except GatewayError as exc:
                answer = error_answer(exc, request_id)
            finish(answer, request_id)
            response = await write_answer(request, answer)
            error = answer.error
            if error == "body_interrupted":
                self._errors.warning(
                    "upstream_body_interrupted", request_id=request_id, service=service, instance=answer.instance
                )
            return response
        except (ConnectionResetError, asyncio.CancelledError):
            error = "client_disconnected"
            if answer is not None:
                answer.discard()
            raise
        except Exception:  # noqa: BLE001 - the one place where an unexpected failure becomes a 500
            if answer is not None:
                answer.discard()
            error = "internal_error"
            self._errors.exception("request_failed", request_id=request_id, service=service)
            answer = error_answer(GatewayError("internal gateway error"), request_id)
            finish(answer, request_id)
            response = await write_answer(request, answer)
            return response
        finally:
            if guard is not None:
                guard.request_finished()
            elapsed = self._clock.monotonic() - started
            status = response.status if response is not None else 499
            self._metrics.observe_request(service, route_label, status, elapsed)
            if answer is not None:
                self._recorder.observe(service, answer.instance, status, elapsed)
            self.inflight -= 1
            if self._count_inflight:
                self._metrics.inflight.dec()
            trace.end(status, answer, error)
            self._log.info(
                "request_completed",
                request_id=request_id,
                method=request.method,
                path=request.path,
                route=route_label,
                service=service,
                instance=answer.instance if answer is not None else None,
                status=status,
                duration_ms=round(elapsed * 1000, 3),
                bytes=answer.sent if answer is not None else 0,
                client_ip=client_ip,
                attempts=answer.attempts if answer is not None else 0,
                error=error,
                **trace.log_fields,
            )
