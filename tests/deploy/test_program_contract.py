"""Every deployment file speaks the program's language: real flags, real environment variables, valid values.

Each way of running the gateway (image defaults, Compose replicas, Nomad task, Kubernetes container, systemd unit)
is reduced to the argv and environment the process would get, then run through consulgw's own parser and settings
code. Drain budgets and probe ports are checked against the settings that come out, not against copied constants.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from consulgw.settings import GatewaySettings

from .deployfiles import (
    DOCKERFILE,
    ENV_NAME,
    UNIT,
    UNIT_ENV,
    compose,
    compose_env,
    compose_gateways,
    deploy_files,
    dockerfile_env,
    documented_env_names,
    k8s_container,
    k8s_deployment,
    nomad_group,
    nomad_task,
    parse_cli,
    parse_dockerfile,
    parse_env_file,
    parse_unit,
    program_env_names,
    rel,
    seconds,
    settings_for,
)


@dataclass(frozen=True, slots=True)
class Launch:
    """How one deployment starts the gateway."""

    argv: list[str]
    env: dict[str, str]  # literal values only (secrets and interpolations are checked by name elsewhere)
    env_names: set[str]  # every variable the deployment sets, literal or not
    in_container: bool
    role: str  # "image" (bare image defaults), "demo" (compose, no ACLs) or "production"
    stop_budget: float | None = None  # seconds from SIGTERM to SIGKILL, when the platform has such a limit
    probes: dict[str, int] = field(default_factory=dict)  # path -> port the platform probes


def _image() -> tuple[list[str], dict[str, str]]:
    instructions = parse_dockerfile(DOCKERFILE)
    entrypoint = next(i for i in instructions if i.keyword == "ENTRYPOINT").exec_form() or []
    cmd = next(i for i in instructions if i.keyword == "CMD").exec_form() or []
    if entrypoint != ["consulgw"]:
        raise AssertionError(f"ENTRYPOINT is {entrypoint}, expected ['consulgw']")
    return cmd, dockerfile_env(instructions)


def launch_docker() -> Launch:
    argv, env = _image()
    return Launch(argv=argv, env=env, env_names=set(env), in_container=True, role="image")


def _launch_compose(name: str) -> Launch:
    svc = compose()["services"][name]
    image_argv, image_env = _image()
    command = svc.get("command")
    argv = (shlex.split(command) if isinstance(command, str) else command) if command else image_argv
    env = {**image_env, **compose_env(svc)}
    budget = seconds(svc["stop_grace_period"]) if "stop_grace_period" in svc else 10.0  # Docker's default
    return Launch(argv=argv, env=env, env_names=set(env), in_container=True, role="demo", stop_budget=budget)


def launch_nomad() -> Launch:
    task = nomad_task()
    _, image_env = _image()
    config = task["config"][0]
    env_block = task["env"][0]
    literal = {k: v for k, v in env_block.items() if "${" not in str(v)}
    names = set(env_block)
    for template in task.get("template", []):
        if template.get("env"):
            names |= set(ENV_NAME.findall(template["data"]))
    group = nomad_group()
    ports = {label: body for item in group["network"][0]["port"] for label, body in item.items()}
    probes = {}
    for check in group["service"][0]["check"]:
        probes[check["path"]] = ports[check["port"]]["to"]
    return Launch(
        argv=config["args"],
        env={**image_env, **literal},
        env_names=names | set(image_env),
        in_container=True,
        role="production",
        stop_budget=seconds(task["kill_timeout"]),
        probes=probes,
    )


def launch_kubernetes() -> Launch:
    container = k8s_container()
    pod = k8s_deployment()["spec"]["template"]["spec"]
    _, image_env = _image()
    literal = {e["name"]: str(e["value"]) for e in container["env"] if "value" in e}
    names = {e["name"] for e in container["env"]}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    probes = {}
    for key in ("readinessProbe", "livenessProbe", "startupProbe"):
        if key in container:
            get = container[key]["httpGet"]
            port = get["port"]
            probes[get["path"]] = ports[port] if isinstance(port, str) else port
    pre_stop = container["lifecycle"]["preStop"]
    pre_stop_seconds = (
        float(pre_stop["sleep"]["seconds"]) if "sleep" in pre_stop else float(pre_stop["exec"]["command"][-1])
    )
    # The grace period runs from the start of preStop: what is left after it is the drain's budget.
    budget = float(pod["terminationGracePeriodSeconds"]) - pre_stop_seconds
    return Launch(
        argv=container.get("args") or _image()[0],
        env={**image_env, **literal},
        env_names=names | set(image_env),
        in_container=True,
        role="production",
        stop_budget=budget,
        probes=probes,
    )


def launch_systemd() -> Launch:
    unit = parse_unit(UNIT)
    exec_start = shlex.split(unit.value("Service", "ExecStart"))
    if Path(exec_start[0]).name != "consulgw":
        raise AssertionError(f"ExecStart runs {exec_start[0]}, expected a consulgw console script")
    env = parse_env_file(UNIT_ENV).values
    return Launch(
        argv=exec_start[1:],
        env=env,
        env_names=set(env),
        in_container=False,
        role="production",
        stop_budget=seconds(unit.value("Service", "TimeoutStopSec")),
    )


ORCHESTRATED = [
    pytest.param(lambda: _launch_compose("gateway-a"), id="compose-gateway-a"),
    pytest.param(lambda: _launch_compose("gateway-b"), id="compose-gateway-b"),
    pytest.param(launch_nomad, id="nomad"),
    pytest.param(launch_kubernetes, id="kubernetes"),
    pytest.param(launch_systemd, id="systemd"),
]
LAUNCHES = [pytest.param(launch_docker, id="docker-image"), *ORCHESTRATED]
PROBED = [pytest.param(launch_nomad, id="nomad"), pytest.param(launch_kubernetes, id="kubernetes")]


def test_recorded_environment_covers_the_documented_one() -> None:
    # The recording environ must see at least every variable `consulgw run --help` names, or it is broken.
    assert documented_env_names() <= program_env_names()
    assert {"CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN", "CONSULGW_REDIS_URL", "CONSULGW_ADMIN_LISTEN"} <= (
        program_env_names()
    )


def test_compose_gateways_are_the_ones_checked() -> None:
    assert set(compose_gateways()) == {"gateway-a", "gateway-b"}


@pytest.mark.parametrize("path", [pytest.param(p, id=rel(p)) for p in deploy_files()])
def test_every_consul_env_name_in_the_file_is_read_by_the_program(path: Path) -> None:
    names = set(ENV_NAME.findall(path.read_text()))
    unknown = sorted(names - program_env_names())
    assert not unknown, f"{rel(path)} mentions {unknown}, which consulgw never reads"


@pytest.mark.parametrize("launch", LAUNCHES)
def test_flags_exist_for_the_subcommand(launch: Callable[[], Launch]) -> None:
    args = parse_cli(launch().argv)
    assert args.command == "run"


@pytest.mark.parametrize("launch", LAUNCHES)
def test_environment_names_are_read_by_the_program(launch: Callable[[], Launch]) -> None:
    owned = {n for n in launch().env_names if ENV_NAME.fullmatch(n)}
    assert owned <= program_env_names(), sorted(owned - program_env_names())


def _settings(launch: Launch) -> GatewaySettings:
    return settings_for(launch.argv, launch.env)


@pytest.mark.parametrize("launch", LAUNCHES)
def test_flags_and_environment_make_valid_settings(launch: Callable[[], Launch]) -> None:
    settings = _settings(launch())
    assert settings.listen.port != settings.admin_listen.port


@pytest.mark.parametrize("launch", ORCHESTRATED)
def test_deployments_configure_consul_redis_and_token(launch: Callable[[], Launch]) -> None:
    current = launch()
    args = parse_cli(current.argv)
    given = {name for name in current.env_names if ENV_NAME.fullmatch(name)}
    assert "CONSUL_HTTP_ADDR" in given or args.consul
    # Replicas share rate limits through Redis; a deployment of N replicas without it multiplies every limit by N.
    assert "CONSULGW_REDIS_URL" in given or args.redis
    if current.role == "production":
        assert "CONSUL_HTTP_TOKEN" in given, "production deployments run with an ACL token"
        assert "--token" not in current.argv, "a token on the command line shows in ps and in job specs"


@pytest.mark.parametrize("launch", LAUNCHES)
def test_admin_listener_is_reachable_from_outside_a_container(launch: Callable[[], Launch]) -> None:
    current = launch()
    settings = _settings(current)
    if current.in_container:
        assert settings.admin_listen.host in ("0.0.0.0", "::"), settings.admin_listen
        assert settings.listen.host in ("0.0.0.0", "::"), settings.listen
    else:
        # On a host, the admin listener (dashboard, routes, metrics) stays on loopback by default.
        assert settings.admin_listen.host in ("127.0.0.1", "::1"), settings.admin_listen


@pytest.mark.parametrize("launch", ORCHESTRATED)
def test_stop_budget_exceeds_the_drain_timeout(launch: Callable[[], Launch]) -> None:
    current = launch()
    assert current.stop_budget is not None
    drain = _settings(current).drain_timeout
    assert current.stop_budget > drain, f"SIGKILL after {current.stop_budget}s cuts a {drain}s drain short"


@pytest.mark.parametrize("launch", PROBED)
def test_probes_hit_the_admin_listener(launch: Callable[[], Launch]) -> None:
    current = launch()
    settings = _settings(current)
    assert current.probes == {"/-/ready": settings.admin_listen.port, "/-/healthy": settings.admin_listen.port}


def test_image_health_check_targets_the_admin_listener_it_sets() -> None:
    _, env = _image()
    assert env["CONSULGW_ADMIN_LISTEN"].startswith("0.0.0.0:")
    healthcheck = next(i for i in parse_dockerfile(DOCKERFILE) if i.keyword == "HEALTHCHECK")
    assert healthcheck.args.rstrip().endswith('"/-/healthy"]'), healthcheck.args


@pytest.mark.parametrize(
    ("argv", "accepted"),
    [
        pytest.param(["run", "--drain-timeout", "30s"], True, id="full-option"),
        pytest.param(["run", "--drain-timeout=30s", "--log-format", "json"], True, id="option-equals-value"),
        pytest.param(["run", "--drain", "30s"], False, id="abbreviation"),
        pytest.param(["run", "--no-such-flag"], False, id="unknown-option"),
        pytest.param(["run", "--json"], False, id="option-of-another-subcommand"),
        pytest.param(["serve"], False, id="unknown-subcommand"),
    ],
)
def test_flag_checker_uses_the_real_parser(argv: list[str], accepted: bool) -> None:
    if accepted:
        parse_cli(argv)
    else:
        with pytest.raises(AssertionError, match="consulgw"):
            parse_cli(argv)
