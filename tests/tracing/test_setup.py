"""start_tracing: nothing when off, one clear line when the extra is missing, the OTel tracer otherwise."""

from __future__ import annotations

import random
import sys

import pytest
import structlog
from structlog.testing import capture_logs

from consulgw.metrics import GatewayMetrics
from consulgw.tracing.api import NO_TRACER, Tracer
from consulgw.tracing.config import TracingSettings
from consulgw.tracing.setup import INSTALL_HINT, start_tracing

ON = TracingSettings(enabled=True, endpoint="http://127.0.0.1:9/v1/traces")


def start(settings: TracingSettings) -> Tracer:
    return start_tracing(settings, metrics=GatewayMetrics(), rng=random.Random(0), log=structlog.get_logger("t"))


def test_off_is_the_no_op_tracer() -> None:
    with capture_logs() as logs:
        assert start(TracingSettings()) is NO_TRACER
    assert logs == []


@pytest.mark.parametrize("missing", ["opentelemetry", "opentelemetry.sdk.trace"])
def test_asked_for_without_the_extra_says_so_once_and_runs_untraced(
    monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    # A module set to None in sys.modules raises ImportError when imported: what a missing package does.
    monkeypatch.setitem(sys.modules, missing, None)
    monkeypatch.delitem(sys.modules, "consulgw.tracing.otel", raising=False)
    monkeypatch.delitem(sys.modules, "consulgw.tracing.export", raising=False)
    monkeypatch.delitem(sys.modules, "consulgw.tracing.sampler", raising=False)
    with capture_logs() as logs:
        assert start(ON) is NO_TRACER
    [line] = logs
    assert line["event"] == "tracing_unavailable"
    assert line["log_level"] == "warning"
    assert line["hint"] == INSTALL_HINT == "pip install 'consulgw[otel]'"
    assert "opentelemetry" in line["reason"]


async def test_on_builds_a_tracer_and_says_where_it_exports() -> None:
    with capture_logs() as logs:
        tracer = start(ON)
    assert tracer is not NO_TRACER
    assert tracer.enabled
    [line] = logs
    assert line["event"] == "tracing_enabled"
    assert line["endpoint"] == ON.endpoint
    await tracer.aclose()
