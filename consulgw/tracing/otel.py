"""Tracing on: the :class:`~consulgw.tracing.api.Tracer` seam implemented with the OpenTelemetry SDK.

Imported only by ``consulgw.tracing.setup`` when ``OTEL_*`` turn tracing on and the ``otel`` extra is installed.

Spans (attributes per the stable HTTP semantic conventions):

- **SERVER**, one per request, named ``GET /users`` (method and the matched route prefix, ``http.route``; never the
  raw path; ``GET`` alone when no route matched). ``http.request.method``, ``url.scheme``, ``url.path``,
  ``url.query`` (credential values redacted), ``server.address``/``server.port`` (the Host header),
  ``client.address``, ``user_agent.original``, ``http.response.status_code``, ``consulgw.service``,
  ``consulgw.route`` (the full label with host), ``consulgw.request_id``, ``consulgw.instance``,
  ``consulgw.attempts``, ``consulgw.error`` (the gateway's error code), the headers the service's policy captures.
  Status Error for 5xx, with ``error.type`` (the gateway's error code, or the status); 4xx leave it unset.
- **CLIENT**, one per upstream attempt, from the pick until the response head arrived, named by the method.
  ``server.address``/``server.port`` (the instance), ``url.full``, ``http.request.resend_count`` (from the second
  attempt on), ``http.response.status_code``, ``consulgw.instance``, ``consulgw.service``; a failed attempt has
  ``error.type`` (``connect``, ``timeout``, ``reset``... as in ``consulgw_upstream_errors_total``), and so has a 4xx
  or 5xx answer (its status).
- **CLIENT** for the gateway's own calls: identity providers (``consulgw.call`` = ``jwks``, ``oidc_discovery``,
  ``introspection``) and Redis (``db.system.name=redis``, ``db.operation.name``).

Context: the SERVER span is attached to the request's task (OpenTelemetry's context variable) from ``start`` to
``end``, so every span started while the request runs (attempts, identity-provider and Redis calls) is its child.
Nothing here is global: the provider belongs to this tracer, which belongs to the Gateway.

Propagation (W3C trace context): the client's ``traceparent`` is continued (same trace id); its ``tracestate`` only
from a trusted peer (an untrusted client's vendor state, sampling hints included, stops at the edge). Each attempt
sends exactly one ``traceparent``, whose parent is that attempt's span: every incoming ``traceparent``,
``tracestate`` and B3 header is removed first. Unsampled requests propagate too (flag ``00``), and their ids are in
the access log.
"""

from __future__ import annotations

import dataclasses
import random
import time
import urllib.parse
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Final

import structlog
from multidict import CIMultiDictProxy
from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.trace import (
    INVALID_SPAN_CONTEXT,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    get_current_span,
    set_span_in_context,
)
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import AttributeValue

from consulgw.metrics import GatewayMetrics
from consulgw.redaction import is_secret_name
from consulgw.tracing.api import NO_FIELDS, Attempt, Call, RequestTrace
from consulgw.tracing.attributes import (
    OTHER_METHOD,
    client_span_name,
    host_and_port,
    method_attribute,
    redact_query,
    redact_target,
    redact_url,
    server_span_name,
)
from consulgw.tracing.config import TracingSettings
from consulgw.tracing.export import SpanExport
from consulgw.tracing.sampler import EDGE_KEY, Edge
from consulgw.tracing.w3c import format_traceparent, parse_traceparent

if TYPE_CHECKING:
    from consulgw.model.snapshot import Instance
    from consulgw.pipeline.answer import Answer
    from consulgw.pipeline.context import Inbound
    from consulgw.policy.model import TracingPolicy
    from consulgw.routing.rules import RouteSpec
    from consulgw.upstream.transport import UpstreamRequest

log = structlog.get_logger("consulgw.tracing")

