"""``consulgw routes`` as a subprocess against the in-process dev agent: what it prints is what a gateway builds."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from consulgw.devagent import DevAgent
from consulgw.server.gateway import Gateway
from tests.commands.cli import clean_env, consulgw
from tests.gateway.conftest import Consul, gateway_settings_for, wait_for


@pytest.fixture
async def consul(dev_agent: DevAgent) -> AsyncIterator[Consul]:
    async with aiohttp.ClientSession() as session:
        yield Consul(session, dev_agent.url)


def no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text


async def test_bad_tags_are_explained_next_to_the_routes_that_work(dev_agent: DevAgent, consul: Consul) -> None:
    await consul.register(
        "users",
        9001,
        service_id="users-1",
        tags=["gw.route=/users strip=/users methods=GET", "gw.route=/x strip=nope", "gw.lbb=ip_hash", "v=2"],
    )
    sid = await consul.register("users", 9002, service_id="users-2", tags=["gw.route=/users strip=/users methods=GET"])
    await consul.check(sid, "critical")
    await consul.register("billing", 9003, service_id="billing-1", tags=["gw.rout=/billing"])
    await consul.register("plain", 9004, tags=["version=1"])  # no route tags: not the gateway's business

    result = await consulgw("routes", "--consul", dev_agent.url)

    assert result.code == 0, result.err
    no_traceback(result.out, result.err)
    out = result.out
    assert "4 services, 2 with route tags" in out  # consul, users, billing, plain
    assert "Routes, in lookup order (1):" in out
    assert "  */users  ->  users   methods GET,HEAD   strip /users   lb round_robin" in out
    assert "test-node/users-1  http://127.0.0.1:9001  passing  weight 1\n" in out
    assert "test-node/users-2  http://127.0.0.1:9002  critical  weight 0  (out of the pool)" in out
    # why is my service not routed: every rejected tag, with the part that is wrong and a suggestion
    assert "Rejected tags (3):" in out
    assert "  users: 'gw.route=/x strip=nope': strip 'nope' must start with '/'" in out
    assert (
        "  users: 'gw.lbb=ip_hash': unknown key 'lbb'; expected one of gw.route, gw.lb; did you mean 'gw.lb=ip_hash'?"
        in out
    )
    assert (
        "  billing: 'gw.rout=/billing': unknown key 'rout'; expected one of gw.route, gw.lb; did you mean 'gw.route=/billing'?"
        in out
    )
    assert "billing: every route tag was rejected or lost a conflict" in out
    assert "plain" not in out
    assert "Note:" not in out
    assert "Conflicts (0):" in out


async def test_conflicts_and_a_service_without_healthy_instances(dev_agent: DevAgent, consul: Consul) -> None:
    await consul.register("orders", 9001, service_id="orders-1", tags=["gw.route=api.example.com/orders"])
    await consul.register("orders-v2", 9002, service_id="orders-v2-1", tags=["gw.route=api.example.com/orders"])
    await consul.register("reports", 9003, service_id="reports-1", tags=["gw.route=/reports"], status="critical")

    result = await consulgw("routes", "--consul", dev_agent.url)

    assert result.code == 0, result.err
    assert "Conflicts (1):\n  route api.example.com/orders is claimed by orders, orders-v2; orders wins\n" in result.out
    assert "no instance takes traffic: requests get 503 no_healthy_upstream" in result.out
    # lookup order: exact host before any host
    assert result.out.index("api.example.com/orders  ->") < result.out.index("*/reports  ->")


async def test_json_is_what_a_running_gateway_reports(dev_agent: DevAgent, consul: Consul) -> None:
    """The JSON parses, and its routes, rejected tags, conflicts and balancers equal a real gateway's /-/routes."""
    await consul.register(
        "users", 9001, service_id="users-1", tags=["gw.route=/users", "gw.route=/broken strip=nope", "gw.lb=least_conn"]
    )
    await consul.register("users", 9002, service_id="users-2", tags=["gw.route=/users"], weights=(3, 1))
    await consul.register("orders", 9003, service_id="orders-1", tags=["gw.route=api.example.com/orders methods=GET"])
    await consul.register("orders-v2", 9004, service_id="orders-v2-1", tags=["gw.route=api.example.com/orders"])
    await consul.kv_put("consulgw/services/orders", json.dumps({"lb": "ip_hash"}))  # KV policy beats the tags

    result = await consulgw("routes", "--consul", dev_agent.url, "--json")
    assert result.code == 0, result.err
    mine = json.loads(result.out)

    settings = gateway_settings_for(dev_agent.url)
    async with Gateway(settings, consul_wait=5.0) as gateway, aiohttp.ClientSession() as http:
        await gateway.wait_ready()

        async def admin() -> dict[str, Any]:
            async with http.get(f"{gateway.admin_url}/-/routes") as resp:
                body: dict[str, Any] = await resp.json()
                return body

        await wait_for(lambda: _has_services(gateway, {"users", "orders", "orders-v2"}))
        theirs = await admin()

    assert mine["routes"] == theirs["routes"]  # one builder (consulgw.server.routes_document) for both
    assert mine["route_errors"] == theirs["route_errors"]
    assert mine["conflicts"] == theirs["conflicts"]
    assert mine["policy_errors"] == theirs["policy_errors"]
    assert sorted(mine["services"]) == sorted(theirs["services"])
    for name, svc in mine["services"].items():
        assert svc["lb"] == theirs["services"][name]["lb"]
        assert svc["route_errors"] == theirs["services"][name]["route_errors"]
        assert svc["policy"] == theirs["services"][name]["policy"]
        shared = ("id", "node", "address", "port", "scheme", "health", "weight", "weights")
        assert [{k: i[k] for k in shared} for i in svc["instances"]] == [
            {k: i[k] for k in shared} for i in theirs["services"][name]["instances"]
        ]
    assert {r["service"]: r["lb"] for r in mine["routes"]} == {"orders": "ip_hash", "users": "least_conn"}
    assert mine["consul"]["services_routed"] == 3
    assert mine["consul"]["address"] == dev_agent.url


