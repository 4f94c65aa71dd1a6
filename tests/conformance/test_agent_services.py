"""Agent service registration, deregistration, agent/services and agent/service/:id.

Reference: consul-api.md sections 1.4, 2.6, 3.1, 3.2, 3.4 and 12 items 10, 11, 13, 20.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conformance.support import Client, uid

pytestmark = pytest.mark.asyncio


async def agent_service(api: Client, service_id: str) -> dict[str, Any]:
    services = (await api.get("/v1/agent/services")).json()
    assert service_id in services, services
    return dict(services[service_id])


async def test_plain_registration_shape(api: Client) -> None:
    """py-consul's aio test asserts this exact object for ``register("foo")``."""
    name = uid("plain")
    await api.register_service({"name": name})
    assert await agent_service(api, name) == {
        "Address": "",
        "Datacenter": "dc1",
        "EnableTagOverride": False,
        "ID": name,
        "Meta": {},
        "Port": 0,
        "Service": name,
        "Tags": [],
        "Weights": {"Passing": 1, "Warning": 1},
    }


async def test_agent_services_empty_is_object_and_excludes_consul(api: Client, consul: Any) -> None:
    services = (await api.get("/v1/agent/services")).json()
    assert isinstance(services, dict)
    assert "consul" not in services
    if consul.kind == "dev-agent":
        assert services == {}


async def test_all_fields_round_trip(api: Client) -> None:
    name, sid = uid("full"), uid("full-id")
    await api.register_service(
        {
            "Name": name,
            "ID": sid,
            "Tags": ["v1", "primary"],
            "Address": "10.0.0.5",
            "Port": 8080,
            "Meta": {"version": "1.2.3", "team_a-b": "x"},
            "TaggedAddresses": {"lan": {"Address": "10.0.0.6", "Port": 8081}},
            "Weights": {"Passing": 10, "Warning": 2},
            "EnableTagOverride": True,
        }
    )
    svc = await agent_service(api, sid)
    assert svc["ID"] == sid
    assert svc["Service"] == name
    assert svc["Tags"] == ["v1", "primary"]
    assert svc["Address"] == "10.0.0.5"
    assert svc["Port"] == 8080
    assert svc["Meta"] == {"version": "1.2.3", "team_a-b": "x"}
    assert svc["Weights"] == {"Passing": 10, "Warning": 2}
    assert svc["EnableTagOverride"] is True
    assert svc["Datacenter"] == "dc1"
    assert svc["TaggedAddresses"] == {
        "lan": {"Address": "10.0.0.6", "Port": 8081},
        "lan_ipv4": {"Address": "10.0.0.5", "Port": 8080},
        "wan_ipv4": {"Address": "10.0.0.5", "Port": 8080},
    }
    # The catalog copy is written before the register call returns (synchronous partial sync, 3.1).
    nodes = (await api.get(f"/v1/catalog/service/{name}")).json()
    assert [n["ServiceID"] for n in nodes] == [sid]
    entry = nodes[0]
    assert entry["ServiceName"] == name
    assert entry["ServiceTags"] == ["v1", "primary"]
    assert entry["ServiceAddress"] == "10.0.0.5"
    assert entry["ServicePort"] == 8080
    assert entry["ServiceMeta"] == {"version": "1.2.3", "team_a-b": "x"}
    assert entry["ServiceWeights"] == {"Passing": 10, "Warning": 2}
    assert entry["ServiceEnableTagOverride"] is True
    assert entry["ServiceKind"] == ""
    assert entry["ServiceTaggedAddresses"]["lan_ipv4"] == {"Address": "10.0.0.5", "Port": 8080}


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        pytest.param("", None, id="no-address"),
        pytest.param("192.0.2.10", {"lan_ipv4", "wan_ipv4"}, id="ipv4"),
        pytest.param("2001:db8::10", {"lan_ipv6", "wan_ipv6"}, id="ipv6"),
        pytest.param("web.example.internal", None, id="hostname"),
    ],
)
async def test_tagged_addresses_auto_populated(api: Client, address: str, expected: set[str] | None) -> None:
    name = uid("tagged")
    await api.register_service({"Name": name, "Address": address, "Port": 81})
    svc = await agent_service(api, name)
    if expected is None:
        assert not svc.get("TaggedAddresses")
    else:
        assert set(svc["TaggedAddresses"]) == expected
        for value in svc["TaggedAddresses"].values():
            assert value == {"Address": address, "Port": 81}


