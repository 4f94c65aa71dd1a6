"""UtcTimestamp: the ISO 8601 UTC stamp of every log line, formatted per second and completed per line."""

from __future__ import annotations

import datetime

import pytest

from consulgw.logs import UtcTimestamp


def reference(now: float) -> str:
    """What ``datetime`` makes of the same instant (with the microseconds always written)."""
    moment = datetime.datetime.fromtimestamp(now, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.mark.parametrize(
    "now",
    [
        0.0,
        1.5,
        1_796_507_000.0,  # a whole second keeps its ".000000"
        1_796_507_000.000001,
        1_796_507_000.5,
        1_796_507_059.999998,
        1_798_761_599.25,  # the last second of a year
        1_798_761_600.25,  # and the first of the next
    ],
)
def test_a_stamp_is_the_instant_in_utc_with_microseconds(now: float) -> None:
    stamp = UtcTimestamp(now=lambda: now)
    assert stamp(None, "info", {})["timestamp"] == reference(now)


def test_the_cached_second_follows_the_clock_forwards_and_backwards() -> None:
    times = iter([100.25, 100.75, 101.0, 99.5, 86_400.125])
    stamp = UtcTimestamp(now=lambda: next(times))
    got = [stamp(None, "info", {})["timestamp"] for _ in range(5)]
    assert got == [
        "1970-01-01T00:01:40.250000Z",
        "1970-01-01T00:01:40.750000Z",
        "1970-01-01T00:01:41.000000Z",
        "1970-01-01T00:01:39.500000Z",  # a clock stepped back is written as it is
        "1970-01-02T00:00:00.125000Z",
    ]


def test_other_fields_are_kept() -> None:
    event = UtcTimestamp(now=lambda: 1.0)(None, "info", {"event": "request_completed", "status": 200})
    assert event == {"event": "request_completed", "status": 200, "timestamp": "1970-01-01T00:00:01.000000Z"}
