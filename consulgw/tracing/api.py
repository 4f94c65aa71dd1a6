"""The tracing seam: what the request path calls, and the no-op it calls when tracing is off.

The request path never imports OpenTelemetry. It is handed a :class:`Tracer` (``NO_TRACER`` by default) and calls
it at a few fixed points:

- ``ProxyHandler``: ``trace = tracer.request(...)`` when a request arrives, ``trace.start(route, policy)`` once the
  route is known (the SERVER span starts, named ``GET /users``), ``trace.end(...)`` when the answer is written, and
  ``trace.log_fields`` in the ``request_completed`` line (empty when tracing is off).
- ``Forwarder``: ``call = tracer.attempt(...)`` around each ``transport.send`` (one CLIENT span per attempt), whose
  ``request()`` puts that attempt's ``traceparent`` on the outgoing request.
- Identity-provider fetches (JWKS, discovery, introspection) and Redis calls: ``with tracer.http_call(...)`` and
  ``with tracer.redis_call(...)``.

The no-op implementations below are what those calls cost when tracing is off: a method call that returns a shared
object, nothing allocated (``bench/micro/tracing_overhead.py`` measures it). The OpenTelemetry implementation is
``consulgw.tracing.otel``, loaded only when tracing is on.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from consulgw.model.snapshot import Instance
    from consulgw.pipeline.answer import Answer
    from consulgw.pipeline.context import Inbound
    from consulgw.policy.model import TracingPolicy
    from consulgw.routing.rules import RouteSpec
    from consulgw.upstream.transport import UpstreamRequest

NO_FIELDS: Mapping[str, str] = MappingProxyType({})


class RequestTrace(Protocol):
    """The SERVER span of one client request."""

    @property
    def log_fields(self) -> Mapping[str, str]:
        """``trace_id`` and ``span_id`` for the access log line, sampled or not (empty when tracing is off)."""
        ...

    def start(self, route: RouteSpec, policy: TracingPolicy) -> None:
        """The route is known: start the span (named by method and route) and make it the parent of later spans."""

    def end(self, status: int, answer: Answer | None, error: str | None) -> None:
        """The answer was written (or the client went away): record the outcome and end the span."""


class Attempt(Protocol):
    """The CLIENT span of one upstream attempt: from ``tracer.attempt`` until the response head arrived."""

    def request(self, outgoing: UpstreamRequest) -> UpstreamRequest:
        """``outgoing`` with exactly one ``traceparent`` (this attempt's span); the client's trace headers removed."""
        ...

    def answered(self, status: int) -> None:
        """The upstream answered with ``status``: end the span."""

    def failed(self, error_type: str) -> None:
        """The attempt failed before an answer (``connect``, ``timeout``, ``reset``...): end the span."""


class Call(Protocol):
    """The CLIENT span of a call the gateway makes for itself. Ends when the ``with`` block ends; an exception
    leaving the block marks it failed with the exception's type name."""

    def headers(self) -> Mapping[str, str]:
        """The trace context to send with an HTTP call (``traceparent``), or nothing."""
        ...

    def status(self, code: int) -> None:
        """The HTTP status the call got."""

    def failed(self, error_type: str) -> None:
        """The call failed (the span ends with this ``error.type`` when the block ends)."""

    def __enter__(self) -> Call: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class Tracer(Protocol):
    """Makes the spans of one gateway process. Owned by the ``Gateway``, which calls ``aclose`` last."""

    @property
    def enabled(self) -> bool: ...

    def request(self, request: Inbound, trusted: bool, request_id: str, client_ip: str) -> RequestTrace:
        """A client request arrived (``trusted``: from a ``--trusted-proxies`` peer, whose sampled flag counts)."""
        ...

    def attempt(self, service: str, method: str, instance: Instance, target: str, resend: int) -> Attempt:
        """Attempt number ``resend`` (0 for the first) to send a request to ``instance``."""
        ...

    def http_call(self, method: str, url: str, purpose: str) -> Call:
        """An HTTP call to an identity provider (``purpose``: ``jwks``, ``oidc_discovery``, ``introspection``)."""
        ...

    def redis_call(self, operation: str) -> Call:
        """A Redis command (``EVALSHA``, ``GET``, ``SET``)."""
        ...

    async def aclose(self) -> None:
        """Export what is left (bounded wait) and stop the exporter."""


# -- tracing off ---------------------------------------------------------------------------------------------------


class _NoRequestTrace:
    __slots__ = ()

    log_fields: Mapping[str, str] = NO_FIELDS

    def start(self, route: RouteSpec, policy: TracingPolicy) -> None:
        pass

    def end(self, status: int, answer: Answer | None, error: str | None) -> None:
        pass


class _NoAttempt:
    __slots__ = ()

    def request(self, outgoing: UpstreamRequest) -> UpstreamRequest:
        return outgoing

    def answered(self, status: int) -> None:
        pass

    def failed(self, error_type: str) -> None:
        pass


class _NoCall:
    __slots__ = ()

    def headers(self) -> Mapping[str, str]:
        return NO_FIELDS

    def status(self, code: int) -> None:
        pass

    def failed(self, error_type: str) -> None:
        pass

    def __enter__(self) -> Call:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        pass


_NO_REQUEST_TRACE = _NoRequestTrace()
_NO_ATTEMPT = _NoAttempt()
_NO_CALL = _NoCall()


class NoTracer:
    """Tracing off: every call returns a shared object that does nothing."""

    __slots__ = ()

    enabled = False

    def request(self, request: Inbound, trusted: bool, request_id: str, client_ip: str) -> RequestTrace:
        return _NO_REQUEST_TRACE

    def attempt(self, service: str, method: str, instance: Instance, target: str, resend: int) -> Attempt:
        return _NO_ATTEMPT

    def http_call(self, method: str, url: str, purpose: str) -> Call:
        return _NO_CALL

    def redis_call(self, operation: str) -> Call:
        return _NO_CALL

    async def aclose(self) -> None:
        pass


NO_TRACER: Tracer = NoTracer()
