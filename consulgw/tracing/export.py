"""The tracer provider of one gateway process: the SDK's BatchSpanProcessor and OTLP/HTTP exporter, counted.

- **Bounded.** Ended sampled spans wait in the BatchSpanProcessor's queue (``OTEL_BSP_MAX_QUEUE_SIZE``, 2048); its
  own thread exports them in batches (``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``) every ``OTEL_BSP_SCHEDULE_DELAY`` or when a
  batch is full. The event loop only appends to that queue: the HTTP export, its retries with backoff and its
  timeout (``OTEL_EXPORTER_OTLP_TIMEOUT``, 10 s) all happen on the processor's thread, so a slow or dead collector
  never slows a request.
- **Counted.** When the queue is full the oldest span is dropped; a failed export loses its batch. Both are counted
  in ``consulgw_trace_spans_dropped_total{reason="queue_full"|"export_failed"}``. The SDK does not expose its queue
  length, so ``CountingProcessor`` keeps its own count of spans handed over and not yet taken by an export; it can
  be off by the one batch being taken at that instant, so the count is exact to within a batch under a storm.
- **Flushed.** ``shutdown`` exports what is queued. The Gateway calls it last, from its exit stack, on a thread of
  its own and waits at most ``shutdown_timeout``: a dead collector cannot hold the process at exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections.abc import Sequence

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

from consulgw.metrics import GatewayMetrics
from consulgw.tracing.config import TracingSettings
from consulgw.tracing.sampler import EdgeSampler


class _Backlog:
    """Spans handed to the batch processor and not yet taken by an export (shared by two threads)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self.lock = threading.Lock()


class CountingExporter(SpanExporter):
    """The OTLP exporter, counting the spans a failed export loses."""

    def __init__(self, inner: SpanExporter, backlog: _Backlog, metrics: GatewayMetrics) -> None:
        self._inner = inner
        self._backlog = backlog
        self._failed = metrics.trace_spans_dropped.labels("export_failed")

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._backlog.lock:
            self._backlog.count = max(0, self._backlog.count - len(spans))
        result = self._inner.export(spans)
        if result is not SpanExportResult.SUCCESS:
            self._failed.inc(len(spans))
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class CountingProcessor(SpanProcessor):
    """The SDK's BatchSpanProcessor, counting the spans its full queue drops."""

    def __init__(self, inner: BatchSpanProcessor, backlog: _Backlog, metrics: GatewayMetrics) -> None:
        self._inner = inner
        self._backlog = backlog
        self._dropped = metrics.trace_spans_dropped.labels("queue_full")

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self._inner.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is None or not context.trace_flags.sampled:
            return
        backlog = self._backlog
        with backlog.lock:
            full = backlog.count >= backlog.limit
            if not full:
                backlog.count += 1
        if full:
            self._dropped.inc()  # the processor evicts its oldest span to take this one
        self._inner.on_end(span)

    def shutdown(self) -> None:
        self._inner.shutdown()  # type: ignore[no-untyped-call]  # the SDK leaves it unannotated

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class PresetIds(RandomIdGenerator):
    """The SDK's random ids, except that the next trace id can be set first: the gateway draws a new trace's id
    itself and samples on it before it asks the SDK for a span (an unsampled request never reaches the SDK), and
    the SDK's span then carries that same id. Used on the event loop thread only, between two statements."""

    def __init__(self) -> None:
        self._next = 0

    def preset(self, trace_id: int) -> None:
        self._next = trace_id

    def generate_trace_id(self) -> int:
        trace_id, self._next = self._next, 0
        return trace_id or super().generate_trace_id()


class SpanExport:
    """The tracer provider of one process and its exporter: built by the tracer, shut down by it (last)."""

    def __init__(self, settings: TracingSettings, *, metrics: GatewayMetrics, rng: random.Random) -> None:
        backlog = _Backlog(settings.max_queue_size)
        self._otlp = OTLPSpanExporter(endpoint=settings.endpoint)
        batch = BatchSpanProcessor(
            CountingExporter(self._otlp, backlog, metrics),
            max_queue_size=settings.max_queue_size,
            schedule_delay_millis=settings.schedule_delay * 1000,
            max_export_batch_size=settings.max_export_batch_size,
        )
        # Never installed as OpenTelemetry's global provider, and no atexit hook: the Gateway owns it.
        self.sampler = EdgeSampler(ratio=settings.ratio, parent_based=settings.parent_based, rng=rng)
        self.ids = PresetIds()
        self.provider = TracerProvider(
            sampler=self.sampler,
            id_generator=self.ids,
            resource=_resource(settings.service_name),
            shutdown_on_exit=False,
        )
        self.provider.add_span_processor(CountingProcessor(batch, backlog, metrics))
        self._timeout = settings.shutdown_timeout

    async def shutdown(self) -> bool:
        """Flush and stop, on a daemon thread; wait at most ``shutdown_timeout``. True when everything was sent.

        Past the deadline the exporter is stopped too, which ends its retries (an export already on the wire ends
        with its own timeout); the spans still queued are lost.
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def finished() -> None:
            if not done.done():
                done.set_result(None)

        def run() -> None:
            try:
                self.provider.shutdown()
            finally:
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting any more
                    loop.call_soon_threadsafe(finished)

        threading.Thread(target=run, name="consulgw-trace-shutdown", daemon=True).start()
        try:
            await asyncio.wait_for(asyncio.shield(done), self._timeout)
        except TimeoutError:
            self._otlp.shutdown()  # type: ignore[no-untyped-call]
            return False
        return True


def _resource(service_name: str | None) -> Resource:
    """The SDK's resource (``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_SERVICE_NAME``), named ``consulgw`` by default."""
    resource = Resource.create({SERVICE_NAME: service_name} if service_name else {})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "consulgw"}))
    return resource
