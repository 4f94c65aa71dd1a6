"""Go-style durations ("1m30s", "100ms", "2h"), as Consul and our KV policies write them.

``parse_go_duration`` follows Go's ``time.ParseDuration`` exactly (including its error texts, which the dev agent
returns to clients); ``parse_duration`` is the edge validator for our own inputs and raises ConfigError naming the key.
"""

from __future__ import annotations

import re

from consulgw.errors import ConfigError

_UNITS_NS: dict[str, int] = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5 micro sign
    "μs": 1_000,  # U+03BC greek mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}
_PART = re.compile(r"([0-9]*)(\.[0-9]*)?([^0-9.]*)")
_MAX_NS = (1 << 63) - 1


def parse_go_duration(text: str) -> int:
    """Parse a Go duration string into integer nanoseconds, raising ValueError with Go's message."""
    original = text
    quoted = '"' + original + '"'
    if text == "":
        raise ValueError("time: invalid duration " + quoted)
    sign = 1
    if text[0] in "+-":
        sign = -1 if text[0] == "-" else 1
        text = text[1:]
    if text == "0":
        return 0
    if text == "":
        raise ValueError("time: invalid duration " + quoted)
    total = 0
    pos = 0
    while pos < len(text):
        match = _PART.match(text, pos)
        if match is None or match.end() == pos:
            raise ValueError("time: invalid duration " + quoted)
        whole, frac, unit = match.group(1), match.group(2) or "", match.group(3)
        if whole == "" and frac in ("", "."):
            raise ValueError("time: invalid duration " + quoted)
        if unit == "":
            raise ValueError("time: missing unit in duration " + quoted)
        if unit not in _UNITS_NS:
            raise ValueError(f'time: unknown unit "{unit}" in duration {quoted}')
        scale = _UNITS_NS[unit]
        value = int(whole or "0") * scale
        if len(frac) > 1:
            digits = frac[1:]
            value += int(digits) * scale // (10 ** len(digits))
        total += value
        if total > _MAX_NS:
            raise ValueError("time: invalid duration " + quoted)
        pos = match.end()
    return sign * total


def format_go_duration(nanoseconds: int) -> str:
    """Format nanoseconds the way Go's ``Duration.String`` does ("1m30s", "100ms", "0s")."""
    if nanoseconds == 0:
        return "0s"
    sign = "-" if nanoseconds < 0 else ""
    ns = abs(nanoseconds)
    if ns < 1_000_000_000:
        for unit, scale in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if ns >= scale:
                return sign + _trim(ns / scale) + unit
    hours, rest = divmod(ns, 3600 * 1_000_000_000)
    minutes, rest = divmod(rest, 60 * 1_000_000_000)
    seconds = rest / 1_000_000_000
    out = ""
    if hours:
        out += f"{hours}h"
    if hours or minutes:
        out += f"{minutes}m"
    return sign + out + _trim(seconds) + "s"


def _trim(value: float) -> str:
    text = f"{value:.9f}".rstrip("0").rstrip(".")
    return text or "0"


def parse_duration(key: str, value: object, *, minimum: float = 0.0) -> float:
    """Validate one of our own duration settings and return seconds.

    Accepts a Go duration string or a JSON number of seconds. The error names ``key`` and the value.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(f"{key}: {value!r} is not a duration (use a string such as '2s' or '1m30s')")
    if isinstance(value, str):
        try:
            seconds = parse_go_duration(value.strip()) / 1e9
        except ValueError as exc:
            raise ConfigError(f"{key}: {value!r} is not a duration ({exc})") from exc
    else:
        seconds = float(value)
    if seconds < minimum or seconds != seconds:
        raise ConfigError(f"{key}: {value!r} must be at least {minimum:g}s")
    return seconds
