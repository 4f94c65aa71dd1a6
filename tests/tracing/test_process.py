"""``consulgw run`` as operators start it: tracing from the standard OTEL_* variables, flushed on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import aiohttp

from tests.gateway.conftest import Consul, start_upstream, wait_for
from tests.gateway.test_resilience_e2e import _has_route, _ready
from tests.support.processes import clean_env, gateway_process, run_consulgw

from .conftest import Receiver

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


async def test_run_traces_with_the_otel_variables_and_flushes_on_sigterm(
    otlp: Receiver, dev_agent: Any, consul: Consul, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    up = await start_upstream("a")
    await consul.register("svc", up.port, tags=["gw.route=/api"])
    env = clean_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=otlp.url.removesuffix("/v1/traces"),
        OTEL_SERVICE_NAME="edge-gw",
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment.name=test",
        OTEL_BSP_SCHEDULE_DELAY="600000",  # nothing is exported before SIGTERM: the flush on the way out sends it
    )
    log = tmp_path / "gateway.log"
    try:
        async with gateway_process(dev_agent.url, "--log-format", "json", log=log, env=env) as gw:
            await wait_for(lambda: _ready(http, gw.admin_url), timeout=20)
            await wait_for(lambda: _has_route(http, gw.admin_url, "svc"))
            headers = {"traceparent": f"00-{CLIENT_TRACE}-00f067aa0ba902b7-01"}
            async with http.get(f"{gw.url}/api/x", headers=headers) as resp:
                assert resp.status == 200
            assert otlp.spans == []
            gw.proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(gw.proc.wait(), 20) == 0
    finally:
        await up.stop()
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    [access] = [line for line in lines if line["event"] == "request_completed"]
    assert access["trace_id"] == CLIENT_TRACE
    assert {s.kind for s in otlp.of_trace(CLIENT_TRACE)} == {"server", "client"}
    [server] = otlp.kind("server")
    assert server.span_id == access["span_id"]
    assert server.name == "GET /api"
    assert server.resource["service.name"] == "edge-gw"
    assert server.resource["deployment.environment.name"] == "test"
    assert any(line["event"] == "tracing_enabled" for line in lines)


async def test_run_refuses_a_bad_otel_variable_in_one_line(dev_agent: Any) -> None:
    env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4318", OTEL_TRACES_SAMPLER="sometimes")
    result = await run_consulgw("run", "--consul", dev_agent.url, env=env, timeout=30)
    assert result.code == 2
    assert "OTEL_TRACES_SAMPLER: 'sometimes' must be one of" in result.err
    assert len(result.err.strip().splitlines()) == 1
