"""OpenTelemetry tracing, an optional extra (``pip install 'consulgw[otel]'``); off unless ``OTEL_*`` ask for it.

- :mod:`~consulgw.tracing.api`: the seam the request path calls (``Tracer``) and ``NO_TRACER``, its no-op.
- :mod:`~consulgw.tracing.config`: ``TracingSettings`` from the standard ``OTEL_*`` variables.
- :mod:`~consulgw.tracing.setup`: ``start_tracing``, which loads the OpenTelemetry implementation when it can.
- :mod:`~consulgw.tracing.otel`, :mod:`~consulgw.tracing.sampler`, :mod:`~consulgw.tracing.export`: the
  implementation on the OpenTelemetry SDK (spans, the edge sampler, the bounded and counted export).
- :mod:`~consulgw.tracing.attributes`: span names and attribute values (pure functions).

Nothing in this package's ``__init__``, ``api``, ``config`` or ``setup`` imports OpenTelemetry, and ``__init__``
imports nothing heavy at all: ``consulgw.settings`` imports it before ``consulgw run`` has chosen prometheus_client's
value store (``consulgw.metrics``).
"""

from consulgw.tracing.api import NO_TRACER, Attempt, Call, RequestTrace, Tracer
from consulgw.tracing.config import TracingSettings, tracing_settings

__all__ = [
    "NO_TRACER",
    "Attempt",
    "Call",
    "RequestTrace",
    "Tracer",
    "TracingSettings",
    "tracing_settings",
]