# Trace headers a client may send; never forwarded as they came while tracing is on.
TRACE_HEADERS: Final = frozenset(
    {
        "traceparent",
        "tracestate",
        "b3",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-parentspanid",
        "x-b3-sampled",
        "x-b3-flags",
    }
)
_MAX_TRACESTATE = 512  # longer is not continued (W3C lets a participant drop it; the SDK would log a warning)
_EMPTY = Context()


class OtelTracer:
    """The tracer of one gateway process; owns its tracer provider (shut down by ``aclose``)."""

    enabled = True

    def __init__(
        self,
        settings: TracingSettings,
        *,
        metrics: GatewayMetrics,
        rng: random.Random,
        scheme: str = "http",
        redis_url: str | None = None,
    ) -> None:
        self._export = SpanExport(settings, metrics=metrics, rng=rng)
        self.otel = self._export.provider.get_tracer("consulgw")
        self.ids = self._export.ids
        self.sampler = self._export.sampler
        self.scheme = scheme
        self.default_port = 443 if scheme == "https" else 80
        self._redis: dict[str, AttributeValue] = {"db.system.name": "redis", **_redis_server(redis_url)}

    def request(self, request: Inbound, trusted: bool, request_id: str, client_ip: str) -> RequestTrace:
        return _ServerTrace(self, request, trusted, request_id, client_ip)

    def child(self, name: str) -> Span:
        """A CLIENT span under the current span. Under an unsampled parent it is only ids (the SDK would build the
        same non-recording span, at several times the cost, on every request that is not sampled)."""
        parent = get_current_span().get_span_context()
        if parent.is_valid and not parent.trace_flags.sampled:
            context = SpanContext(
                parent.trace_id,
                self.ids.generate_span_id(),
                is_remote=False,
                trace_flags=parent.trace_flags,
                trace_state=parent.trace_state,
            )
            return NonRecordingSpan(context)
        return self.otel.start_span(name, kind=SpanKind.CLIENT)

    def attempt(self, service: str, method: str, instance: Instance, target: str, resend: int) -> Attempt:
        span = self.child(client_span_name(method))
        if span.is_recording():
            attributes: dict[str, AttributeValue] = {
                "http.request.method": method_attribute(method),
                "server.address": instance.address,
                "server.port": instance.port,
                "url.full": f"{instance.scheme}://{instance.endpoint}{redact_target(target)}",
                "consulgw.service": service,
                "consulgw.instance": instance.id,
            }
            if resend:
                attributes["http.request.resend_count"] = resend
            if attributes["http.request.method"] == OTHER_METHOD:
                attributes["http.request.method_original"] = method
            span.set_attributes(attributes)
        return _Attempt(span)

    def http_call(self, method: str, url: str, purpose: str) -> Call:
        span = self.child(client_span_name(method))
        if span.is_recording():
            parts = urllib.parse.urlsplit(url)
            span.set_attributes(
                {
                    "http.request.method": method_attribute(method),
                    "url.full": redact_url(url),
                    "server.address": parts.hostname or "",
                    "server.port": parts.port or (443 if parts.scheme == "https" else 80),
                    "consulgw.call": purpose,
                }
            )
        return _Call(span)

    def redis_call(self, operation: str) -> Call:
        span = self.child(operation)
        if span.is_recording():
            span.set_attributes({**self._redis, "db.operation.name": operation})
        return _Call(span)

    async def aclose(self) -> None:
        if not await self._export.shutdown():
            log.warning("trace_export_unfinished", hint="the collector did not take the last spans in time")


