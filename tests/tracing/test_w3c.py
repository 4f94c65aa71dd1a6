"""traceparent parsing and formatting, as the W3C Trace Context specification says."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consulgw.tracing.w3c import format_traceparent, parse_traceparent

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        pytest.param(f"00-{TRACE}-{SPAN}-01", (int(TRACE, 16), int(SPAN, 16), 1), id="sampled"),
        pytest.param(f"00-{TRACE}-{SPAN}-00", (int(TRACE, 16), int(SPAN, 16), 0), id="not-sampled"),
        pytest.param(f" 00-{TRACE}-{SPAN}-03\t", (int(TRACE, 16), int(SPAN, 16), 3), id="ows-and-random-flag"),
        pytest.param(f"01-{TRACE}-{SPAN}-01-future", (int(TRACE, 16), int(SPAN, 16), 1), id="later-version-extra"),
        pytest.param(f"00-{TRACE}-{SPAN}-01-extra", None, id="version-00-has-four-fields"),
        pytest.param(f"ff-{TRACE}-{SPAN}-01", None, id="version-ff"),
        pytest.param(f"00-{TRACE.upper()}-{SPAN}-01", None, id="upper-case"),
        pytest.param(f"00-{'0' * 32}-{SPAN}-01", None, id="zero-trace-id"),
        pytest.param(f"00-{TRACE}-{'0' * 16}-01", None, id="zero-parent-id"),
        pytest.param(f"00-{TRACE[:-1]}-{SPAN}-01", None, id="short-trace-id"),
        pytest.param(f"00-{TRACE}-{SPAN}-1", None, id="short-flags"),
        pytest.param("", None, id="empty"),
        pytest.param(f"01-{TRACE}-{SPAN}-01-" + "x" * 600, None, id="too-long"),
    ],
)
def test_parse(value: str, parsed: tuple[int, int, int] | None) -> None:
    assert parse_traceparent(value) == parsed


@given(st.integers(1, (1 << 128) - 1), st.integers(1, (1 << 64) - 1), st.integers(0, 255))
def test_format_parses_back(trace_id: int, span_id: int, flags: int) -> None:
    value = format_traceparent(trace_id, span_id, flags)
    assert len(value) == 55
    assert parse_traceparent(value) == (trace_id, span_id, flags)


@given(st.text(max_size=80))
def test_anything_else_is_none_or_a_valid_context(value: str) -> None:
    parsed = parse_traceparent(value)
    assert parsed is None or (parsed[0] > 0 and parsed[1] > 0)