@pytest.mark.parametrize(
    "keys",
    [
        pytest.param(("name", "id", "port", "tags"), id="lowercase"),
        pytest.param(("NAME", "ID", "PORT", "TAGS"), id="uppercase"),
        pytest.param(("nAmE", "Id", "pOrt", "tAgS"), id="mixed"),
    ],
)
async def test_keys_are_case_insensitive(api: Client, keys: tuple[str, str, str, str]) -> None:
    name, sid = uid("case"), uid("case-id")
    name_key, id_key, port_key, tags_key = keys
    await api.register_service({name_key: name, id_key: sid, port_key: 1, tags_key: ["a"]})
    svc = await agent_service(api, sid)
    assert (svc["Service"], svc["Port"], svc["Tags"]) == (name, 1, ["a"])


async def test_snake_case_aliases(api: Client) -> None:
    name = uid("snake")
    await api.register_service(
        {
            "Name": name,
            "enable_tag_override": True,
            "tagged_addresses": {"wan": {"Address": "198.51.100.1", "Port": 443}},
        }
    )
    svc = await agent_service(api, name)
    assert svc["EnableTagOverride"] is True
    assert svc["TaggedAddresses"]["wan"] == {"Address": "198.51.100.1", "Port": 443}


async def test_unknown_top_level_field_is_rejected(api: Client) -> None:
    """Consul decodes agent definitions with DisallowUnknownFields (lib.DecodeJSON), so a typo is a 400.

    NOTE: consul-api.md 1.4 says unknown keys are ignored; Consul's agent/http.go decodeBody -> lib.DecodeJSON
    (decoder.DisallowUnknownFields) and structs.ServiceDefinition.UnmarshalJSON -> lib.UnmarshalJSON say otherwise.
    """
    reply = await api.put("/v1/agent/service/register", json_body={"Name": uid("typo"), "Prot": 80})
    assert reply.status == 400, reply
    assert reply.text.startswith("Request decode failed: "), reply
    assert "Prot" in reply.text


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param({}, "Missing service name", id="missing-name"),
        pytest.param({"ID": "only-id"}, "Missing service name", id="id-without-name"),
        pytest.param({"Name": "n", "Address": "0.0.0.0"}, "Invalid service address", id="any-ipv4"),
        pytest.param({"Name": "n", "Address": "::"}, "Invalid service address", id="any-ipv6"),
        pytest.param(
            {"Name": "n", "Meta": {"consul-version": "1"}},
            "Invalid Service Meta: Couldn't load metadata pair ('consul-version', '1'): Key prefix 'consul-' is reserved for internal use",
            id="meta-reserved-prefix",
        ),
        pytest.param(
            {"Name": "n", "Meta": {"bad.key": "1"}},
            "Invalid Service Meta: Couldn't load metadata pair ('bad.key', '1'): Key contains invalid characters",
            id="meta-invalid-key",
        ),
        pytest.param(
            {"Name": "n", "Meta": {"k" * 129: "1"}},
            f"Invalid Service Meta: Couldn't load metadata pair ('{'k' * 129}', '1'): Key is too long (limit: 128 characters)",
            id="meta-key-too-long",
        ),
        pytest.param(
            {"Name": "n", "Meta": {"k": "v" * 513}},
            f"Invalid Service Meta: Couldn't load metadata pair ('k', '{'v' * 513}'): Value is too long (limit: 512 characters)",
            id="meta-value-too-long",
        ),
        pytest.param(
            {"Name": "n", "Meta": {f"k{i}": "v" for i in range(65)}},
            "Invalid Service Meta: Node metadata cannot contain more than 64 key/value pairs",
            id="meta-too-many-pairs",
        ),
        pytest.param(
            {"Name": "n", "Weights": {"Passing": 0, "Warning": 1}},
            "Invalid Weights: Passing must be greater than 0",
            id="weights-passing-zero",
        ),
        pytest.param(
            {"Name": "n", "Weights": {"Passing": 1, "Warning": -1}},
            "Invalid Weights: Warning must be greater or equal than 0",
            id="weights-warning-negative",
        ),
        pytest.param(
            {"Name": "n", "Check": {"TTL": "10s", "Interval": "10s"}},
            "Invalid check: Interval and TTL cannot both be specified",
            id="check-ttl-and-interval",
        ),
        pytest.param(
            {"Name": "n", "Check": {"HTTP": "http://127.0.0.1:1/"}},
            "Invalid check: Interval must be > 0 for Script, HTTP",
            id="check-http-without-interval",
        ),
        pytest.param(
            {"Name": "n", "Checks": [{"TCP": "127.0.0.1:1", "Interval": "0s"}]},
            "Invalid check: Interval must be > 0 for Script, HTTP",
            id="check-tcp-zero-interval",
        ),
        pytest.param(
            {"Name": "n", "Check": {"Notes": "nothing else"}},
            "Invalid check: TTL must be > 0 for TTL checks",
            id="check-without-type",
        ),
        pytest.param(
            {"Name": "n", "Check": {"AliasService": "other", "TTL": "10s"}},
            "Invalid check: TTL must be not be set for Alias checks",
            id="check-alias-with-ttl",
        ),
        pytest.param(
            {"Name": "n", "Check": {"TTL": "10s", "Status": "healthy"}},
            "Status for checks must 'passing', 'warning', 'critical'",
            id="check-bad-status",
        ),
    ],
)
async def test_registration_validation_texts(api: Client, body: dict[str, Any], expected: str) -> None:
    if body.get("Name") == "n":
        body = body | {"Name": uid("invalid")}
    reply = await api.put("/v1/agent/service/register", json_body=body)
    assert reply.status == 400, reply
    assert reply.text.startswith(expected), reply
    assert "json" not in reply.headers.get("Content-Type", "")