class _ServerTrace:
    """The SERVER span of one request. Its parent context is read from the headers when the request arrives; the
    span starts once the route is known (its name and the service's sample ratio depend on it)."""

    __slots__ = (
        "_capture",
        "_client_ip",
        "_parent",
        "_request",
        "_request_id",
        "_span",
        "_start",
        "_token",
        "_tracer",
        "_trusted",
    )

    def __init__(self, tracer: OtelTracer, request: Inbound, trusted: bool, request_id: str, client_ip: str) -> None:
        self._tracer = tracer
        self._request = request
        self._trusted = trusted
        self._request_id = request_id
        self._client_ip = client_ip
        self._start = time.time_ns()
        self._parent = _incoming(request.headers, trusted)
        self._span: Span | None = None
        self._token: object = None
        self._capture: tuple[str, ...] = ()  # response headers to record

    @property
    def log_fields(self) -> Mapping[str, str]:
        span = self._span
        if span is None:
            return NO_FIELDS
        context = span.get_span_context()
        return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}

    def start(self, route: RouteSpec, policy: TracingPolicy) -> None:
        span = self._open(route, policy.sample_ratio)
        self._token = otel_context.attach(set_span_in_context(span))
        if span.is_recording() and policy.capture_request:
            span.set_attributes(_captured("http.request.header.", self._request.headers, policy.capture_request))
        self._capture = policy.capture_response

    def end(self, status: int, answer: Answer | None, error: str | None) -> None:
        span = self._span
        if span is None:  # no route (404, 405, no view yet): the span is the request alone
            span = self._open(None, None)
        if self._token is not None:
            otel_context.detach(self._token)  # type: ignore[arg-type]
            self._token = None
        if span.is_recording():
            attributes: dict[str, AttributeValue] = {"http.response.status_code": status}
            if answer is not None:
                if self._capture:
                    attributes.update(_captured("http.response.header.", answer.headers, self._capture))
                if answer.instance is not None:
                    attributes["consulgw.instance"] = answer.instance
                attributes["consulgw.attempts"] = answer.attempts
            if error is not None:
                attributes["consulgw.error"] = error
                if not 400 <= status < 499:  # 4xx answers are the client's business, not a failed request
                    attributes["error.type"] = error
            elif status >= 500:
                attributes["error.type"] = str(status)
            span.set_attributes(attributes)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR, error or str(status)))
        span.end()

    def _open(self, route: RouteSpec | None, ratio: float | None) -> Span:
        tracer = self._tracer
        request = self._request
        method = request.method
        parent = self._parent
        ids = tracer.ids
        edge = Edge(trusted=self._trusted, ratio=ratio)
        trace_id = parent.trace_id if parent.is_valid else ids.generate_trace_id()
        if not tracer.sampler.decide(parent, trace_id, edge):
            # Not sampled: ids only, no SDK span (the same non-recording span the SDK would make, cheaper).
            flags = TraceFlags(parent.trace_flags & ~TraceFlags.SAMPLED) if parent.is_valid else TraceFlags()
            state = parent.trace_state if parent.is_valid else None
            context = SpanContext(
                trace_id, ids.generate_span_id(), is_remote=False, trace_flags=flags, trace_state=state
            )
            span: Span = NonRecordingSpan(context)
            self._span = span
            return span
        if parent.is_valid:
            start = set_span_in_context(NonRecordingSpan(parent), _EMPTY)
        else:
            start = _EMPTY
            ids.preset(trace_id)  # the SDK's span gets the trace id the decision was made on
        start = otel_context.set_value(EDGE_KEY, Edge(trusted=self._trusted, ratio=ratio, decided=True), start)
        name = server_span_name(method, route.prefix if route is not None else None)
        span = tracer.otel.start_span(name, context=start, kind=SpanKind.SERVER, start_time=self._start)
        self._span = span
        if span.is_recording():
            path, _, query = request.raw_path.partition("?")
            address, port = host_and_port(request.host, tracer.default_port)
            attributes: dict[str, AttributeValue] = {
                "http.request.method": method_attribute(method),
                "url.scheme": tracer.scheme,
                "url.path": path,
                "server.address": address,
                "server.port": port,
                "client.address": self._client_ip,
                "consulgw.request_id": self._request_id,
            }
            if query:
                attributes["url.query"] = redact_query(query)
            if attributes["http.request.method"] == OTHER_METHOD:
                attributes["http.request.method_original"] = method
            agent = request.headers.get("User-Agent")
            if agent is not None:
                attributes["user_agent.original"] = agent
            if route is not None:
                attributes["http.route"] = route.prefix
                attributes["consulgw.route"] = route.label
                attributes["consulgw.service"] = route.service
            span.set_attributes(attributes)
        return span


