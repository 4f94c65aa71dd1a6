"""py-consul's synchronous client (``consul.Consul``) against the DevAgent.

Scenarios and assertions follow criteo/py-consul's own tests (tests/api/test_kv.py, test_agent.py, test_health.py,
test_session.py, test_txn.py, test_status.py and the catalog test in tests/test_std.py). Differences, each deliberate:
script checks are left out (``consul agent -dev`` does not enable them; py-consul's fixture does), and fixed sleeps
before a state change is observed are replaced by polling with a deadline, so the assertions stay and the timing
is not the thing under test.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import time
from collections.abc import Callable
from typing import Any

import consul
import consul.check
import pytest

from tests.clients.conftest import Agent

Check = consul.check.Check

pytestmark = pytest.mark.asyncio


async def run(agent: Agent, scenario: Callable[[consul.Consul, Agent], None]) -> None:
    """Run a blocking scenario in a worker thread so the agent keeps serving on this loop."""

    def body() -> None:
        client = consul.Consul(host=agent.host, port=agent.port)
        try:
            scenario(client, agent)
        finally:
            client.http.session.close()

    await asyncio.to_thread(body)


def poll(probe: Callable[[], Any], predicate: Callable[[Any], bool], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    value = probe()
    while not predicate(value) and time.monotonic() < deadline:
        time.sleep(0.05)
        value = probe()
    return value


# --------------------------------------------------------------------------------------------- kv


def _kv(c: consul.Consul, _: Agent) -> None:
    _index, data = c.kv.get("foo")
    assert data is None
    assert c.kv.put("foo", "bar") is True
    _index, data = c.kv.get("foo")
    assert data["Value"] == b"bar"


def _kv_wait(c: consul.Consul, _: Agent) -> None:
    assert c.kv.put("foo", "bar") is True
    index, _data = c.kv.get("foo")
    check, _data = c.kv.get("foo", index=index, wait="20ms")
    assert index == check


def _kv_encoding(c: consul.Consul, _: Agent) -> None:
    c.kv.put("foo", struct.pack("i", 1000))
    _index, data = c.kv.get("foo")
    assert struct.unpack("i", data["Value"]) == (1000,)
    c.kv.put("foo", "bar")
    _index, data = c.kv.get("foo")
    assert data["Value"] == b"bar"
    c.kv.put("foo", "")
    _index, data = c.kv.get("foo")
    assert data["Value"] is None
    c.kv.put("foo", None)
    _index, data = c.kv.get("foo")
    assert data["Value"] is None
    with pytest.raises(AssertionError):
        c.kv.put("foo", {1: 2})


def _kv_put_cas(c: consul.Consul, _: Agent) -> None:
    assert c.kv.put("foo", "bar", cas=50) is False
    assert c.kv.put("foo", "bar", cas=0) is True
    _index, data = c.kv.get("foo")
    assert c.kv.put("foo", "bar2", cas=data["ModifyIndex"] - 1) is False
    assert c.kv.put("foo", "bar2", cas=data["ModifyIndex"]) is True
    _index, data = c.kv.get("foo")
    assert data["Value"] == b"bar2"


def _kv_put_flags(c: consul.Consul, _: Agent) -> None:
    c.kv.put("foo", "bar")
    _index, data = c.kv.get("foo")
    assert data["Flags"] == 0
    assert c.kv.put("foo", "bar", flags=50) is True
    _index, data = c.kv.get("foo")
    assert data["Flags"] == 50


def _kv_recurse(c: consul.Consul, _: Agent) -> None:
    _index, data = c.kv.get("foo/", recurse=True)
    assert data is None
    c.kv.put("foo/", None)
    _index, data = c.kv.get("foo/", recurse=True)
    assert len(data) == 1
    c.kv.put("foo/bar1", "1")
    c.kv.put("foo/bar2", "2")
    c.kv.put("foo/bar3", "3")
    _index, data = c.kv.get("foo/", recurse=True)
    assert [x["Key"] for x in data] == ["foo/", "foo/bar1", "foo/bar2", "foo/bar3"]
    assert [x["Value"] for x in data] == [None, b"1", b"2", b"3"]


def _kv_delete(c: consul.Consul, _: Agent) -> None:
    c.kv.put("foo1", "1")
    c.kv.put("foo2", "2")
    c.kv.put("foo3", "3")
    _index, data = c.kv.get("foo", recurse=True)
    assert [x["Key"] for x in data] == ["foo1", "foo2", "foo3"]
    assert c.kv.delete("foo2") is True
    _index, data = c.kv.get("foo", recurse=True)
    assert [x["Key"] for x in data] == ["foo1", "foo3"]
    assert c.kv.delete("foo", recurse=True) is True
    _index, data = c.kv.get("foo", recurse=True)
    assert data is None


def _kv_delete_cas(c: consul.Consul, _: Agent) -> None:
    c.kv.put("foo", "bar")
    index, data = c.kv.get("foo")
    assert c.kv.delete("foo", cas=data["ModifyIndex"] - 1) is False
    assert c.kv.get("foo") == (index, data)
    assert c.kv.delete("foo", cas=data["ModifyIndex"]) is True
    index, data = c.kv.get("foo")
    assert data is None


def _kv_acquire_release(c: consul.Consul, _: Agent) -> None:
    with pytest.raises(consul.ConsulException):
        c.kv.put("foo", "bar", acquire="foo")
    s1 = c.session.create()
    s2 = c.session.create()
    assert c.kv.put("foo", "1", acquire=s1) is True
    assert c.kv.put("foo", "2", acquire=s2) is False
    assert c.kv.put("foo", "1", acquire=s1) is True
    assert c.kv.put("foo", "1", release="foo") is False
    assert c.kv.put("foo", "2", release=s2) is False
    assert c.kv.put("foo", "2", release=s1) is True
    c.session.destroy(s1)
    c.session.destroy(s2)


def _kv_keys_only(c: consul.Consul, _: Agent) -> None:
    assert c.kv.put("bar", "4") is True
    assert c.kv.put("base/foo", "1") is True
    assert c.kv.put("base/base/foo", "5") is True
    _index, data = c.kv.get("base/", keys=True, separator="/")
    assert data == ["base/base/", "base/foo"]


@pytest.mark.parametrize(
    "scenario",
    [
        pytest.param(_kv, id="kv"),
        pytest.param(_kv_wait, id="kv_wait"),
        pytest.param(_kv_encoding, id="kv_encoding"),
        pytest.param(_kv_put_cas, id="kv_put_cas"),
        pytest.param(_kv_put_flags, id="kv_put_flags"),
        pytest.param(_kv_recurse, id="kv_recurse"),
        pytest.param(_kv_delete, id="kv_delete"),
        pytest.param(_kv_delete_cas, id="kv_delete_cas"),
        pytest.param(_kv_acquire_release, id="kv_acquire_release"),
        pytest.param(_kv_keys_only, id="kv_keys_only"),
    ],
)
async def test_kv(agent: Agent, scenario: Callable[[consul.Consul, Agent], None]) -> None:
    await run(agent, scenario)


# --------------------------------------------------------------------------------------------- agent


def _agent_checks(c: consul.Consul, agent: Agent) -> None:
    def verify_and_dereg_check(check_id: str) -> None:
        assert set(c.agent.checks().keys()) == {check_id}
        assert c.agent.check.deregister(check_id) is True
        assert set(c.agent.checks().keys()) == set()

    def verify_check_status(check_id: str, status: str, notes: str | None = None) -> None:
        checks = c.agent.checks()
        assert checks[check_id]["Status"] == status
        if notes:
            assert checks[check_id]["Output"] == notes

    c.agent.check.register("check", Check.ttl("1s"), notes="foo")
    assert c.agent.checks()["check"]["Notes"] == "foo"
    c.agent.check.deregister("check")
    assert set(c.agent.checks().keys()) == set()

    # 1s is the minimal interval for HTTP checks; the agent's own HTTP API is the target.
    assert c.agent.check.register("http_check", Check.http(agent.url, "1s")) is True
    poll(lambda: c.agent.checks()["http_check"]["Status"], lambda s: s == "passing")
    verify_check_status("http_check", "passing")
    verify_and_dereg_check("http_check")

    assert c.agent.check.register("http_timeout_check", Check.http(agent.url, "100ms", timeout="2s")) is True
    verify_and_dereg_check("http_timeout_check")

    # py-consul's tests/api version; test_std.py uses 100ms, too tight for a shared 2-core box between two calls.
    assert c.agent.check.register("ttl_check", Check.ttl("1s")) is True
    assert c.agent.check.ttl_warn("ttl_check") is True
    verify_check_status("ttl_check", "warning")
    assert c.agent.check.ttl_warn("ttl_check", notes="its not quite right") is True
    verify_check_status("ttl_check", "warning", "its not quite right")
    assert c.agent.check.ttl_fail("ttl_check") is True
    verify_check_status("ttl_check", "critical")
    assert c.agent.check.ttl_fail("ttl_check", notes="something went boink!") is True
    verify_check_status("ttl_check", "critical", notes="something went boink!")
    assert c.agent.check.ttl_pass("ttl_check") is True
    verify_check_status("ttl_check", "passing")
    assert c.agent.check.ttl_pass("ttl_check", notes="all hunky dory!") is True
    verify_check_status("ttl_check", "passing", notes="all hunky dory!")
    # wait for ttl to expire
    poll(lambda: c.agent.checks()["ttl_check"]["Status"], lambda s: s == "critical", timeout=5)
    verify_check_status("ttl_check", "critical")
    verify_and_dereg_check("ttl_check")


def _service_multi_check(c: consul.Consul, agent: Agent) -> None:
    c.agent.service.register(
        "foo1",
        check=Check.http(agent.url, "1s"),
        extra_checks=[Check.http(agent.url, "2s"), Check.http(agent.url, "3s")],
    )
    _index, nodes = c.health.service("foo1")
    assert {check["ServiceID"] for node in nodes for check in node["Checks"]} == {"foo1", ""}
    assert {check["CheckID"] for node in nodes for check in node["Checks"]} == {
        "service:foo1:1",
        "service:foo1:2",
        "service:foo1:3",
        "serfHealth",
    }
    poll(lambda: c.health.checks(service="foo1")[1], lambda cs: [x["Status"] for x in cs] == ["passing"] * 3, timeout=8)
    _index, checks = c.health.checks(service="foo1")
    assert [check["CheckID"] for check in checks] == ["service:foo1:1", "service:foo1:2", "service:foo1:3"]
    assert [check["Status"] for check in checks] == ["passing", "passing", "passing"]


def _service_dereg_issue_156(c: consul.Consul, _: Agent) -> None:
    service_name = "app#127.0.0.1#3000"
    c.agent.service.register(service_name)
    _index, nodes = c.health.service(service_name)
    assert [node["Service"]["ID"] for node in nodes] == [service_name]
    assert c.agent.service.deregister(service_name) is True
    _index, nodes = c.health.service(service_name)
    assert [node["Service"]["ID"] for node in nodes] == []


def _agent_checks_service_id(c: consul.Consul, _: Agent) -> None:
    c.agent.service.register("foo1")
    _index, nodes = c.health.service("foo1")
    assert [node["Service"]["ID"] for node in nodes] == ["foo1"]
    c.agent.check.register("foo", Check.ttl("100ms"), service_id="foo1")
    c.agent.check.register("foo2", Check.ttl("100ms"), service_id="foo1")
    _index, nodes = c.health.service("foo1")
    assert {check["ServiceID"] for node in nodes for check in node["Checks"]} == {"foo1", ""}
    assert {check["CheckID"] for node in nodes for check in node["Checks"]} == {"foo", "foo2", "serfHealth"}
    assert c.agent.check.deregister("foo") is True
    assert c.agent.check.deregister("foo2") is True
    assert c.agent.service.deregister("foo1") is True


def _agent_register_check_no_service_id(c: consul.Consul, _: Agent) -> None:
    _index, nodes = c.health.service("foo1")
    assert nodes == []
    # Consul > 1.11 answers 404 (ServiceID "foo1" does not exist); py-consul's boolean callback maps 404 to False,
    # and py-consul's tests/api/test_agent.py asserts exactly that for those versions.
    assert not c.agent.check.register("foo", Check.ttl("100ms"), service_id="foo1")
    assert c.agent.checks() == {}


def _agent_register_enable_tag_override(c: consul.Consul, _: Agent) -> None:
    _index, nodes = c.health.service("foo1")
    assert nodes == []
    c.agent.service.register("foo", enable_tag_override=True)
    assert c.agent.services()["foo"]["EnableTagOverride"]


def _agent_service_maintenance(c: consul.Consul, _: Agent) -> None:
    c.agent.service.register("foo", check=Check.ttl("100ms"))
    c.agent.service.maintenance("foo", "true", "test")
    checks_pre = c.agent.checks()
    assert "_service_maintenance:foo" in checks_pre
    assert checks_pre["_service_maintenance:foo"]["Notes"] == "test"
    c.agent.service.maintenance("foo", "false")
    checks_post = c.agent.checks()
    assert "_service_maintenance:foo" not in checks_post
    c.agent.service.deregister("foo")


def _agent_node_maintenance(c: consul.Consul, _: Agent) -> None:
    c.agent.maintenance("true", "test")
    checks_pre = c.agent.checks()
    assert "_node_maintenance" in checks_pre
    assert checks_pre["_node_maintenance"]["Notes"] == "test"
    c.agent.maintenance("false")
    checks_post = c.agent.checks()
    assert "_node_maintenance" not in checks_post


def _agent_members(c: consul.Consul, _: Agent) -> None:
    members = c.agent.members()
    for x in members:
        assert x["Status"] == 1
        assert x["Name"] is not None
        assert x["Tags"] is not None
    assert c.agent.self()["Member"] in members
    wan_members = c.agent.members(wan=True)
    for x in wan_members:
        assert "dc1" in x["Name"]


def _agent_self(c: consul.Consul, _: Agent) -> None:
    assert set(c.agent.self().keys()) == {"Member", "xDS", "Stats", "Config", "Coord", "DebugConfig", "Meta"}


def _agent_services(c: consul.Consul, _: Agent) -> None:
    assert c.agent.service.register("foo") is True
    assert set(c.agent.services().keys()) == {"foo"}
    assert c.agent.service.deregister("foo") is True
    assert set(c.agent.services().keys()) == set()
    assert c.agent.service.register("foo", address="10.10.10.1") is True
    assert next(v["Address"] for k, v in c.agent.services().items() if k == "foo") == "10.10.10.1"
    assert c.agent.service.deregister("foo") is True


@pytest.mark.parametrize(
    "scenario",
    [
        pytest.param(_agent_checks, id="agent_checks"),
        pytest.param(_service_multi_check, id="service_multi_check"),
        pytest.param(_service_dereg_issue_156, id="service_dereg_issue_156"),
        pytest.param(_agent_checks_service_id, id="agent_checks_service_id"),
        pytest.param(_agent_register_check_no_service_id, id="agent_register_check_no_service_id"),
        pytest.param(_agent_register_enable_tag_override, id="agent_register_enable_tag_override"),
        pytest.param(_agent_service_maintenance, id="agent_service_maintenance"),
        pytest.param(_agent_node_maintenance, id="agent_node_maintenance"),
        pytest.param(_agent_members, id="agent_members"),
        pytest.param(_agent_self, id="agent_self"),
        pytest.param(_agent_services, id="agent_services"),
    ],
)
async def test_agent(agent: Agent, scenario: Callable[[consul.Consul, Agent], None]) -> None:
    await run(agent, scenario)


# --------------------------------------------------------------------------------------------- catalog, health


def _catalog(c: consul.Consul, _: Agent) -> None:
    _, nodes = c.catalog.nodes()
    assert len(nodes) == 1
    current = nodes[0]
    assert c.catalog.datacenters() == ["dc1"]
    with pytest.raises(consul.ConsulException):
        c.catalog.register("foo", "10.1.10.11", dc="dc2")
    assert c.catalog.register("n1", "10.1.10.11", service={"service": "s1"}, check={"name": "c1"}) is True
    assert c.catalog.register("n1", "10.1.10.11", service={"service": "s2"}) is True
    assert c.catalog.register("n2", "10.1.10.12", service={"service": "s1", "tags": ["master"]}) is True
    with pytest.raises(consul.ConsulException):
        c.catalog.nodes(dc="dc2")
    _, nodes = c.catalog.nodes()
    nodes.remove(current)
    assert [x["Node"] for x in nodes] == ["n1", "n2"]
    with pytest.raises(consul.ConsulException):
        c.catalog.services(dc="dc2")
    _, services = c.catalog.services()
    assert services == {"s1": ["master"], "s2": [], "consul": []}
    with pytest.raises(consul.ConsulException):
        c.catalog.node("n1", dc="dc2")
    _, node = c.catalog.node("n1")
    assert set(node["Services"].keys()) == {"s1", "s2"}
    _, node = c.catalog.node("n3")
    assert node is None
    with pytest.raises(consul.ConsulException):
        c.catalog.service("s1", dc="dc2")
    _, nodes = c.catalog.service("s1")
    assert {x["Node"] for x in nodes} == {"n1", "n2"}
    _, nodes = c.catalog.service("s1", tag="master")
    assert {x["Node"] for x in nodes} == {"n2"}
    with pytest.raises(consul.ConsulException):
        c.catalog.deregister("n2", dc="dc2")
    assert c.catalog.deregister("n1", check_id="c1") is True
    assert c.catalog.deregister("n2", service_id="s1") is True
    _, nodes = c.catalog.nodes()
    nodes.remove(current)
    assert [x["Node"] for x in nodes] == ["n1", "n2"]
    _, nodes = c.catalog.service("s1")
    assert {x["Node"] for x in nodes} == {"n1"}
    assert c.catalog.deregister("n1") is True
    assert c.catalog.deregister("n2") is True
    _, nodes = c.catalog.nodes()
    nodes.remove(current)
    assert [x["Node"] for x in nodes] == []


def _health_service(c: consul.Consul, _: Agent) -> None:
    _index, nodes = c.health.service("foo")
    assert nodes == []
    c.agent.service.register("foo", service_id="foo:1", check=Check.ttl("10s"), tags=["tag:foo:1"])
    c.agent.service.register("foo", service_id="foo:2", check=Check.ttl("1s"))
    _index, nodes = c.health.service("foo")
    assert [node["Service"]["ID"] for node in nodes] == ["foo:1", "foo:2"]
    _index, nodes = c.health.service("foo", passing=True)
    assert nodes == []
    c.agent.check.ttl_pass("service:foo:1")
    c.agent.check.ttl_pass("service:foo:2")
    _index, nodes = c.health.service("foo", passing=True)
    assert [node["Service"]["ID"] for node in nodes] == ["foo:1", "foo:2"]
    # wait until the short ttl node fails
    poll(lambda: c.health.service("foo", passing=True)[1], lambda ns: len(ns) == 1, timeout=5)
    _index, nodes = c.health.service("foo", passing=True)
    assert [node["Service"]["ID"] for node in nodes] == ["foo:1"]
    c.agent.check.ttl_pass("service:foo:2")
    _index, nodes = c.health.service("foo", passing=True)
    assert [node["Service"]["ID"] for node in nodes] == ["foo:1", "foo:2"]
    _index, nodes = c.health.service("foo", tag="tag:foo:1")
    assert [node["Service"]["ID"] for node in nodes] == ["foo:1"]
    c.agent.service.deregister("foo:1")
    c.agent.service.deregister("foo:2")
    _index, nodes = c.health.service("foo")
    assert nodes == []


def _health_state(c: consul.Consul, _: Agent) -> None:
    _index, nodes = c.health.state("any")
    assert [node["ServiceID"] for node in nodes] == [""]
    c.agent.service.register("foo", service_id="foo:1", check=Check.ttl("10s"))
    c.agent.service.register("foo", service_id="foo:2", check=Check.ttl("1s"))
    _index, nodes = c.health.state("any")
    assert {node["ServiceID"] for node in nodes} == {"", "foo:1", "foo:2"}
    _index, nodes = c.health.state("passing")
    assert "foo" not in [node["ServiceID"] for node in nodes]
    c.agent.check.ttl_pass("service:foo:1")
    c.agent.check.ttl_pass("service:foo:2")
    _index, nodes = c.health.state("passing")
    assert {node["ServiceID"] for node in nodes} == {"", "foo:1", "foo:2"}
    poll(lambda: c.health.state("passing")[1], lambda ns: len(ns) == 2, timeout=5)
    _index, nodes = c.health.state("passing")
    assert {node["ServiceID"] for node in nodes} == {"", "foo:1"}
    c.agent.check.ttl_pass("service:foo:2")
    _index, nodes = c.health.state("passing")
    assert {node["ServiceID"] for node in nodes} == {"", "foo:1", "foo:2"}
    c.agent.service.deregister("foo:1")
    c.agent.service.deregister("foo:2")
    _index, nodes = c.health.state("any")
    assert [node["ServiceID"] for node in nodes] == [""]


def _health_node(c: consul.Consul, _: Agent) -> None:
    node = c.agent.self()["Config"]["NodeName"]
    _index, checks = c.health.node(node)
    assert node in [check["Node"] for check in checks]
    _index, checks = c.health.node(node, filter_expr='Node == "does-not-exist"')
    assert checks == []
    _index, checks = c.health.node(node, filter_expr=f'Node == "{node}"')
    assert node in [check["Node"] for check in checks]


def _health_checks(c: consul.Consul, _: Agent) -> None:
    c.agent.service.register("foobar", service_id="foobar", check=Check.ttl("10s"))
    _index, checks = c.health.checks("foobar")
    assert [check["ServiceID"] for check in checks] == ["foobar"]
    assert [check["CheckID"] for check in checks] == ["service:foobar"]
    _index, checks = c.health.checks("foobar", filter_expr='CheckID == "service:foobar"')
    assert [check["CheckID"] for check in checks] == ["service:foobar"]
    _index, checks = c.health.checks("foobar", filter_expr='CheckID == "does-not-exist"')
    assert checks == []
    c.agent.service.deregister("foobar")
    _index, checks = c.health.checks("foobar")
    assert len(checks) == 0


def _health_filters(c: consul.Consul, _: Agent) -> None:
    c.agent.service.register("foo", service_id="foo:1", check=Check.ttl("10s"), tags=["tag:foo:1"])
    c.agent.service.register("foo", service_id="foo:2", check=Check.ttl("10s"), tags=["tag:foo:2"])
    _index, nodes = c.health.service("foo", filter_expr='"tag:foo:1" in Service.Tags')
    assert [node["Service"]["ID"] for node in nodes] == ["foo:1"]
    _index, nodes = c.health.service("foo", filter_expr='"tag:does:not:exist" in Service.Tags')
    assert nodes == []
    c.agent.check.ttl_pass("service:foo:1")
    _index, nodes = c.health.state("passing", filter_expr='ServiceID == "foo:1"')
    assert [node["ServiceID"] for node in nodes] == ["foo:1"]
    _index, nodes = c.health.state("passing", filter_expr='ServiceID == "does-not-exist"')
    assert nodes == []


@pytest.mark.parametrize(
    "scenario",
    [
        pytest.param(_catalog, id="catalog"),
        pytest.param(_health_service, id="health_service"),
        pytest.param(_health_state, id="health_state"),
        pytest.param(_health_node, id="health_node"),
        pytest.param(_health_checks, id="health_checks"),
        pytest.param(_health_filters, id="health_filters"),
    ],
)
async def test_catalog_and_health(agent: Agent, scenario: Callable[[consul.Consul, Agent], None]) -> None:
    await run(agent, scenario)


# --------------------------------------------------------------------------------------------- session, txn, status


def _session(c: consul.Consul, _: Agent) -> None:
    with pytest.raises(consul.ConsulException):
        c.session.create(node="n2")
    with pytest.raises(consul.ConsulException):
        c.session.create(dc="dc2")
    session_id = c.session.create("my-session")
    with pytest.raises(consul.ConsulException):
        c.session.list(dc="dc2")
    _, sessions = c.session.list()
    assert [x["Name"] for x in sessions] == ["my-session"]
    with pytest.raises(consul.ConsulException):
        c.session.info(session_id, dc="dc2")
    _index, session = c.session.info("1" * 36)
    assert session is None
    _index, session = c.session.info(session_id)
    assert session["Name"] == "my-session"
    node = session["Node"]
    with pytest.raises(consul.ConsulException):
        c.session.node(node, dc="dc2")
    _, sessions = c.session.node(node)
    assert [x["Name"] for x in sessions] == ["my-session"]
    with pytest.raises(consul.ConsulException):
        c.session.destroy(session_id, dc="dc2")
    assert c.session.destroy(session_id) is True
    _, sessions = c.session.list()
    assert sessions == []


def _session_delete_ttl_renew(c: consul.Consul, _: Agent) -> None:
    s = c.session.create(behavior="delete", ttl=20)
    with pytest.raises(consul.NotFound):
        c.session.renew("1" * 36)
    session = c.session.renew(s)
    assert session["Behavior"] == "delete"
    assert session["TTL"] == "20s"
    assert c.kv.put("foo", "1", acquire=s) is True
    _index, data = c.kv.get("foo")
    assert data["Value"] == b"1"
    c.session.destroy(s)
    _index, data = c.kv.get("foo")
    assert data is None


def _transaction(c: consul.Consul, _: Agent) -> None:
    value = base64.b64encode(b"1").decode("utf8")
    d = {"KV": {"Verb": "set", "Key": "asdf", "Value": value}}
    r = c.txn.put([d])
    assert r["Errors"] is None
    d = {"KV": {"Verb": "get", "Key": "asdf"}}
    r = c.txn.put([d])
    assert r["Results"][0]["KV"]["Value"] == value


def _status(c: consul.Consul, _: Agent) -> None:
    agent_self = c.agent.self()
    leader = c.status.leader()
    addr_port = agent_self["Stats"]["consul"]["leader_addr"]
    assert leader == addr_port, f"Leader value was {leader}, expected value was {addr_port}"
    peers = c.status.peers()
    assert addr_port in peers, f"Expected value '{addr_port}' in peer list but it was not present"


@pytest.mark.parametrize(
    "scenario",
    [
        pytest.param(_session, id="session"),
        pytest.param(_session_delete_ttl_renew, id="session_delete_ttl_renew"),
        pytest.param(_transaction, id="transaction"),
        pytest.param(_status, id="status"),
    ],
)
async def test_session_txn_status(agent: Agent, scenario: Callable[[consul.Consul, Agent], None]) -> None:
    await run(agent, scenario)
