"""Agent operations clients call: metrics, monitor, leave, sidecar registration, gateway services, check vetting,
and the per-client connection limit.

Sources: agent/agent_endpoint.go (AgentMetrics, AgentMonitor with logging.ValidateLogLevel, AgentLeave,
AgentRegisterService/AgentRegisterCheck), agent/sidecar_service.go and agent.addServiceLocked (sidecar defaults,
port range 21000-21255 from agent/config/default.go, default checks), agent/consul/catalog_endpoint.go
GatewayServices, go-metrics' InmemSink.DisplayMetrics, and consul-api.md 9.1 (the 429 answer of
limits.http_max_conns_per_client, default 200).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp
import pytest

from tests.conformance.conftest import ConsulTarget
from tests.conformance.support import Client, eventually, uid

pytestmark = pytest.mark.asyncio

TOO_MANY = (
    b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\nContent-Length: 81\r\nConnection: close\r\n\r\n"
    b"Your IP is issuing too many concurrent connections, please rate limit your calls\n"
)


# ------------------------------------------------------------------------------------------------------ metrics


async def test_metrics_json_shape(api: Client) -> None:
    await api.get("/v1/catalog/services")  # at least one measured request
    reply = await api.get("/v1/agent/metrics")
    assert reply.status == 200, reply
    assert reply.headers["Content-Type"] == "application/json"
    body = reply.json()
    assert set(body) == {"Timestamp", "Gauges", "Points", "Counters", "Samples"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \+0000 UTC", body["Timestamp"])
    assert body["Gauges"], "an agent always reports runtime gauges"
    for gauge in body["Gauges"]:
        assert set(gauge) == {"Name", "Value", "Labels"}
        assert gauge["Name"].startswith("consul.")
    for sample in body["Samples"] + body["Counters"]:
        assert set(sample) == {"Name", "Count", "Rate", "Sum", "Min", "Max", "Mean", "Stddev", "Labels"}
    names = {g["Name"] for g in body["Gauges"]}
    assert "consul.runtime.alloc_bytes" in names


async def test_metrics_in_prometheus_format_without_retention_is_an_empty_answer(
    api: Client, consul: ConsulTarget
) -> None:
    """A dev agent has no telemetry.prometheus_retention_time: Consul answers 200, no body, the reason in a header."""
    reply = await api.get("/v1/agent/metrics", [("format", "prometheus")])
    if consul.kind == "real" and reply.body:
        pytest.skip("this real Consul has telemetry.prometheus_retention_time set")
    assert reply.status == 200
    assert reply.body == b""
    assert reply.headers["X-Consul-Reason"] == "Prometheus is not enabled since its retention time is not positive"


@pytest.mark.dev_agent_only("starts an agent with telemetry.prometheus_retention_time")
async def test_metrics_in_prometheus_format_with_retention(consul: ConsulTarget) -> None:
    from consulgw.devagent import DevAgent

    async with (
        DevAgent(node="prom-node", port=0, prometheus_retention=60.0) as agent,
        aiohttp.ClientSession() as session,
    ):
        client = Client(agent.url, session)
        await client.get("/v1/catalog/services")
        reply = await client.get("/v1/agent/metrics", [("format", "prometheus")])
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert "# TYPE consul_runtime_alloc_bytes gauge" in reply.text
        assert 'consul_api_http_count{method="GET",path="v1_catalog_services"}' in reply.text
        accepted = await client.get("/v1/agent/metrics", headers={"Accept": "application/openmetrics-text"})
        assert "# TYPE consul_runtime_alloc_bytes gauge" in accepted.text


# ------------------------------------------------------------------------------------------------------ monitor


@pytest.mark.parametrize("level", ["bogus", "verbose", "warning"])
async def test_monitor_refuses_an_unknown_log_level(api: Client, level: str) -> None:
    reply = await api.get("/v1/agent/monitor", [("loglevel", level)])
    assert (reply.status, reply.text) == (400, f"Unknown log level: {level}")


async def test_monitor_streams_log_lines(consul: ConsulTarget) -> None:
    monitor = f"{consul.url}/v1/agent/monitor?loglevel=debug"
    async with aiohttp.ClientSession() as session, session.get(monitor) as stream:
        assert stream.status == 200
        name = uid("monitored")
        for _ in range(3):  # Consul (and the dev agent) log every HTTP request at DEBUG
            async with session.get(f"{consul.url}/v1/kv/{name}"):
                pass
        line = await asyncio.wait_for(stream.content.readline(), 15)
    assert re.match(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \[(TRACE|DEBUG|INFO|WARN|ERROR)\] ", line), line


async def test_monitor_streams_json_lines(consul: ConsulTarget) -> None:
    async with aiohttp.ClientSession() as session:
        url = f"{consul.url}/v1/agent/monitor?loglevel=debug&logjson"
        async with session.get(url) as stream:
            assert stream.status == 200
            for _ in range(3):
                async with session.get(f"{consul.url}/v1/kv/{uid('monitored')}"):
                    pass
            line = await asyncio.wait_for(stream.content.readline(), 15)
    import json

    record = json.loads(line)
    assert {"@level", "@message", "@module", "@timestamp"} <= set(record)


# -------------------------------------------------------------------------------------------------------- leave


@pytest.mark.dev_agent_only("a real agent that leaves is gone for the rest of the suite")
async def test_leave_answers_then_stops_the_agent(consul: ConsulTarget) -> None:
    from consulgw.devagent import DevAgent

    agent = DevAgent(node="leaving", port=0)
    await agent.start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.put(f"{agent.url}/v1/agent/leave") as resp:
                assert resp.status == 200
                assert await resp.read() == b""
            await asyncio.wait_for(agent.left.wait(), 10)
            with pytest.raises(aiohttp.ClientConnectionError):
                async with session.get(f"{agent.url}/v1/status/leader"):
                    pass
    finally:
        await agent.stop()


async def test_leave_accepts_only_put(api: Client) -> None:
    reply = await api.get("/v1/agent/leave")
    assert reply.status == 405
    assert reply.headers["Allow"] == "OPTIONS,PUT"


# ------------------------------------------------------------------------------------------------------ sidecar


async def test_sidecar_service_is_registered_with_consuls_defaults(api: Client) -> None:
    name = uid("web")
    await api.register_service(
        {"Name": name, "Port": 8080, "Tags": ["v1"], "Meta": {"team": "a"}, "Connect": {"SidecarService": {}}}
    )
    services = (await api.get("/v1/agent/services")).json()
    sidecar_id = f"{name}-sidecar-proxy"
    assert sidecar_id in services
    sidecar = services[sidecar_id]
    assert sidecar["Kind"] == "connect-proxy"
    assert sidecar["Service"] == f"{name}-sidecar-proxy"
    assert 21000 <= sidecar["Port"] <= 21255
    assert sidecar["Tags"] == ["v1"]
    assert sidecar["Meta"] == {"team": "a"}
    proxy = sidecar["Proxy"]
    assert proxy["DestinationServiceName"] == name
    assert proxy["DestinationServiceID"] == name
    assert proxy["LocalServiceAddress"] == "127.0.0.1"
    assert proxy["LocalServicePort"] == 8080
    assert "Connect" not in services[name]  # the nested definition is registration sugar, not kept
    checks = (await api.get("/v1/agent/checks")).json()
    names = {c["Name"] for c in checks.values() if c["ServiceID"] == sidecar_id}
    assert names == {"Connect Sidecar Listening", f"Connect Sidecar Aliasing {name}"}
    listed = (await api.get(f"/v1/catalog/service/{name}-sidecar-proxy")).json()
    assert [e["ServiceKind"] for e in listed] == ["connect-proxy"]
    assert listed[0]["ServiceProxy"]["DestinationServiceName"] == name
    connect = (await api.get(f"/v1/catalog/connect/{name}")).json()
    assert [e["ServiceID"] for e in connect] == [sidecar_id]


async def test_sidecar_keeps_given_port_and_checks_and_goes_with_its_service(api: Client) -> None:
    name = uid("api")
    sidecar = {"Port": 21999, "Checks": [{"Name": "own", "TTL": "30s"}], "Proxy": {"LocalServicePort": 9999}}
    await api.register_service({"Name": name, "Port": 8080, "Connect": {"SidecarService": sidecar}})
    services = (await api.get("/v1/agent/services")).json()
    assert services[f"{name}-sidecar-proxy"]["Port"] == 21999
    assert services[f"{name}-sidecar-proxy"]["Proxy"]["LocalServicePort"] == 9999
    checks = (await api.get("/v1/agent/checks")).json()
    assert {c["Name"] for c in checks.values() if c["ServiceID"] == f"{name}-sidecar-proxy"} == {"own"}
    assert (await api.put(f"/v1/agent/service/deregister/{name}")).status == 200
    services = (await api.get("/v1/agent/services")).json()
    assert f"{name}-sidecar-proxy" not in services


async def test_two_sidecars_get_different_ports(api: Client) -> None:
    first, second = uid("a"), uid("b")
    await api.register_service({"Name": first, "Port": 1, "Connect": {"SidecarService": {}}})
    await api.register_service({"Name": second, "Port": 2, "Connect": {"sidecar_service": {}}})
    services = (await api.get("/v1/agent/services")).json()
    ports = {services[f"{first}-sidecar-proxy"]["Port"], services[f"{second}-sidecar-proxy"]["Port"]}
    assert len(ports) == 2
    again = await api.put(
        "/v1/agent/service/register", json_body={"Name": first, "Port": 1, "Connect": {"SidecarService": {}}}
    )
    assert again.status == 200
    after = (await api.get("/v1/agent/services")).json()
    assert after[f"{first}-sidecar-proxy"]["Port"] == services[f"{first}-sidecar-proxy"]["Port"]


# ------------------------------------------------------------------------------------------- gateway services


async def test_gateway_services_of_an_ingress_gateway(api: Client) -> None:
    gateway, service = uid("ingress"), uid("web")
    entry: dict[str, Any] = {
        "Kind": "ingress-gateway",
        "Name": gateway,
        "Listeners": [{"Port": 8888, "Protocol": "http", "Services": [{"Name": service, "Hosts": ["web.test"]}]}],
    }
    assert (await api.put("/v1/config", json_body=entry)).json() is True
    api.cleanups.append(lambda: api.delete(f"/v1/config/ingress-gateway/{gateway}"))
    await api.put(
        "/v1/config", json_body={"Kind": "service-defaults", "Name": service, "Protocol": "http"}
    )  # http ingress listeners need http services on a real Consul
    api.cleanups.append(lambda: api.delete(f"/v1/config/service-defaults/{service}"))
    reply = await eventually(
        lambda: api.get(f"/v1/catalog/gateway-services/{gateway}"), lambda r: bool(r.json()), timeout=10
    )
    assert reply.status == 200
    (mapping,) = reply.json()
    assert mapping["Gateway"]["Name"] == gateway
    assert mapping["Service"]["Name"] == service
    assert mapping["GatewayKind"] == "ingress-gateway"
    assert mapping["Port"] == 8888
    assert mapping["Protocol"] == "http"
    assert mapping["Hosts"] == ["web.test"]
    assert {"CreateIndex", "ModifyIndex"} <= set(mapping)
    assert int(reply.headers["X-Consul-Index"]) >= 1


async def test_gateway_services_of_an_unknown_gateway_is_empty(api: Client) -> None:
    reply = await api.get(f"/v1/catalog/gateway-services/{uid('nogw')}")
    assert reply.status == 200
    assert reply.json() in ([], None)


async def test_gateway_services_needs_a_name(api: Client) -> None:
    reply = await api.get("/v1/catalog/gateway-services/")
    assert (reply.status, reply.text) == (400, "Missing gateway name")


# ------------------------------------------------------------------------------------------------ check vetting


async def test_check_naming_an_unknown_service_is_refused(api: Client) -> None:
    sid = uid("nosvc")
    reply = await api.put("/v1/agent/check/register", json_body={"Name": "c", "TTL": "10s", "ServiceID": sid})
    assert (reply.status, reply.text) == (404, f'ServiceID "{sid}" does not exist')
    assert not [c for c in (await api.agent_checks()).values() if c["ServiceID"] == sid]


# ------------------------------------------------------------------------------------------- connection limit


async def _open(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(host, port)


async def test_connections_past_the_per_client_limit_get_consuls_429(consul: ConsulTarget) -> None:
    """Idle connections count; the ones past the limit (200 by default) are answered 429 and closed at once."""
    url = aiohttp.helpers.URL(consul.url)
    host, port = str(url.host), int(url.port or 80)
    opened = [await _open(host, port) for _ in range(230)]

    async def answer(reader: asyncio.StreamReader) -> bytes | None:
        try:
            return await asyncio.wait_for(reader.read(), 3)
        except TimeoutError:
            return None  # admitted: the agent waits for a request

    try:
        answers = await asyncio.gather(*(answer(reader) for reader, _ in opened))
    finally:
        for _, writer in opened:
            writer.close()
    admitted = [a for a in answers if a is None]
    refused = [a for a in answers if a is not None]
    assert refused
    assert set(refused) == {TOO_MANY}
    if consul.kind == "dev-agent":
        assert len(admitted) == 200
        assert answers.index(TOO_MANY) == 200  # the 201st is the first refused
    else:
        assert 0 < len(admitted) <= 200  # other clients of a shared agent may hold some of this IP's 200


async def test_connections_are_freed_when_closed(consul: ConsulTarget) -> None:
    url = aiohttp.helpers.URL(consul.url)
    host, port = str(url.host), int(url.port or 80)
    for _round in range(3):  # 3 x 150 sequential-but-overlapping connections: never more than 150 at once
        writers = [(await _open(host, port))[1] for _ in range(150)]
        for writer in writers:
            writer.close()
            await writer.wait_closed()
        await asyncio.sleep(0.2)
    async with aiohttp.ClientSession() as session, session.get(f"{consul.url}/v1/status/leader") as resp:
        assert resp.status == 200