class _Attempt:
    __slots__ = ("_span",)

    def __init__(self, span: Span) -> None:
        self._span = span

    def request(self, outgoing: UpstreamRequest) -> UpstreamRequest:
        headers = [(name, value) for name, value in outgoing.headers if name.lower() not in TRACE_HEADERS]
        headers.extend(_propagated(self._span).items())
        return dataclasses.replace(outgoing, headers=headers)

    def answered(self, status: int) -> None:
        span = self._span
        if span.is_recording():
            span.set_attribute("http.response.status_code", status)
            if status >= 400:  # CLIENT spans: a 4xx is a failed call too
                span.set_attribute("error.type", str(status))
                span.set_status(Status(StatusCode.ERROR))
        span.end()

    def failed(self, error_type: str) -> None:
        span = self._span
        if span.is_recording():
            span.set_attribute("error.type", error_type)
            span.set_status(Status(StatusCode.ERROR, error_type))
        span.end()


class _Call:
    __slots__ = ("_error", "_span")

    def __init__(self, span: Span) -> None:
        self._span = span
        self._error: str | None = None

    def headers(self) -> Mapping[str, str]:
        return _propagated(self._span)

    def status(self, code: int) -> None:
        if self._span.is_recording():
            self._span.set_attribute("http.response.status_code", code)
        if code >= 400:
            self._error = str(code)

    def failed(self, error_type: str) -> None:
        self._error = error_type

    def __enter__(self) -> Call:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        span = self._span
        error = self._error if exc_type is None else (self._error or exc_type.__name__)
        if error is not None and span.is_recording():
            span.set_attribute("error.type", error)
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()


def _incoming(headers: CIMultiDictProxy[str], trusted: bool) -> SpanContext:
    """The client's trace context: its ``traceparent`` if valid (exactly one), its ``tracestate`` only from a
    trusted peer. INVALID_SPAN_CONTEXT when there is none."""
    values = headers.getall("traceparent", None)
    if values is None or len(values) != 1:
        return INVALID_SPAN_CONTEXT  # none, or several: an invalid context (W3C)
    parsed = parse_traceparent(values[0])
    if parsed is None:
        return INVALID_SPAN_CONTEXT
    trace_id, span_id, flags = parsed
    state = None
    if trusted:
        states = headers.getall("tracestate", None)
        if states is not None and sum(len(v) for v in states) <= _MAX_TRACESTATE:
            state = TraceState.from_header(states)
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags), trace_state=state)


def _propagated(span: Span) -> dict[str, str]:
    """``traceparent`` (and ``tracestate``, when there is one) naming ``span`` as the parent."""
    context = span.get_span_context()
    fields = {"traceparent": format_traceparent(context.trace_id, context.span_id, context.trace_flags)}
    if context.trace_state:
        fields["tracestate"] = context.trace_state.to_header()
    return fields


def _captured(prefix: str, headers: Mapping[str, str], names: tuple[str, ...]) -> dict[str, AttributeValue]:
    """``http.request.header.<name>``: the values of the listed headers, as lists; credentials never."""
    found: dict[str, AttributeValue] = {}
    getall = getattr(headers, "getall", None)
    for name in names:
        if is_secret_name(name):
            continue  # refused by the policy parser already; kept here so no other path can record one
        values = getall(name, ()) if getall is not None else ([headers[name]] if name in headers else [])
        if values:
            found[prefix + name] = list(values)
    return found


def _redis_server(url: str | None) -> dict[str, AttributeValue]:
    if not url:
        return {}
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return {}
    if parts.scheme == "unix":
        return {"server.address": parts.path}
    return {"server.address": parts.hostname or "", "server.port": port or 6379}


__all__ = ["TRACE_HEADERS", "OtelTracer"]
