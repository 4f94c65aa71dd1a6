"""Consul's JSON agent configuration: source order, unknown keys warned about, bad values refused naming the key."""

from __future__ import annotations

import json
from typing import Any

import pytest

from consulgw.devagent.agent_config import AclConfig, AgentConfig, Source, load_agent_config
from consulgw.errors import ConfigError


def src(name: str, document: dict[str, Any]) -> Source:
    return Source(name, json.dumps(document))


def test_defaults_are_consul_dev_defaults() -> None:
    loaded = load_agent_config([])
    assert loaded.config == AgentConfig()
    assert loaded.config.http_max_conns_per_client == 200
    assert loaded.config.acl == AclConfig(enabled=False, default_policy="allow")
    assert loaded.warnings == ()


def test_every_supported_key() -> None:
    document = {
        "datacenter": "east",
        "node_name": "n1",
        "enable_script_checks": True,
        "limits": {"http_max_conns_per_client": 500},
        "ports": {"http": 18500},
        "telemetry": {"prometheus_retention_time": "2m"},
        "acl": {
            "enabled": True,
            "default_policy": "deny",
            "enable_key_list_policy": True,
            "tokens": {"initial_management": "root", "default": "anon"},
        },
    }
    loaded = load_agent_config([src("a.json", document)])
    assert loaded.warnings == ()
    assert loaded.config == AgentConfig(
        datacenter="east",
        node_name="n1",
        enable_script_checks=True,
        http_max_conns_per_client=500,
        http_port=18500,
        prometheus_retention=120.0,
        acl=AclConfig(
            enabled=True, default_policy="deny", initial_management="root", default_token="anon",
            enable_key_list_policy=True,
        ),
    )  # fmt: skip


def test_later_sources_win_key_by_key_and_flags_win_over_all() -> None:
    local = src("CONSUL_LOCAL_CONFIG", {"datacenter": "a", "acl": {"enabled": True, "default_policy": "deny"}})
    first = src("one.json", {"datacenter": "b", "node_name": "from-file"})
    second = src("two.json", {"acl": {"default_policy": "allow"}})
    loaded = load_agent_config([local, first, second], {"node_name": "from-flag"})
    config = loaded.config
    assert config.datacenter == "b"
    assert config.node_name == "from-flag"
    assert config.acl.enabled is True  # nested objects merge: two.json only changed default_policy
    assert config.acl.default_policy == "allow"


def test_legacy_master_token_name_is_read() -> None:
    loaded = load_agent_config([src("c.json", {"acl": {"tokens": {"master": "old"}}})])
    assert loaded.config.acl.initial_management == "old"


def test_unknown_keys_are_one_warning_each_naming_source_and_key() -> None:
    document = {"server": True, "ui_config": {"enabled": True}, "limits": {"rpc_rate": 10}, "acl": {"down_policy": "x"}}
    loaded = load_agent_config([src("conf.json", document)])
    assert loaded.warnings == (
        "conf.json: config key 'server' is not supported by the dev agent (ignored)",
        "conf.json: config key 'ui_config' is not supported by the dev agent (ignored)",
        "conf.json: config key 'limits.rpc_rate' is not supported by the dev agent (ignored)",
        "conf.json: config key 'acl.down_policy' is not supported by the dev agent (ignored)",
    )


@pytest.mark.parametrize(
    ("document", "message"),
    [
        pytest.param(
            {"limits": {"http_max_conns_per_client": -1}},
            "x.json: limits.http_max_conns_per_client: -1 must be a whole number >= 0 (0: no limit)",
            id="negative-limit",
        ),
        pytest.param(
            {"limits": {"http_max_conns_per_client": "200"}},
            "x.json: limits.http_max_conns_per_client: '200' must be a whole number >= 0 (0: no limit)",
            id="string-limit",
        ),
        pytest.param(
            {"acl": {"default_policy": "maybe"}},
            'x.json: acl.default_policy: \'maybe\' must be "allow" or "deny"',
            id="default-policy",
        ),
        pytest.param(
            {"acl": {"enabled": "yes"}}, "x.json: acl.enabled: 'yes' must be true or false, got a string", id="bool"
        ),
        pytest.param({"acl": []}, "x.json: acl: [] must be an object, got an array", id="acl-not-object"),
        pytest.param(
            {"telemetry": {"prometheus_retention_time": "soon"}},
            "x.json: telemetry.prometheus_retention_time: 'soon' is not a duration (time: invalid duration \"soon\")",
            id="duration",
        ),
        pytest.param({"datacenter": "two words"}, "x.json: datacenter: 'two words' must be a single word", id="dc"),
        pytest.param({"ports": {"http": 70000}}, "x.json: ports.http: 70000 must be a port number 0-65535", id="port"),
    ],
)
def test_bad_values_name_source_key_and_value(document: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_agent_config([src("x.json", document)])
    assert str(caught.value) == message


def test_a_flag_value_names_flags_as_its_source() -> None:
    with pytest.raises(ConfigError, match=r"^flags: limits.http_max_conns_per_client: -5 "):
        load_agent_config([], {"limits.http_max_conns_per_client": -5})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param('{"datacenter": ', "bad.json: not valid JSON (line 1 column 16: Expecting value)", id="json"),
        pytest.param("[1, 2]", "bad.json: the agent configuration must be a JSON object, got an array", id="array"),
    ],
)
def test_unreadable_documents(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_agent_config([Source("bad.json", text)])
    assert str(caught.value) == message


def test_hcl_files_are_refused_with_a_reason() -> None:
    with pytest.raises(ConfigError, match=r"^agent.hcl: HCL agent configuration is not supported"):
        load_agent_config([Source("agent.hcl", 'datacenter = "x"')])


def test_empty_document_is_nothing() -> None:
    assert load_agent_config([Source("CONSUL_LOCAL_CONFIG", "  ")]).config == AgentConfig()
