"""Build the process's tracer: OpenTelemetry when ``OTEL_*`` ask for it and the ``otel`` extra is there, else none.

When the variables ask for tracing and the extra is missing, one ``tracing_unavailable`` line says so at start-up
(with the command that installs it) and the gateway runs untraced. Nothing is imported from OpenTelemetry unless
tracing is on.
"""

from __future__ import annotations

import importlib
import random
from typing import TYPE_CHECKING, Any

from consulgw.tracing.api import NO_TRACER, Tracer
from consulgw.tracing.config import TracingSettings

if TYPE_CHECKING:
    from consulgw.metrics import GatewayMetrics

INSTALL_HINT = "pip install 'consulgw[otel]'"


def start_tracing(
    settings: TracingSettings,
    *,
    metrics: GatewayMetrics,
    rng: random.Random,
    log: Any,
    scheme: str = "http",
    redis_url: str | None = None,
) -> Tracer:
    """The tracer to inject into the request path; the caller owns it and awaits ``aclose()`` when stopping."""
    if not settings.enabled:
        return NO_TRACER
    try:
        otel = importlib.import_module("consulgw.tracing.otel")
    except ImportError as exc:
        log.warning(
            "tracing_unavailable",
            reason=f"OTEL_* variables ask for tracing but OpenTelemetry is not installed ({exc.name or exc})",
            hint=INSTALL_HINT,
        )
        return NO_TRACER
    tracer: Tracer = otel.OtelTracer(settings, metrics=metrics, rng=rng, scheme=scheme, redis_url=redis_url)
    log.info(
        "tracing_enabled",
        endpoint=settings.endpoint,
        sampler=settings.sampler,
        ratio=settings.ratio,
        max_queue_size=settings.max_queue_size,
    )
    return tracer
