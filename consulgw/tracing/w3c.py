"""W3C Trace Context ``traceparent``: parse and format (https://www.w3.org/TR/trace-context/#traceparent-header).

Written here rather than taken from the SDK's propagator because it runs on every request while tracing is on:
this is one regular expression, where the propagator's extract-and-inject round costs several microseconds
(bench/micro/tracing_overhead.py). Pure functions, no OpenTelemetry import.

Parsing follows the specification: lower-case hex only; version ``ff`` is invalid; version ``00`` has exactly four
fields; a later version may append fields (``-...``), which are ignored; an all-zero trace id or parent id is
invalid. Anything invalid is no context at all (the gateway then starts a new trace).
"""

from __future__ import annotations

import re
from typing import Final

MAX_LENGTH: Final = 512  # longer values are refused without parsing
_TRACEPARENT: Final = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE: Final = "0" * 32
_ZERO_SPAN: Final = "0" * 16


def parse_traceparent(value: str) -> tuple[int, int, int] | None:
    """(trace id, parent id, flags) of a valid ``traceparent`` value, else None."""
    if len(value) > MAX_LENGTH:
        return None
    match = _TRACEPARENT.fullmatch(value.strip(" \t"))
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return int(trace_id, 16), int(span_id, 16), int(flags, 16)


def format_traceparent(trace_id: int, span_id: int, flags: int) -> str:
    """A version ``00`` ``traceparent`` value."""
    return f"00-{trace_id:032x}-{span_id:016x}-{flags & 0xFF:02x}"
