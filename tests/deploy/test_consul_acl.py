"""deploy/consul/: least-privilege ACL policies, the optional self-registration, and the README's commands."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from .deployfiles import ACL, REPO, UNIT_ENV, load_hcl, parse_env_file, settings_for

Grant = tuple[str, str | None]  # (rule kind, label or None for unlabelled rules like `operator = "read"`)

EXPECTED: dict[str, dict[Grant, str]] = {
    "gateway-policy.hcl": {
        ("service_prefix", ""): "read",
        ("node_prefix", ""): "read",
        ("key_prefix", "consulgw/"): "read",
    },
    "operator-policy.hcl": {
        ("key_prefix", "consulgw/"): "write",
        ("service_prefix", ""): "read",
        ("node_prefix", ""): "read",
    },
    "registration-policy.hcl": {
        ("service", "consulgw"): "write",
    },
}
POLICY_NAMES = {
    "consulgw-gateway": "gateway-policy.hcl",
    "consulgw-operator": "operator-policy.hcl",
    "consulgw-registration": "registration-policy.hcl",
}


def grants(path: Path) -> dict[Grant, str]:
    """Every rule in a Consul ACL policy, flattened; a rule block may hold nothing but `policy`."""
    out: dict[Grant, str] = {}
    for kind, value in load_hcl(path).items():
        if isinstance(value, str):
            out[(kind, None)] = value
            continue
        for item in value:
            for label, body in item.items():
                assert set(body) == {"policy"}, f"{path.name}: {kind} {label!r} grants more than a policy: {body}"
                assert (kind, label) not in out, f"{path.name}: {kind} {label!r} given twice"
                out[(kind, label)] = body["policy"]
    return out


@pytest.mark.parametrize(("name", "expected"), [pytest.param(n, e, id=n) for n, e in EXPECTED.items()])
def test_policy_grants_exactly(name: str, expected: dict[Grant, str]) -> None:
    assert grants(ACL / name) == expected


def test_every_policy_file_is_checked() -> None:
    assert {p.name for p in ACL.glob("*-policy.hcl")} == set(EXPECTED)


@pytest.mark.parametrize("name", ["gateway-policy.hcl", "operator-policy.hcl"])
def test_services_and_nodes_are_read_only(name: str) -> None:
    for (kind, _), policy in grants(ACL / name).items():
        if kind.startswith(("service", "node")):
            assert policy == "read", (kind, policy)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_keys_only_under_the_consulgw_prefix(name: str) -> None:
    for (kind, label), _ in grants(ACL / name).items():
        if kind.startswith("key"):
            assert kind == "key_prefix"
            assert label is not None
            assert label.startswith("consulgw/"), label


def test_gateway_policy_never_writes() -> None:
    assert set(grants(ACL / "gateway-policy.hcl").values()) == {"read"}


def test_registration_is_limited_to_the_consulgw_service_name() -> None:
    rules = grants(ACL / "registration-policy.hcl")
    assert all(kind == "service" for kind, _ in rules), "exact service name, never a prefix"


def test_gateway_key_prefix_is_the_default_kv_prefix() -> None:
    prefix = settings_for(["run"], {}).kv_prefix
    assert ("key_prefix", prefix) in grants(ACL / "gateway-policy.hcl")


# --- the optional self-registration definition ---------------------------------------------------------------------


def _service_definition() -> dict[str, Any]:
    (service,) = load_hcl(ACL / "consulgw-service.hcl")["service"]
    definition: dict[str, Any] = service
    return definition


def test_self_registration_uses_the_public_port_and_admin_checks() -> None:
    settings = settings_for(["run"], parse_env_file(UNIT_ENV).values)
    service = _service_definition()
    assert service["name"] == "consulgw"
    assert service["port"] == settings.listen.port
    checks = {c["http"]: c for c in service["checks"]}
    base = f"http://{settings.admin_listen.host}:{settings.admin_listen.port}"
    assert set(checks) == {f"{base}/-/ready", f"{base}/-/healthy"}
    assert all({"interval", "timeout"} <= set(c) for c in checks.values())


# --- README commands -----------------------------------------------------------------------------------------------

README = ACL / "README.md"


def _commands() -> list[list[str]]:
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    out = []
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        words = shlex.split(line, comments=True)
        while words and "=" in words[0] and not words[0].startswith("-"):
            words = words[1:]  # leading VAR=value assignments
        out.append(words)
    return out


def _option(words: list[str], name: str) -> list[str]:
    return [words[i + 1] for i, w in enumerate(words[:-1]) if w == name]


def test_readme_creates_every_policy_from_its_file() -> None:
    created = {}
    for words in _commands():
        if words[:4] == ["consul", "acl", "policy", "create"]:
            (name,) = _option(words, "-name")
            (rules,) = _option(words, "-rules")
            assert rules.startswith("@deploy/consul/"), rules
            assert (REPO / rules[1:]).is_file(), rules
            created[name] = Path(rules[1:]).name
    assert created == POLICY_NAMES


def test_readme_tokens_use_created_policies() -> None:
    tokens = [w for w in _commands() if w[:4] == ["consul", "acl", "token", "create"]]
    assert tokens
    for words in tokens:
        names = _option(words, "-policy-name")
        assert names, words
        assert set(names) <= set(POLICY_NAMES), names
        assert _option(words, "-description")


def test_readme_registers_an_existing_definition() -> None:
    registers = [w for w in _commands() if w[:3] == ["consul", "services", "register"]]
    assert registers
    for words in registers:
        assert (REPO / words[3]).is_file(), words
