"""The gateway's sampler: its own decision at the edge, the parent's decision inside a trace.

A SERVER span is started with an :class:`Edge` in its parent context (the request's incoming trace context, if any):

- an incoming ``traceparent`` from a ``--trusted-proxies`` peer, with a ``parentbased_*`` sampler: its sampled flag
  decides (the proxy in front of us already decided for the whole trace);
- any other incoming ``traceparent``: its trace id is continued but its sampled flag is ignored. The gateway decides
  with the service's ``sample_ratio`` (else the process ratio), on a random draw rather than on the trace id,
  because an untrusted client chooses its trace id and could pick one under any ratio's threshold (a client must
  not be able to force the gateway to record and export its requests; Traefik #5925);
- no incoming context: a new trace, sampled when its (random) trace id falls under the ratio, as the SDK's
  ``TraceIdRatioBased`` does, so gateways sharing a ratio agree on a trace.

Every other span (the CLIENT spans of a request) follows its parent, as ``ParentBased`` does. A span with no parent
at all (none today) gets the process ratio.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from opentelemetry.context import Context, create_key, get_value
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanContext, SpanKind, get_current_span
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

EDGE_KEY = create_key("consulgw-edge")
_TRACE_ID_LOW = (1 << 64) - 1
_SAMPLE = Decision.RECORD_AND_SAMPLE
_DROP = Decision.DROP


@dataclass(frozen=True, slots=True)
class Edge:
    """What the SERVER span's sampling decision depends on besides the incoming trace context."""

    trusted: bool  # the peer is a --trusted-proxies address
    ratio: float | None  # the service's sample_ratio; None: the process ratio
    decided: bool | None = None  # the gateway already decided (consulgw.tracing.otel decides before the SDK)


class EdgeSampler(Sampler):
    def __init__(self, *, ratio: float, parent_based: bool, rng: random.Random) -> None:
        self._ratio = ratio
        self._parent_based = parent_based
        self._rng = rng

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        parent = get_current_span(parent_context).get_span_context()
        edge = get_value(EDGE_KEY, parent_context) if parent_context is not None else None
        state = parent.trace_state if parent.is_valid else None
        if isinstance(edge, Edge) and edge.decided is not None:
            sampled = edge.decided
        else:
            sampled = self.decide(parent, trace_id, edge if isinstance(edge, Edge) else None)
        if sampled:
            return SamplingResult(_SAMPLE, attributes, state)
        return SamplingResult(_DROP, None, state)

    def decide(self, parent: SpanContext, trace_id: int, edge: Edge | None) -> bool:
        """Is a span of ``trace_id`` under ``parent`` (invalid: none) sampled? ``edge``: it is a SERVER span."""
        if edge is None:  # a span inside a trace: the parent decided
            return parent.trace_flags.sampled if parent.is_valid else _by_trace_id(trace_id, self._ratio)
        ratio = edge.ratio if edge.ratio is not None else self._ratio
        if not parent.is_valid:
            return _by_trace_id(trace_id, ratio)
        if edge.trusted and self._parent_based:
            return parent.trace_flags.sampled
        if edge.trusted:
            return _by_trace_id(trace_id, ratio)
        return ratio >= 1.0 or (ratio > 0.0 and self._rng.random() < ratio)

    def get_description(self) -> str:
        root = f"ratio={self._ratio:g}"
        return f"ConsulgwEdgeSampler{{{root}, parent_based={self._parent_based}}}"


def _by_trace_id(trace_id: int, ratio: float) -> bool:
    """The SDK's TraceIdRatioBased rule: the low 64 bits of the trace id under ratio * 2^64."""
    if ratio >= 1.0:
        return True
    if ratio <= 0.0:
        return False
    return (trace_id & _TRACE_ID_LOW) < round(ratio * (_TRACE_ID_LOW + 1))
