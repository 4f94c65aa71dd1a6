"""deploy/nomad/consulgw.nomad.hcl: replicas, self-registration with checks, stop sequence, secrets, resources."""

from __future__ import annotations

import re
from typing import Any

import pytest

from .deployfiles import ENV_NAME, hcl_block, nomad_group, nomad_job, nomad_resolve, nomad_task, seconds, settings_for


def _service() -> dict[str, Any]:
    (service,) = nomad_group()["service"]
    return service


def _checks() -> dict[str, dict[str, Any]]:
    return {check["path"]: check for check in _service()["check"]}


def _ports() -> dict[str, dict[str, Any]]:
    return {label: body for item in hcl_block(nomad_group(), "network")["port"] for label, body in item.items()}


def _settings() -> Any:
    task = nomad_task()
    env = {k: v for k, v in hcl_block(task, "env").items() if "${" not in str(v)}
    return settings_for(hcl_block(task, "config")["args"], env)


def test_service_job_with_at_least_two_replicas() -> None:
    assert nomad_job()["type"] == "service"
    assert nomad_resolve(nomad_group()["count"]) >= 2


def test_replicas_land_on_distinct_hosts() -> None:
    constraints = nomad_group().get("constraint", [])
    assert any(c.get("operator") == "distinct_hosts" and c.get("value") in (True, "true") for c in constraints)


def test_rolling_update_gated_on_checks_with_auto_revert() -> None:
    update = hcl_block(nomad_job(), "update")
    assert update["max_parallel"] == 1
    assert update["health_check"] == "checks"
    assert update["auto_revert"] is True


def test_docker_driver_runs_the_image() -> None:
    task = nomad_task()
    assert task["driver"] == "docker"
    config = hcl_block(task, "config")
    assert "consulgw" in nomad_resolve(config["image"])
    assert set(config["ports"]) == set(_ports())


def test_registers_itself_as_consulgw_on_the_public_port() -> None:
    service = _service()
    assert service["name"] == "consulgw"
    assert service.get("provider", "consul") == "consul"
    assert service["port"] == "http"
    assert _ports()["http"]["to"] == _settings().listen.port


@pytest.mark.parametrize(
    ("path", "restarts"),
    [
        pytest.param("/-/ready", False, id="readiness"),
        pytest.param("/-/healthy", True, id="liveness"),
    ],
)
def test_checks_hit_the_admin_port(path: str, restarts: bool) -> None:
    check = _checks()[path]
    assert check["type"] == "http"
    assert check["port"] == "admin"
    assert _ports()["admin"]["to"] == _settings().admin_listen.port
    assert seconds(check["timeout"]) < seconds(check["interval"])
    # Only liveness restarts the task; an unready gateway (stale Consul view) is taken out of rotation, not killed.
    assert ("check_restart" in check) is restarts


def test_stop_sequence_covers_the_drain() -> None:
    task = nomad_task()
    assert task["kill_signal"] == "SIGTERM"
    assert seconds(task["shutdown_delay"]) > 0
    assert seconds(task["kill_timeout"]) > _settings().drain_timeout


def test_consul_address_is_the_local_agent() -> None:
    env = hcl_block(nomad_task(), "env")
    assert env["CONSUL_HTTP_ADDR"] == "http://${attr.unique.network.ip-address}:8500"


def test_secrets_come_from_a_template_not_the_job_spec() -> None:
    task = nomad_task()
    env = hcl_block(task, "env")
    assert "CONSUL_HTTP_TOKEN" not in env
    assert "CONSULGW_REDIS_URL" not in env
    (template,) = task["template"]
    assert template["env"] is True
    assert template["destination"].startswith("secrets/")
    rendered_names = set(ENV_NAME.findall(template["data"]))
    assert {"CONSUL_HTTP_TOKEN", "CONSULGW_REDIS_URL"} <= rendered_names
    assert re.search(r"nomadVar\s+\\?\"nomad/jobs/consulgw\\?\"", template["data"]), template["data"]


def test_resources_are_set() -> None:
    resources = hcl_block(nomad_task(), "resources")
    assert resources["cpu"] > 0
    assert resources["memory"] > 0
