"""Monitor log lines (hclog formats, levels, bounded buffers) and the in-memory metrics intervals."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from consulgw.devagent import DevAgent
from consulgw.devagent.monitor import BUFFER, LogHub, LogLine
from consulgw.devagent.telemetry import Telemetry
from tests.devagent.support import ManualClock

WHEN = 1_800_000_000.25  # 2027-01-15T08:00:00.250Z


@pytest.mark.parametrize(
    ("line", "text"),
    [
        pytest.param(
            LogLine(WHEN, "info", "agent", "Synced service", (("service", "web"),)),
            "2027-01-15T08:00:00.250Z [INFO]  agent: Synced service: service=web\n",
            id="info",
        ),
        pytest.param(
            LogLine(WHEN, "debug", "agent.http", "Request finished", (("url", "/v1/kv/a b"),)),
            '2027-01-15T08:00:00.250Z [DEBUG] agent.http: Request finished: url="/v1/kv/a b"\n',
            id="debug-quoted-value",
        ),
        pytest.param(
            LogLine(WHEN, "warn", "agent", "Graceful leave complete"),
            "2027-01-15T08:00:00.250Z [WARN]  agent: Graceful leave complete\n",
            id="no-fields",
        ),
    ],
)
def test_text_lines_are_hclogs(line: LogLine, text: str) -> None:
    assert line.text() == text


def test_json_lines() -> None:
    record = json.loads(LogLine(WHEN, "error", "agent", "boom", (("k", "v"),)).json())
    assert record == {
        "@level": "error",
        "@message": "boom",
        "@module": "agent",
        "@timestamp": "2027-01-15T08:00:00.250000Z",
        "k": "v",
    }


async def test_levels_filter_and_slow_readers_lose_the_oldest_lines() -> None:
    hub = LogHub()
    warn_only = hub.subscribe("WARN")
    everything = hub.subscribe("trace")
    for n in range(BUFFER + 10):
        hub.publish(LogLine(WHEN, "debug", "agent", f"line {n}"))
    hub.publish(LogLine(WHEN, "warn", "agent", "careful"))
    assert [line.message for line in warn_only.drain()] == ["careful"]
    kept = everything.drain()
    assert len(kept) == BUFFER
    assert everything.dropped == 11
    assert kept[-1].message == "careful"
    hub.unsubscribe(everything)
    hub.unsubscribe(warn_only)
    assert hub.subscribers == 0


async def test_a_closed_monitor_stream_unsubscribes(dev_agent: DevAgent) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{dev_agent.url}/v1/agent/monitor") as stream:
        assert stream.status == 200
        await asyncio.sleep(0.1)
    for _ in range(250):
        if dev_agent.monitor_streams == 0:
            return
        await asyncio.sleep(0.02)
    pytest.fail("the monitor subscription outlived its stream")


def test_metrics_show_the_last_complete_interval() -> None:
    clock = ManualClock()
    clock.now = 5.0  # wall time 1_800_000_005: inside the interval that starts at ...000
    telemetry = Telemetry(clock, lambda: [("consul.runtime.num_goroutines", 3.0)])
    telemetry.sample("consul.api.http", 2.0, (("method", "GET"), ("path", "v1_kv_")))
    first = telemetry.summary()
    assert first["Timestamp"] == "2027-01-15 08:00:00 +0000 UTC"
    assert first["Gauges"] == [{"Name": "consul.runtime.num_goroutines", "Value": 3, "Labels": {}}]
    (sample,) = first["Samples"]  # type: ignore[misc]
    assert sample == {
        "Name": "consul.api.http", "Count": 1, "Rate": 0.2, "Sum": 2, "Min": 2, "Max": 2, "Mean": 2, "Stddev": 0,
        "Labels": {"method": "GET", "path": "v1_kv_"},
    }  # fmt: skip
    clock.now = 12.0  # a new interval: the previous (complete) one is shown
    telemetry.sample("consul.api.http", 4.0, (("method", "GET"), ("path", "v1_kv_")))
    second = telemetry.summary()
    assert second["Timestamp"] == "2027-01-15 08:00:00 +0000 UTC"
    assert [s["Count"] for s in second["Samples"]] == [1]  # type: ignore[index]
    assert b'consul_api_http_count{method="GET",path="v1_kv_"} 2.0' in telemetry.prometheus()
