"""deploy/grafana: the Grafana dashboard and the Prometheus alert rules follow the gateway's real metrics.

- ``promtool check rules`` and ``promtool test rules`` (Debian's ``prometheus`` package; ``make services`` installs
  it) pass on the alert rules and their unit tests;
- every dashboard query is valid PromQL (each becomes a recording rule that ``promtool check rules`` parses), and the
  dashboard is importable (datasource input, unique ids, a grid without overlaps);
- every metric the dashboard and the rules name exists in ``/metrics`` of a gateway that has served traffic through
  a rate limit, a Redis-backed limit without Redis, an API key check, a retry and an opening breaker.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from consulgw.server.gateway import Gateway
from tests.gateway.conftest import Consul, Upstream, consul, gateway_factory, http, routed, upstreams, wait_for

from .deployfiles import DEPLOY, REPO

__all__ = ["consul", "gateway_factory", "http", "upstreams"]  # fixtures of the gateway tests, used as they are

GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "consulgw-dashboard.json"
RULES = GRAFANA / "consulgw-alerts.yml"
RULES_TEST = GRAFANA / "consulgw-alerts.test.yml"
METRIC = re.compile(r"\bconsulgw_[a-z0-9_]+")
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (make services installs it)")


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text("utf-8")))


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries() -> list[str]:
    return [t["expr"] for p in panels(dashboard()) for t in p.get("targets", [])]


def rule_queries() -> list[str]:
    rules = yaml.safe_load(RULES.read_text("utf-8"))
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def named_metrics() -> set[str]:
    return {m for query in dashboard_queries() + rule_queries() for m in METRIC.findall(query)}


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


@needs_promtool
def test_alert_rules_pass_promtool() -> None:
    checked = promtool("check", "rules", RULES.name, cwd=GRAFANA)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 8 rules found" in checked.stdout
    tested = promtool("test", "rules", RULES_TEST.name, cwd=GRAFANA)
    assert tested.returncode == 0, tested.stdout + tested.stderr


@needs_promtool
@pytest.mark.parametrize(
    "command",
    [
        "promtool check rules deploy/grafana/consulgw-alerts.yml",
        "promtool test rules deploy/grafana/consulgw-alerts.test.yml",
    ],
)
def test_the_commands_of_operations_md(command: str) -> None:
    """docs/operations.md shows these two, run from the repository's root."""
    done = promtool(*shlex.split(command)[1:], cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_the_rules_cover_what_the_issue_asks() -> None:
    rules = yaml.safe_load(RULES.read_text("utf-8"))
    names = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert {
        "ConsulgwNoHealthyInstances",
        "ConsulgwHighErrorRatio",
        "ConsulgwHighLatencyP99",
        "ConsulgwConsulSyncStale",
        "ConsulgwRateLimitBackendErrors",
        "ConsulgwCircuitBreakerOpen",
    } <= names
    tests = yaml.safe_load(RULES_TEST.read_text("utf-8"))
    tested = {case["alertname"] for test in tests["tests"] for case in test["alert_rule_test"]}
    assert tested == names  # each alert has a unit test


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    grafana_variables = {"$__rate_interval": "5m", "$__interval": "1m", "$service": ".*"}
    records = []
    for index, query in enumerate(dashboard_queries()):
        for name, value in grafana_variables.items():
            query = query.replace(name, value)
        assert "$" not in query, query
        records.append({"record": f"consulgw:dashboard_query_{index}", "expr": query})
    (tmp_path / "queries.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    checked = promtool("check", "rules", "queries.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert len(records) >= 20


def test_dashboard_is_importable() -> None:
    board = dashboard()
    assert board["uid"] == "consulgw-overview"
    assert [i["name"] for i in board["__inputs"]] == ["DS_PROMETHEUS"]
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids))
    taken: set[tuple[int, int]] = set()
    for panel in panels(board):
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {(grid["x"] + dx, grid["y"] + dy) for dx in range(grid["w"]) for dy in range(grid["h"])}
        assert not cells & taken, f"panel {panel['title']!r} overlaps another"
        taken |= cells
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
            assert panel["targets"], panel["title"]
            assert all(t["datasource"]["uid"] == "${DS_PROMETHEUS}" for t in panel["targets"])


async def test_every_metric_named_exists_in_a_gateway_that_served_traffic(
    gateway_factory: Callable[..., Awaitable[Gateway]],
    consul: Consul,
    upstreams: Callable[..., Awaitable[Upstream]],
    http: aiohttp.ClientSession,
    free_port: Callable[[], int],
) -> None:
    named = named_metrics()
    assert len(named) >= 15, named
    alive = await upstreams("users")
    policies = {
        "users": {
            "rate_limit": {"requests": 4, "per": "1m"},
            "retries": {"attempts": 1, "on": ["connect_failure"]},
            "circuit_breaker": {"failure_threshold": 1, "recovery_timeout": "1m"},
        },
        "shared": {"rate_limit": {"requests": 100, "per": "1m", "backend": "redis"}},  # no --redis: backend errors
        "private": {"auth": {"type": "api_key"}},
    }
    for service, policy in policies.items():
        await consul.kv_put(f"consulgw/services/{service}", json.dumps(policy))
    await consul.kv_put("consulgw/services/broken", "{")  # a rejected document: consulgw_policy_rejected
    await consul.register("users", alive.port, service_id="users-alive", tags=["gw.route=/users"])
    await consul.register("users", free_port(), service_id="users-dead", tags=["gw.route=/users"])  # refuses
    await consul.register("shared", alive.port, tags=["gw.route=/shared"])
    await consul.register("private", alive.port, tags=["gw.route=/private"])
    gateway = await gateway_factory()

    async def all_routed() -> bool:
        return (
            await routed(gateway, "users", 2) and await routed(gateway, "shared") and await routed(gateway, "private")
        )

    await wait_for(all_routed)

    statuses = []
    for path in ["/users/1"] * 8 + ["/shared/1", "/private/1", "/nowhere"]:
        async with http.get(gateway.url + path) as resp:
            statuses.append(resp.status)
    assert statuses[:4] == [200] * 4  # the dead instance's connect failure was retried on the live one
    assert statuses[4:8] == [429] * 4
    assert statuses[8:] == [200, 401, 404]

    async with http.get(f"{gateway.admin_url}/metrics") as resp:
        exposed = await resp.text()
    present = {m.group(1) for m in re.finditer(r"^(consulgw_[a-z0-9_]+)[{ ]", exposed, re.MULTILINE)}
    missing = sorted(named - present)
    assert missing == [], f"named by deploy/grafana but not in /metrics: {missing}"
    assert re.search(
        r'^consulgw_circuit_breaker_state\{instance="test-node/users-dead",service="users"\} 2\.0$', exposed, re.M
    )
