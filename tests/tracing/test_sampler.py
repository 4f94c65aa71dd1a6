"""The edge sampler: the gateway decides at the edge, a trusted proxy may decide for it, a client never does."""

from __future__ import annotations

import random

import pytest
from opentelemetry.context import Context, set_value
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, set_span_in_context
from opentelemetry.trace.span import TraceState

from consulgw.tracing.sampler import EDGE_KEY, Edge, EdgeSampler

LOW = 0x0A0B0C0D0E0F10110000000000000001  # low 64 bits near 0: under any ratio's threshold
HIGH = 0x0A0B0C0D0E0F1011FFFFFFFFFFFFFFFF  # low 64 bits at the top: over any ratio below 1


class FixedDraw(random.Random):
    """``random()`` always returns ``value`` (the sampler's draw for untrusted parents)."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def parent(trace_id: int, *, sampled: bool, state: TraceState | None = None) -> Context:
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    context = SpanContext(trace_id, 0x1122334455667788, is_remote=True, trace_flags=flags, trace_state=state)
    return set_span_in_context(NonRecordingSpan(context))


def edge(context: Context | None, *, trusted: bool, ratio: float | None = None) -> Context:
    return set_value(EDGE_KEY, Edge(trusted=trusted, ratio=ratio), context or Context())


@pytest.mark.parametrize(
    ("ratio", "parent_based", "draw", "context", "trace_id", "sampled"),
    [
        # A new trace: the trace id decides, as TraceIdRatioBased does.
        pytest.param(1.0, True, 0.9, edge(None, trusted=False), HIGH, True, id="new-trace-ratio-1"),
        pytest.param(0.0, True, 0.0, edge(None, trusted=False), LOW, False, id="new-trace-ratio-0"),
        pytest.param(0.5, True, 0.9, edge(None, trusted=False), LOW, True, id="new-trace-low-id"),
        pytest.param(0.5, True, 0.0, edge(None, trusted=False), HIGH, False, id="new-trace-high-id"),
        pytest.param(0.0, True, 0.0, edge(None, trusted=False, ratio=1.0), HIGH, True, id="service-ratio-wins"),
        pytest.param(1.0, True, 0.0, edge(None, trusted=False, ratio=0.0), LOW, False, id="service-ratio-0"),
        # An untrusted client's context: its flag and its chosen trace id are ignored, a draw decides.
        pytest.param(
            0.0, True, 0.0, edge(parent(LOW, sampled=True), trusted=False), LOW, False, id="client-flag-ignored"
        ),
        pytest.param(
            0.01, True, 0.5, edge(parent(LOW, sampled=True), trusted=False), LOW, False, id="chosen-low-id-ignored"
        ),
        pytest.param(0.5, True, 0.25, edge(parent(HIGH, sampled=False), trusted=False), HIGH, True, id="draw-under"),
        pytest.param(1.0, True, 0.99, edge(parent(HIGH, sampled=False), trusted=False), HIGH, True, id="ratio-1-all"),
        # A trusted proxy's context with a parentbased sampler: its flag decides.
        pytest.param(0.0, True, 0.0, edge(parent(HIGH, sampled=True), trusted=True), HIGH, True, id="trusted-yes"),
        pytest.param(1.0, True, 0.0, edge(parent(LOW, sampled=False), trusted=True), LOW, False, id="trusted-no"),
        # ... without parentbased: the trace id decides (the proxy is trusted, so is its trace id).
        pytest.param(0.5, False, 0.0, edge(parent(HIGH, sampled=True), trusted=True), HIGH, False, id="not-pb-high"),
        pytest.param(0.5, False, 0.9, edge(parent(LOW, sampled=False), trusted=True), LOW, True, id="not-pb-low"),
        # Spans inside a request (attempts, IdP and Redis calls) follow their parent.
        pytest.param(0.0, True, 0.0, parent(HIGH, sampled=True), HIGH, True, id="child-of-sampled"),
        pytest.param(1.0, False, 0.0, parent(LOW, sampled=False), LOW, False, id="child-of-unsampled"),
        pytest.param(0.5, True, 0.0, None, LOW, True, id="no-parent-no-edge"),
        # The gateway decided before asking the SDK for the span: the decision stands.
        pytest.param(
            0.0, True, 0.9, set_value(EDGE_KEY, Edge(trusted=False, ratio=0.0, decided=True)), HIGH, True, id="decided"
        ),
    ],
)
def test_decisions(
    ratio: float, parent_based: bool, draw: float, context: Context | None, trace_id: int, sampled: bool
) -> None:
    sampler = EdgeSampler(ratio=ratio, parent_based=parent_based, rng=FixedDraw(draw))
    result = sampler.should_sample(context, trace_id, "GET /x", SpanKind.SERVER, {"a": 1})
    assert result.decision is (Decision.RECORD_AND_SAMPLE if sampled else Decision.DROP)
    assert dict(result.attributes) == ({"a": 1} if sampled else {})


def test_the_parents_tracestate_is_kept() -> None:
    state = TraceState([("vendor", "opaque")])
    sampler = EdgeSampler(ratio=1.0, parent_based=True, rng=FixedDraw(0.0))
    result = sampler.should_sample(edge(parent(LOW, sampled=True, state=state), trusted=True), LOW, "GET /x")
    assert result.trace_state == state
    assert "ratio=1" in sampler.get_description()
