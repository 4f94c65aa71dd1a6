"""Fixtures of the tracing tests: a local OTLP/HTTP receiver and gateways that export to it.

``otlp`` is a real aiohttp server on 127.0.0.1 that accepts ``POST /v1/traces`` the way a collector does: it decodes
each protobuf ``ExportTraceServiceRequest`` with opentelemetry-proto (installed with the exporter) into
:class:`ReceivedSpan` values. ``otlp.status`` makes it answer with an error instead (a failing collector), ``otlp.hold`` makes it hold every
export until the event is set (a stuck collector).

The end-to-end fixtures of tests/gateway (dev agent, real upstreams, in-process gateways) are reused as they are.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from consulgw.server.gateway import Gateway
from consulgw.tracing.config import TracingSettings
from tests.gateway.conftest import consul, gateway_factory, http, upstreams

__all__ = ["consul", "gateway_factory", "http", "upstreams"]

KINDS = {Span.SPAN_KIND_SERVER: "server", Span.SPAN_KIND_CLIENT: "client", Span.SPAN_KIND_INTERNAL: "internal"}


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root span
    attributes: dict[str, Any]
    error: bool  # status code ERROR
    resource: dict[str, Any]


@dataclass
class Receiver:
    url: str  # the traces endpoint, http://127.0.0.1:PORT/v1/traces
    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: int = 0
    status: int = 200  # what the receiver answers
    hold: asyncio.Event | None = None  # set: every export waits for it (a collector that does not answer)

    def named(self, name: str) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.name == name]

    def of_trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.trace_id == trace_id]

    def kind(self, kind: str, trace_id: str | None = None) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.kind == kind and (trace_id is None or s.trace_id == trace_id)]


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, which) if which is not None else None


def decode(body: bytes) -> list[ReceivedSpan]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans: list[ReceivedSpan] = []
    for resource_spans in request.resource_spans:
        resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        name=span.name,
                        kind=KINDS.get(span.kind, str(span.kind)),
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        attributes={kv.key: _value(kv.value) for kv in span.attributes},
                        error=span.status.code == Status.STATUS_CODE_ERROR,
                        resource=resource,
                    )
                )
    return spans


@pytest.fixture
async def otlp() -> AsyncIterator[Receiver]:
    receiver: Receiver | None = None

    async def traces(request: web.Request) -> web.Response:
        assert receiver is not None
        receiver.requests += 1
        assert request.content_type == "application/x-protobuf"
        body = await request.read()
        if receiver.hold is not None:
            await receiver.hold.wait()
        if receiver.status != 200:
            return web.Response(status=receiver.status)
        receiver.spans.extend(decode(body))
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = next(a[1] for a in runner.addresses if isinstance(a, tuple))
    receiver = Receiver(url=f"http://127.0.0.1:{port}/v1/traces")
    yield receiver
    await runner.cleanup()


def tracing_to(receiver: Receiver, **overrides: Any) -> TracingSettings:
    """Tracing on, exporting to ``receiver`` every 50 ms (the default 5 s would make tests wait)."""
    values: dict[str, Any] = {"enabled": True, "endpoint": receiver.url, "schedule_delay": 0.05}
    values.update(overrides)
    return TracingSettings(**values)


@pytest.fixture
def traced_gateway(
    otlp: Receiver, gateway_factory: Callable[..., Awaitable[Gateway]]
) -> Callable[..., Awaitable[Gateway]]:
    """``await traced_gateway(**settings)``: an in-process gateway exporting to ``otlp`` (``tracing=`` to change).

    ``otlp`` comes first so it is torn down after the gateways: they flush their last spans to it when stopping
    (tests that take both fixtures list ``otlp`` first for the same reason)."""

    async def start(**overrides: Any) -> Gateway:
        overrides.setdefault("tracing", tracing_to(otlp))
        return await gateway_factory(**overrides)

    return start
