"""Tracing settings from the standard ``OTEL_*`` environment variables, parsed once at the edge.

No OpenTelemetry import here: ``consulgw run`` parses these whether or not the ``otel`` extra is installed, so a
gateway without the extra can say clearly that tracing was asked for and is not available.

When tracing is on: ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` turn it off;
``OTEL_TRACES_EXPORTER=otlp`` turns it on; unset, it is on when an OTLP endpoint is set
(``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``). Off by default: tracing costs CPU on
every request, so a gateway never starts exporting because a library default said so.

consulgw reads the variables it decides with (endpoint, protocol, service name, sampler, batch limits, propagators)
and rejects bad values naming the variable. The OTLP exporter of the SDK reads the rest itself, as the SDK
documents: ``OTEL_EXPORTER_OTLP_(TRACES_)HEADERS``, ``_TIMEOUT``, ``_COMPRESSION``, ``_CERTIFICATE``,
``_CLIENT_KEY``, ``_CLIENT_CERTIFICATE``; and the SDK's ``Resource`` reads ``OTEL_RESOURCE_ATTRIBUTES``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from consulgw.errors import ConfigError

DEFAULT_ENDPOINT = "http://localhost:4318/v1/traces"
SAMPLERS = frozenset(
    {
        "always_on",
        "always_off",
        "traceidratio",
        "parentbased_always_on",
        "parentbased_always_off",
        "parentbased_traceidratio",
    }
)
_PROPAGATORS = frozenset({"tracecontext", "baggage"})  # baggage: passed upstream untouched, as any other header


@dataclass(frozen=True, slots=True, kw_only=True)
class TracingSettings:
    """What consulgw needs to build its tracer provider. ``enabled=False`` (the default) builds nothing."""

    enabled: bool = False
    endpoint: str = DEFAULT_ENDPOINT  # full OTLP/HTTP traces URL
    service_name: str | None = None  # None: service.name from OTEL_RESOURCE_ATTRIBUTES, else "consulgw"
    ratio: float = 1.0  # root sampling probability: always_on 1, always_off 0, *traceidratio the argument
    parent_based: bool = True  # a trusted peer's sampled flag is followed (parentbased_* samplers)
    max_queue_size: int = 2048  # spans waiting for export; more are dropped (and counted)
    max_export_batch_size: int = 512
    schedule_delay: float = 5.0  # seconds between exports (sooner when a batch is full)
    shutdown_timeout: float = 5.0  # how long stopping the gateway waits for the last export (then spans are lost)

    @property
    def sampler(self) -> str:
        """The sampler as ``OTEL_TRACES_SAMPLER`` would name it."""
        if self.ratio >= 1.0:
            root = "always_on"
        elif self.ratio <= 0.0:
            root = "always_off"
        else:
            root = "traceidratio"
        return f"parentbased_{root}" if self.parent_based else root


def tracing_settings(environ: Mapping[str, str]) -> TracingSettings:
    """Parse the ``OTEL_*`` variables; raise ConfigError naming the variable and the value."""

    def get(name: str) -> str | None:
        value = environ.get(name, "").strip()
        return value or None

    endpoint = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    base = get("OTEL_EXPORTER_OTLP_ENDPOINT")
    exporter = (get("OTEL_TRACES_EXPORTER") or "").lower()
    if (get("OTEL_SDK_DISABLED") or "").lower() == "true" or exporter == "none":
        return TracingSettings()
    if exporter and exporter != "otlp":
        raise ConfigError(f"OTEL_TRACES_EXPORTER: {exporter!r} is not supported (consulgw exports 'otlp' or 'none')")
    if not exporter and endpoint is None and base is None:
        return TracingSettings()
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = get(name)
        if protocol is not None:
            if protocol != "http/protobuf":
                raise ConfigError(
                    f"{name}: {protocol!r} is not supported (consulgw exports OTLP over HTTP: http/protobuf)"
                )
            break
    if endpoint is None:
        endpoint = f"{base.rstrip('/')}/v1/traces" if base is not None else DEFAULT_ENDPOINT
    if not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT: {endpoint!r} must be an http:// or https:// URL")
    propagators = get("OTEL_PROPAGATORS")
    if propagators is not None:
        unsupported = [p for p in (item.strip() for item in propagators.split(",")) if p and p not in _PROPAGATORS]
        if unsupported:
            raise ConfigError(
                f"OTEL_PROPAGATORS: {', '.join(unsupported)} not supported (consulgw propagates W3C tracecontext)"
            )
    sampler = (get("OTEL_TRACES_SAMPLER") or "parentbased_always_on").lower()
    if sampler not in SAMPLERS:
        raise ConfigError(f"OTEL_TRACES_SAMPLER: {sampler!r} must be one of {', '.join(sorted(SAMPLERS))}")
    ratio = 0.0 if sampler.endswith("always_off") else 1.0
    if sampler.endswith("traceidratio"):
        ratio = _ratio(get("OTEL_TRACES_SAMPLER_ARG"))
    queue = _count("OTEL_BSP_MAX_QUEUE_SIZE", get("OTEL_BSP_MAX_QUEUE_SIZE"), 2048)
    batch = _count("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE"), 512)
    if batch > queue:
        raise ConfigError(f"OTEL_BSP_MAX_EXPORT_BATCH_SIZE: {batch} must not exceed OTEL_BSP_MAX_QUEUE_SIZE ({queue})")
    return TracingSettings(
        enabled=True,
        endpoint=endpoint,
        service_name=get("OTEL_SERVICE_NAME"),
        ratio=ratio,
        parent_based=sampler.startswith("parentbased_"),
        max_queue_size=queue,
        max_export_batch_size=batch,
        schedule_delay=_count("OTEL_BSP_SCHEDULE_DELAY", get("OTEL_BSP_SCHEDULE_DELAY"), 5000) / 1000,
    )


def _ratio(text: str | None) -> float:
    if text is None:
        return 1.0  # the SDK's default argument
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"OTEL_TRACES_SAMPLER_ARG: {text!r} must be a probability between 0 and 1")
    return value


def _count(name: str, text: str | None, default: int) -> int:
    if text is None:
        return default
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"{name}: {text!r} must be a whole number >= 1")
    return int(text)