@pytest.mark.parametrize(
    ("ttl", "accepted"),
    [
        pytest.param("30s", True, id="seconds"),
        pytest.param("1m30s", True, id="compound"),
        pytest.param("1h", True, id="hours"),
        pytest.param(30_000_000_000, True, id="nanoseconds-number"),
        pytest.param("10", False, id="missing-unit"),
        pytest.param("ten seconds", False, id="garbage"),
    ],
)
async def test_check_duration_forms(api: Client, ttl: Any, accepted: bool) -> None:
    name = uid("dur")
    reply = await api.put("/v1/agent/service/register", json_body={"Name": name, "Check": {"TTL": ttl}})
    api.cleanups.append(lambda: api.put(f"/v1/agent/service/deregister/{name}"))
    if accepted:
        assert reply.status == 200, reply
        check = (await api.agent_checks())[f"service:{name}"]
        assert check["Type"] == "ttl"
    else:
        assert reply.status == 400, reply
        assert reply.text.startswith("Request decode failed: "), reply
        if ttl == "10":
            assert "missing unit in duration" in reply.text


async def test_reregister_replaces_definition(api: Client) -> None:
    name = uid("rereg")
    await api.register_service({"Name": name, "Port": 1, "Tags": ["a"], "Meta": {"m": "1"}})
    await api.register_service({"Name": name, "Port": 2})
    svc = await agent_service(api, name)
    assert (svc["Port"], svc["Tags"], svc["Meta"]) == (2, [], {})