def _has_services(gateway: Gateway, names: set[str]) -> bool:
    view = gateway.view()
    return view is not None and set(view.services) == names


@pytest.mark.parametrize(
    ("args", "env", "routed"),
    [
        pytest.param([], {}, ["*/native"], id="fabio-tags-ignored-by-default"),
        pytest.param(["--tag-compat", "fabio"], {}, ["*/legacy", "*/native"], id="tag-compat-flag"),
        pytest.param([], {"CONSULGW_TAG_COMPAT": "fabio"}, ["*/legacy", "*/native"], id="tag-compat-env"),
        pytest.param(["--tag-prefix", "edge"], {}, ["*/edge"], id="tag-prefix-flag"),
        pytest.param([], {"CONSULGW_TAG_PREFIX": "edge"}, ["*/edge"], id="tag-prefix-env"),
    ],
)
async def test_tag_prefix_and_compat_like_the_gateway(
    dev_agent: DevAgent, consul: Consul, args: list[str], env: dict[str, str], routed: list[str]
) -> None:
    await consul.register("native", 9001, tags=["gw.route=/native"])
    await consul.register("legacy", 9002, tags=["urlprefix-/legacy"])
    await consul.register("edgy", 9003, tags=["edge.route=/edge"])
    result = await consulgw("routes", "--json", *args, env=clean_env(CONSUL_HTTP_ADDR=dev_agent.url, **env))
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert [r["route"] for r in report["routes"]] == routed
    assert report["consul"]["fabio_tags_ignored"] == ([] if "*/legacy" in routed else ["legacy"])


async def test_unreachable_consul_is_one_line_and_exit_1(free_port: Any) -> None:
    address = f"http://127.0.0.1:{free_port()}"
    for extra in ([], ["--json"]):
        result = await consulgw("routes", "--consul", address, *extra)
        assert result.code == 1
        assert result.out == ""
        no_traceback(result.err)
        lines = result.err.splitlines()
        assert len(lines) == 1, result.err
        assert lines[0].startswith(f"consulgw routes: error: cannot read Consul at {address}: ")
        assert "/v1/catalog/services" in lines[0]


async def test_consul_answering_an_error_is_exit_1(dev_agent: DevAgent) -> None:
    result = await consulgw("routes", "--consul", dev_agent.url, "--datacenter", "nowhere")
    assert result.code == 1
    no_traceback(result.err)
    assert result.err == (
        f"consulgw routes: error: cannot read Consul at {dev_agent.url} (datacenter nowhere): "
        "Consul /v1/catalog/services: HTTP 500: No path to datacenter\n"
    )


async def test_unsupported_tag_compat_is_a_config_error(dev_agent: DevAgent) -> None:
    result = await consulgw("routes", "--consul", dev_agent.url, "--tag-compat", "traefik")
    assert result.code == 2
    assert result.err == (
        "consulgw routes: error: --tag-compat / CONSULGW_TAG_COMPAT: 'traefik' is not supported (only 'fabio')\n"
    )
