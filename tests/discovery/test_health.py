"""instance_from_entry: one /v1/health/service entry -> Instance, with Consul's health precedence."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from consulgw.discovery.health import aggregate_health, instance_from_entry
from consulgw.errors import DiscoveryError
from consulgw.model.snapshot import Health, Weights

SERF = {
    "Node": "node1",
    "CheckID": "serfHealth",
    "Name": "Serf Health Status",
    "Status": "passing",
    "Notes": "",
    "Output": "Agent alive and reachable",
    "ServiceID": "",
    "ServiceName": "",
    "ServiceTags": [],
    "Type": "",
    "Interval": "",
    "Timeout": "",
    "ExposedPort": 0,
    "Definition": {},
    "CreateIndex": 12,
    "ModifyIndex": 12,
}


def check(check_id: str, status: str, *, service_id: str = "web-1") -> dict[str, Any]:
    return {
        **SERF,
        "CheckID": check_id,
        "Name": check_id,
        "Status": status,
        "Output": "",
        "ServiceID": service_id,
        "ServiceName": "web" if service_id else "",
        "Type": "ttl" if service_id else "",
    }


def entry(*checks: dict[str, Any], **service: Any) -> dict[str, Any]:
    """A realistic entry, shaped as consul-api.md section 5.1 shows it."""
    svc: dict[str, Any] = {
        "ID": "web-1",
        "Service": "web",
        "Tags": ["v1", "gw.host=api.example.com"],
        "Address": "10.0.0.5",
        "TaggedAddresses": {
            "lan_ipv4": {"Address": "10.0.0.5", "Port": 8080},
            "wan_ipv4": {"Address": "10.0.0.5", "Port": 8080},
        },
        "Meta": None,
        "Port": 8080,
        "Weights": {"Passing": 1, "Warning": 1},
        "EnableTagOverride": False,
        "Proxy": {"Mode": "", "MeshGateway": {}, "Expose": {}},
        "Connect": {},
        "CreateIndex": 10804,
        "ModifyIndex": 10804,
    }
    svc.update(service)
    return {
        "Node": {
            "ID": "2bb4ea3c-1e6b-4b0f-9b39-6f5a7b6c1c5e",
            "Node": "node1",
            "Address": "127.0.0.1",
            "Datacenter": "dc1",
            "TaggedAddresses": {"lan": "127.0.0.1", "wan": "127.0.0.1"},
            "Meta": {"consul-network-segment": ""},
            "CreateIndex": 12,
            "ModifyIndex": 13,
        },
        "Service": svc,
        "Checks": [SERF, *checks] if checks != (None,) else None,
    }


def test_full_entry() -> None:
    inst = instance_from_entry(entry(check("service:web-1", "passing"), Meta={"gw-scheme": "https", "team": "a"}))
    assert inst.id == "node1/web-1"
    assert (inst.service, inst.service_id, inst.node) == ("web", "web-1", "node1")
    assert (inst.address, inst.port, inst.endpoint) == ("10.0.0.5", 8080, "10.0.0.5:8080")
    assert inst.tags == ("v1", "gw.host=api.example.com")
    assert dict(inst.meta) == {"gw-scheme": "https", "team": "a"}
    assert inst.scheme == "https"
    assert inst.health is Health.PASSING
    assert inst.weights == Weights(passing=1, warning=1)
    assert inst.datacenter == "dc1"  # Node.Datacenter: what $DC in a Fabio tag expands to


def test_datacenter_is_optional() -> None:
    raw = entry()
    del raw["Node"]["Datacenter"]
    assert instance_from_entry(raw).datacenter == ""


def test_meta_is_read_only() -> None:
    inst = instance_from_entry(entry(Meta={"a": "b"}))
    with pytest.raises(TypeError):
        inst.meta["a"] = "c"  # type: ignore[index]


@pytest.mark.parametrize(
    ("checks", "expected"),
    [
        pytest.param([], Health.PASSING, id="only-serf-passing"),
        pytest.param([None], Health.PASSING, id="checks-null"),
        pytest.param([check("service:web-1", "passing")], Health.PASSING, id="ttl-passing"),
        pytest.param([check("service:web-1", "warning")], Health.WARNING, id="ttl-warning"),
        pytest.param([check("service:web-1", "critical")], Health.CRITICAL, id="ttl-critical"),
        pytest.param(
            [check("a", "warning"), check("b", "critical"), check("c", "passing")], Health.CRITICAL, id="critical-wins"
        ),
        pytest.param([check("a", "warning"), check("b", "passing")], Health.WARNING, id="warning-over-passing"),
        pytest.param(
            [check("service:web-1", "passing"), check("_service_maintenance:web-1", "critical")],
            Health.MAINTENANCE,
            id="service-maintenance",
        ),
        pytest.param(
            [check("_node_maintenance", "critical", service_id=""), check("service:web-1", "passing")],
            Health.MAINTENANCE,
            id="node-maintenance",
        ),
        pytest.param(
            [check("service:web-1", "critical"), check("_node_maintenance", "critical", service_id="")],
            Health.MAINTENANCE,
            id="maintenance-beats-critical",
        ),
        pytest.param([check("service:web-1", "maintenance")], Health.MAINTENANCE, id="status-maintenance"),
        pytest.param([check("service:web-1", "bogus")], Health.CRITICAL, id="unknown-status-fails-closed"),
    ],
)
def test_health_precedence(checks: list[dict[str, Any] | None], expected: Health) -> None:
    assert instance_from_entry(entry(*checks)).health is expected


@pytest.mark.parametrize(
    ("serf", "expected"),
    [
        pytest.param("passing", Health.PASSING, id="serf-passing"),
        pytest.param("critical", Health.CRITICAL, id="serf-critical-counts"),
        pytest.param("warning", Health.WARNING, id="serf-warning-counts"),
    ],
)
def test_node_level_checks_count(serf: str, expected: Health) -> None:
    raw = entry(check("service:web-1", "passing"))
    raw["Checks"][0] = {**SERF, "Status": serf}
    assert instance_from_entry(raw).health is expected


@pytest.mark.parametrize(
    ("service", "address"),
    [
        pytest.param({"Address": "10.0.0.5"}, "10.0.0.5", id="service-address"),
        pytest.param({"Address": ""}, "127.0.0.1", id="node-address-fallback"),
        pytest.param({"Address": None}, "127.0.0.1", id="null-address-fallback"),
        pytest.param({"Address": "::1"}, "::1", id="ipv6"),
    ],
)
def test_address(service: dict[str, Any], address: str) -> None:
    assert instance_from_entry(entry(**service)).address == address


def test_ipv6_endpoint() -> None:
    assert instance_from_entry(entry(Address="fd00::5")).endpoint == "[fd00::5]:8080"


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        pytest.param({"Passing": 10, "Warning": 1}, Weights(passing=10, warning=1), id="explicit"),
        pytest.param({"Passing": 3, "Warning": 0}, Weights(passing=3, warning=0), id="warning-excluded"),
        pytest.param(None, Weights(), id="null-default"),
        pytest.param({}, Weights(), id="empty-default"),
    ],
)
def test_weights(weights: dict[str, int] | None, expected: Weights) -> None:
    assert instance_from_entry(entry(Weights=weights)).weights == expected


def test_effective_weight_follows_health() -> None:
    warn = instance_from_entry(entry(check("service:web-1", "warning"), Weights={"Passing": 5, "Warning": 2}))
    assert warn.weight == 2
    crit = instance_from_entry(entry(check("service:web-1", "critical"), Weights={"Passing": 5, "Warning": 2}))
    assert crit.weight == 0


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        pytest.param(None, (), id="null"),
        pytest.param([], (), id="empty"),
        pytest.param(["a", "b"], ("a", "b"), id="two"),
    ],
)
def test_tags(tags: list[str] | None, expected: tuple[str, ...]) -> None:
    assert instance_from_entry(entry(Tags=tags)).tags == expected


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        pytest.param(lambda e: e.pop("Service"), "Service is None, expected an object", id="no-service"),
        pytest.param(lambda e: e["Node"].pop("Node"), "Node.Node is None", id="no-node-name"),
        pytest.param(lambda e: e["Service"].update(Port="80"), "Service.Port is '80'", id="port-string"),
        pytest.param(lambda e: e["Service"].update(Port=70000), "a port in 0-65535", id="port-range"),
        pytest.param(lambda e: e["Service"].update(Tags="a,b"), "Service.Tags is 'a,b'", id="tags-string"),
        pytest.param(lambda e: e["Service"].update(Meta={"a": 1}), "Service.Meta['a'] is 1", id="meta-int"),
        pytest.param(
            lambda e: e["Service"].update(Weights={"Passing": -1}), "Service.Weights.Passing is -1", id="weight-neg"
        ),
        pytest.param(lambda e: e.update(Checks={"x": 1}), "Checks is {'x': 1}", id="checks-object"),
        pytest.param(lambda e: e["Checks"].append({"CheckID": "x"}), "Checks['x'].Status is None", id="no-status"),
        pytest.param(
            lambda e: (e["Service"].update(Address=""), e["Node"].update(Address="")),
            "Service.Address and Node.Address",
            id="no-address",
        ),
    ],
)
def test_malformed_entries_name_the_field(mutate: Any, message: str) -> None:
    raw = copy.deepcopy(entry())
    mutate(raw)
    with pytest.raises(DiscoveryError) as info:
        instance_from_entry(raw)
    assert message in str(info.value)


def test_error_names_the_instance() -> None:
    raw = entry(Port=None)
    with pytest.raises(DiscoveryError, match=r"node1/web-1: Service\.Port is None"):
        instance_from_entry(raw)


def test_aggregate_health_without_checks() -> None:
    assert aggregate_health([]) is Health.PASSING
    assert aggregate_health(None) is Health.PASSING