async def test_deregister_removes_service_and_all_checks(api: Client) -> None:
    name = uid("dereg")
    await api.register_service({"Name": name, "Checks": [{"TTL": "30s"}, {"TTL": "30s"}]})
    assert (await api.put(f"/v1/agent/service/maintenance/{name}", [("enable", "true")])).status == 200
    assert {f"service:{name}:1", f"service:{name}:2", f"_service_maintenance:{name}"} <= set(await api.agent_checks())
    reply = await api.put(f"/v1/agent/service/deregister/{name}")
    assert reply.status == 200, reply
    assert reply.body == b""
    assert name not in (await api.get("/v1/agent/services")).json()
    assert not [c for c in await api.agent_checks() if name in c]
    assert (await api.get(f"/v1/catalog/service/{name}")).json() == []
    assert (await api.get(f"/v1/health/checks/{name}")).json() == []


async def test_deregister_unknown_is_404(api: Client) -> None:
    sid = uid("ghost")
    reply = await api.put(f"/v1/agent/service/deregister/{sid}")
    assert reply.status == 404, reply
    assert reply.text == f'Unknown service ID "{sid}". Ensure that the service ID is passed, not the service name.'


async def test_deregister_by_name_when_id_differs_is_404(api: Client) -> None:
    name, sid = uid("byname"), uid("byname-id")
    await api.register_service({"Name": name, "ID": sid})
    reply = await api.put(f"/v1/agent/service/deregister/{name}")
    assert reply.status == 404, reply
    assert sid in (await api.get("/v1/agent/services")).json()


# --------------------------------------------------------------------------------------------- agent/service/:id (2.6)


async def test_agent_service_by_id_content_hash(api: Client) -> None:
    name = uid("hash")
    await api.register_service({"Name": name, "Port": 7000, "Tags": ["x"]})
    reply = await api.get(f"/v1/agent/service/{name}")
    assert reply.status == 200, reply
    body = reply.json()
    assert body["ID"] == name
    assert body["Service"] == name
    assert body["Port"] == 7000
    assert body["Tags"] == ["x"]
    assert body["ContentHash"]
    assert body["ContentHash"] == reply.headers["X-Consul-ContentHash"]
    assert "X-Consul-Index" not in reply.headers
    again = await api.get(f"/v1/agent/service/{name}")
    assert again.json()["ContentHash"] == body["ContentHash"]


async def test_agent_service_hash_blocking_times_out_with_same_hash(api: Client) -> None:
    name = uid("hashwait")
    await api.register_service({"Name": name})
    current = (await api.get(f"/v1/agent/service/{name}")).headers["X-Consul-ContentHash"]
    reply = await api.get(f"/v1/agent/service/{name}", [("hash", current), ("wait", "1s")])
    assert reply.status == 200, reply
    assert reply.headers["X-Consul-ContentHash"] == current
    assert 0.9 <= reply.elapsed < 5.0


async def test_agent_service_hash_blocking_wakes_on_change(api: Client) -> None:
    name = uid("hashwake")
    await api.register_service({"Name": name, "Port": 1})
    current = (await api.get(f"/v1/agent/service/{name}")).headers["X-Consul-ContentHash"]
    waiter = asyncio.create_task(api.get(f"/v1/agent/service/{name}", [("hash", current), ("wait", "10s")]))
    await asyncio.sleep(0.3)
    assert not waiter.done()
    await api.register_service({"Name": name, "Port": 2})
    reply = await asyncio.wait_for(waiter, 5)
    assert reply.status == 200, reply
    assert reply.json()["Port"] == 2
    assert reply.headers["X-Consul-ContentHash"] != current


async def test_agent_service_unknown_id_is_404(api: Client) -> None:
    sid = uid("nosuch")
    reply = await api.get(f"/v1/agent/service/{sid}")
    assert reply.status == 404, reply
    assert reply.text == f"unknown service ID: {sid}"


async def test_agent_services_filter(api: Client) -> None:
    a, b = uid("fa"), uid("fb")
    await api.register_service({"Name": a, "Tags": ["blue"]})
    await api.register_service({"Name": b, "Tags": ["green"]})
    reply = await api.get("/v1/agent/services", [("filter", '"blue" in Tags')])
    assert reply.status == 200, reply
    got = reply.json()
    assert a in got
    assert b not in got
