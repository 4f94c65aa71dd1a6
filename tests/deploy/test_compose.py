"""compose/: the demo stack's wiring, the Consul service definitions, the KV seed and the README's commands."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
import pytest

from consulgw.policy.parse import parse_policy

from .deployfiles import (
    COMPOSE,
    COMPOSE_FILE,
    REPO,
    compose,
    compose_env,
    compose_gateways,
    compose_volume_sources,
    host_port,
    load_json,
    rel,
)

CONSUL_IMAGE = "hashicorp/consul:1.22"


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose()["services"]
    return services


def _host_path(source: str) -> Path:
    return (COMPOSE / source).resolve()


def _consul_definitions() -> list[dict[str, Any]]:
    """Service definitions from every JSON file the consul container loads as a config dir."""
    consul = _services()["consul"]
    dirs = [arg.split("=", 1)[1] for arg in consul["command"] if arg.startswith("-config-dir=")]
    out: list[dict[str, Any]] = []
    for source, target in compose_volume_sources(consul):
        if target in dirs:
            for path in sorted(_host_path(source).glob("*.json")):
                out.extend(load_json(path)["services"])
    return out


def _seed_commands() -> list[list[str]]:
    script = _services()["kv-seed"]["command"][0]
    return [shlex.split(line) for line in script.splitlines() if line.strip()]


def _seeded() -> dict[str, Path]:
    """KV key -> the host file the seed job writes there."""
    mounts = {target: _host_path(source) for source, target in compose_volume_sources(_services()["kv-seed"])}
    out: dict[str, Path] = {}
    for argv in _seed_commands():
        assert argv[:3] == ["consul", "kv", "put"], argv
        key, value = argv[3], argv[4]
        assert value.startswith("@"), f"{key}: seed from a mounted file (@path), not an inline value"
        directory, _, name = value[1:].rpartition("/")
        assert directory in mounts, f"{value} is not under a mounted directory ({sorted(mounts)})"
        out[key] = mounts[directory] / name
    return out


# --- files and references ------------------------------------------------------------------------------------------


def _referenced_paths() -> list[tuple[str, Path]]:
    out: list[tuple[str, Path]] = []
    for name, svc in _services().items():
        build = svc.get("build")
        if isinstance(build, dict):
            context = _host_path(build["context"])
            out.append((f"{name}: build.context", context))
            out.append((f"{name}: build.dockerfile", context / build["dockerfile"]))
        for source, _ in compose_volume_sources(svc):
            assert source.startswith((".", "/")), f"{name}: {source} is a named volume; this demo uses bind mounts"
            out.append((f"{name}: volume {source}", _host_path(source)))
    return out


@pytest.mark.parametrize(("what", "path"), [pytest.param(w, p, id=w) for w, p in _referenced_paths()])
def test_referenced_paths_exist(what: str, path: Path) -> None:
    assert path.exists(), f"{what} -> {path} does not exist"
    assert path.is_relative_to(REPO), f"{what} points outside the repository"


def test_build_context_is_the_repository_root() -> None:
    for name, svc in compose_gateways().items():
        assert _host_path(svc["build"]["context"]) == REPO, name


@pytest.mark.parametrize(
    "path", [pytest.param(p, id=rel(p)) for p in sorted((COMPOSE / "kv").glob("*"))] or [pytest.param(None, id="none")]
)
def test_kv_policy_files_are_json_objects(path: Path | None) -> None:
    assert path is not None, "compose/kv holds no policy files"
    assert path.suffix == ".json"
    assert isinstance(json.loads(path.read_text()), dict)


@pytest.mark.parametrize(("key", "path"), [pytest.param(k, p, id=k) for k, p in _seeded().items()])
def test_seeded_policies_pass_the_gateways_policy_parser(key: str, path: Path) -> None:
    # The gateway's own parser: schema plus semantic checks (durations, JWT key strength). A document it refuses
    # would leave the demo service without its policy.
    parse_policy(path.read_bytes(), key=key)


def test_rate_limit_is_shared_through_redis() -> None:
    # Two replicas with a local limit would each allow the full rate; the README promises one shared limit.
    limits = [json.loads(p.read_text())["rate_limit"] for p in _seeded().values() if "rate_limit" in p.read_text()]
    assert limits
    assert all(limit.get("backend") == "redis" for limit in limits)


# --- services ------------------------------------------------------------------------------------------------------


def test_consul_is_the_real_agent_in_dev_mode() -> None:
    consul = _services()["consul"]
    assert consul["image"] == CONSUL_IMAGE
    assert consul["command"][:4] == ["agent", "-dev", "-client", "0.0.0.0"]
    assert "healthcheck" in consul


def test_redis_7_with_a_health_check() -> None:
    redis = _services()["redis"]
    assert redis["image"] == "redis:7"
    assert "healthcheck" in redis


def test_depends_on_names_real_services_and_waits_for_health() -> None:
    services = _services()
    for name, svc in services.items():
        for dep, condition in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            if "healthcheck" in services[dep]:
                assert condition["condition"] == "service_healthy", f"{name} -> {dep}"


def test_two_gateway_replicas_from_the_same_build() -> None:
    gateways = compose_gateways()
    assert len(gateways) >= 2
    builds = {json.dumps(svc["build"], sort_keys=True) for svc in gateways.values()}
    assert len(builds) == 1
    published = [host_port(p)[1] for svc in gateways.values() for p in svc["ports"]]
    assert len(published) == len(set(published)), "replicas publish clashing host ports"


@pytest.mark.parametrize("name", list(compose_gateways()))
def test_gateway_points_at_the_stack(name: str) -> None:
    env = compose_env(_services()[name])
    consul = urlsplit(env["CONSUL_HTTP_ADDR"])
    assert (consul.hostname, consul.port) == ("consul", 8500)
    redis = urlsplit(env["CONSULGW_REDIS_URL"])
    assert redis.scheme == "redis"
    assert redis.hostname in _services()
    assert env["CONSULGW_ADMIN_LISTEN"].startswith("0.0.0.0:")


@pytest.mark.parametrize("name", list(compose_gateways()))
def test_gateway_admin_port_is_published_on_loopback_only(name: str) -> None:
    env = compose_env(_services()[name])
    admin_port = int(env["CONSULGW_ADMIN_LISTEN"].rpartition(":")[2])
    public_port = int(env.get("CONSULGW_LISTEN", "0.0.0.0:8080").rpartition(":")[2])
    mapping = {host_port(p)[2]: host_port(p) for p in _services()[name]["ports"]}
    assert mapping[admin_port][0] == "127.0.0.1"
    assert public_port in mapping


# --- Consul service definitions and the KV seed --------------------------------------------------------------------


def test_demo_services_are_registered_with_route_tags() -> None:
    names = {d["name"] for d in _consul_definitions()}
    assert len(names) >= 2
    ids = [d["id"] for d in _consul_definitions()]
    assert len(ids) == len(set(ids)), "duplicate service ids"


@pytest.mark.parametrize("definition", [pytest.param(d, id=d["id"]) for d in _consul_definitions()])
def test_service_definition_matches_its_container(definition: dict[str, Any]) -> None:
    services = _services()
    assert definition["address"] in services, f"{definition['id']}: address is not a compose service"
    routes = [t for t in definition["tags"] if t.startswith("gw.route=")]
    assert routes, f"{definition['id']} has no gw.route= tag"
    assert definition["weights"]["passing"] >= 1
    (check,) = definition["checks"]
    url = urlsplit(check["http"])
    assert url.hostname == definition["address"]
    assert url.port == definition["port"]
    assert {"interval", "timeout"} <= set(check)


@pytest.mark.parametrize("definition", [pytest.param(d, id=d["id"]) for d in _consul_definitions()])
def test_route_tags_parse_with_the_gateway_grammar(definition: dict[str, Any]) -> None:
    rules = pytest.importorskip("consulgw.routing.rules", reason="consulgw.routing is not in this tree yet")
    parsed = rules.parse_service_routes(definition["name"], definition["tags"])
    assert not parsed.errors, parsed.errors
    assert parsed.routes


def test_one_service_has_weighted_instances() -> None:
    by_name: dict[str, set[int]] = {}
    for d in _consul_definitions():
        by_name.setdefault(d["name"], set()).add(d["weights"]["passing"])
    assert any(len(weights) > 1 for weights in by_name.values()), by_name


def test_seed_job_is_a_one_shot_consul_cli() -> None:
    seed = _services()["kv-seed"]
    assert seed["image"] == CONSUL_IMAGE
    assert seed["restart"] == "no"
    assert urlsplit(compose_env(seed)["CONSUL_HTTP_ADDR"]).hostname == "consul"
    assert seed["depends_on"]["consul"]["condition"] == "service_healthy"


@pytest.mark.parametrize(("key", "path"), [pytest.param(k, p, id=k) for k, p in _seeded().items()])
def test_seeded_key_is_a_policy_for_a_registered_service(key: str, path: Path) -> None:
    assert path.is_file(), f"{key}: {path} does not exist"
    json.loads(path.read_text())
    match = re.fullmatch(r"consulgw/services/([a-z0-9-]+)", key)
    assert match, f"{key} is not under consulgw/services/"
    assert match.group(1) in {d["name"] for d in _consul_definitions()}


@pytest.mark.parametrize(
    ("feature", "check"),
    [
        pytest.param("rate_limit", lambda doc: doc["rate_limit"]["requests"] >= 1, id="rate-limit"),
        pytest.param("auth", lambda doc: doc["auth"]["type"] == "jwt", id="jwt"),
    ],
)
def test_seed_covers_rate_limit_and_jwt(feature: str, check: Any) -> None:
    docs = [json.loads(p.read_text()) for p in _seeded().values()]
    assert any(feature in doc and check(doc) for doc in docs)


def test_every_kv_file_is_seeded() -> None:
    assert set(_seeded().values()) == {p.resolve() for p in (COMPOSE / "kv").glob("*.json")}


# --- README --------------------------------------------------------------------------------------------------------

README = COMPOSE / "README.md"


def _readme_commands() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip() and line[0] != "#"]


def test_readme_starts_the_stack_from_the_repository_root() -> None:
    assert "docker compose -f compose/docker-compose.yml up --build" in _readme_commands()


def test_readme_compose_commands_use_this_file_and_its_services() -> None:
    for line in _readme_commands():
        for match in re.finditer(r"docker compose -f (\S+) (\w+)(?: -T)?(?: ([\w-]+))?", line):
            assert REPO / match.group(1) == COMPOSE_FILE, line
            if match.group(2) in ("exec", "stop", "start") and match.group(3):
                assert match.group(3) in _services(), line


def _curl_urls() -> list[str]:
    return [url for line in _readme_commands() for url in re.findall(r"http://127\.0\.0\.1:\d+[^\s;|'\"]*", line)]


@pytest.mark.parametrize("url", [pytest.param(u, id=u) for u in dict.fromkeys(_curl_urls())])
def test_readme_curl_targets_a_published_port_and_a_known_path(url: str) -> None:
    parts = urlsplit(url)
    ports: dict[int, tuple[str, int]] = {}  # host port -> (service, container port)
    for name, svc in _services().items():
        for published in svc.get("ports") or []:
            _, host, container = host_port(published)
            ports[host] = (name, container)
    assert parts.port in ports, f"{url}: port {parts.port} is not published"
    service, container = ports[parts.port]
    if service in compose_gateways():
        env = compose_env(_services()[service])
        admin = int(env["CONSULGW_ADMIN_LISTEN"].rpartition(":")[2])
        if container == admin:
            assert parts.path in ("/-/healthy", "/-/ready", "/-/routes", "/metrics", "/"), url
        else:
            prefixes = {
                t.split("=", 1)[1].split()[0] for d in _consul_definitions() for t in d["tags"] if "gw.route=" in t
            }
            assert any(parts.path == p or parts.path.startswith(p + "/") for p in prefixes), url


def _readme_line(start: str) -> str:
    (line,) = [line for line in _readme_commands() if line.startswith(start)]
    return line


def test_readme_token_command_makes_a_token_the_jwt_policy_accepts() -> None:
    # TOKEN=$(docker compose ... exec -T gateway-a python -c "<code>"): run <code> here, with the same PyJWT.
    line = _readme_line("TOKEN=$(")
    argv = shlex.split(line[len("TOKEN=$(") : -1])
    assert argv[argv.index("exec") + 2 : argv.index("exec") + 4] == ["gateway-a", "python"]
    code = argv[argv.index("-c") + 1]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    (policy,) = [json.loads(p.read_text())["auth"] for p in _seeded().values() if '"auth"' in p.read_text()]
    claims = jwt.decode(
        result.stdout.strip(), policy["secret"], algorithms=policy["algorithms"], issuer=policy["issuer"]
    )
    assert claims["sub"]


def test_readme_live_policy_change_is_a_valid_policy() -> None:
    line = _readme_line("docker compose -f compose/docker-compose.yml exec -T consul consul kv put")
    argv = shlex.split(line)
    key, value = argv[-2], argv[-1]
    assert key in _seeded()
    parse_policy(value, key=key)
