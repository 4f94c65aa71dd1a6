"""ACL rules in HCL (version 1 syntax) and JSON, validated with Consul's texts; cross-checked on deploy/consul."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consulgw.devagent.acl import GLOBAL_MANAGEMENT_RULES
from consulgw.devagent.acl_rules import BlockRule, Rules, RulesError, parse_rules
from tests.deploy.test_consul_acl import grants

ACL_DIR = Path(__file__).resolve().parents[2] / "deploy" / "consul"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("", Rules(), id="empty"),
        pytest.param('acl = "read"', Rules(scalars={"acl": "read"}), id="scalar"),
        pytest.param(
            'key_prefix "app/" {\n  policy = "LIST"\n}', Rules(blocks=(BlockRule("key_prefix", "app/", "list"),)),
            id="block-case-insensitive",
        ),
        pytest.param(
            'service "web" { policy = "write" intentions = "read" }',
            Rules(blocks=(BlockRule("service", "web", "write", "read"),)),
            id="service-intentions",
        ),
        pytest.param(
            "# comment\n// another\n/* block\n comment */ node_prefix \"\" { policy = \"read\" }",
            Rules(blocks=(BlockRule("node_prefix", "", "read"),)),
            id="comments",
        ),
        pytest.param(
            'session = { "n1" = { policy = "write" } }', Rules(blocks=(BlockRule("session", "n1", "write"),)),
            id="object-form",
        ),
        pytest.param(
            '{"key_prefix": {"a/": {"policy": "read"}}, "operator": "write"}',
            Rules(scalars={"operator": "write"}, blocks=(BlockRule("key_prefix", "a/", "read"),)),
            id="json",
        ),
        pytest.param(
            '{"service": [{"web": [{"policy": "read"}]}]}', Rules(blocks=(BlockRule("service", "web", "read"),)),
            id="json-lists",
        ),
        pytest.param('unknown "x" { policy = "read" }\nfoo = 1', Rules(), id="unknown-keys-ignored"),
    ],
)  # fmt: skip
def test_parses(text: str, expected: Rules) -> None:
    assert parse_rules(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            'key "k" { policy = "all" }',
            'Invalid key policy: &acl.KeyRule{Prefix:"k", Policy:"all", EnterpriseRule:acl.EnterpriseRule{}}',
            id="key",
        ),
        pytest.param(
            'node_prefix "" { policy = "list" }',
            'Invalid node_prefix policy: &acl.NodeRule{Name:"", Policy:"list", EnterpriseRule:acl.EnterpriseRule{}}',
            id="list-on-node",
        ),
        pytest.param(
            'service "s" { policy = "read" intentions = "list" }',
            'Invalid service intentions policy: &acl.ServiceRule{Name:"s", Policy:"read", Intentions:"list", '
            "EnterpriseRule:acl.EnterpriseRule{}}",
            id="intentions",
        ),
        pytest.param(
            'session "n" { }', 'Invalid session policy: &acl.SessionRule{Node:"n", Policy:""}', id="missing-policy"
        ),
        pytest.param('event_prefix "" { policy = 3 }', 'Invalid event_prefix policy: &acl.EventRule{Event:"", Policy:""}',
                     id="number-policy"),
        pytest.param('query "q" { policy = "x" }', 'Invalid query policy: &acl.PreparedQueryRule{Prefix:"q", Policy:"x"}',
                     id="query"),
        pytest.param('keyring = "admin"', 'Invalid keyring policy: "admin"', id="keyring"),
        pytest.param('mesh = "list"', 'Invalid mesh policy: "list"', id="mesh"),
    ],
)  # fmt: skip
def test_invalid_levels_use_consuls_text(text: str, message: str) -> None:
    with pytest.raises(RulesError) as caught:
        parse_rules(text)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param('key "x" {\n  policy = \n}', "At 3:1: expected a value", id="missing-value"),
        pytest.param('key "x" policy', "At 1:9: expected '=' or '{' after 'key', got 'policy'", id="no-body"),
        pytest.param('acl = "read', "At 1:7: unterminated string", id="unterminated"),
        pytest.param("acl ~ 1", "At 1:5: illegal char '~'", id="illegal"),
        pytest.param('key "x" {\n policy = "read"\n', "At 3:1: expected a key, got end of input", id="unclosed"),
        pytest.param('{"acl": }', "At 1:9: Expecting value", id="json"),
    ],
)
def test_syntax_errors_name_line_column_and_what_was_found(text: str, message: str) -> None:
    with pytest.raises(RulesError) as caught:
        parse_rules(text)
    assert str(caught.value).startswith("Failed to parse ACL rules: " + message)


@pytest.mark.parametrize("name", ["gateway-policy.hcl", "operator-policy.hcl", "registration-policy.hcl"])
def test_deploy_policies_read_the_same_as_python_hcl2_reads_them(name: str) -> None:
    """Our HCL 1 subset and the HCL 2 parser the deploy tests use agree on the policies we ship."""
    ours = {(r.kind, r.label): r.policy for r in parse_rules((ACL_DIR / name).read_text()).blocks}
    assert ours == grants(ACL_DIR / name)


def test_builtin_global_management_rules_parse() -> None:
    rules = parse_rules(GLOBAL_MANAGEMENT_RULES)
    assert rules.scalars["acl"] == "write"
    assert BlockRule("service_prefix", "", "write", "write") in rules.blocks


LABEL = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF, exclude_characters='"\\'), max_size=12)
KIND = st.sampled_from(["key", "key_prefix", "node", "service_prefix", "agent", "session_prefix", "event"])
LEVEL = st.sampled_from(["read", "write", "deny"])


@given(st.lists(st.tuples(KIND, LABEL, LEVEL), max_size=6))
def test_hcl_and_json_forms_of_the_same_rules_agree(rules: list[tuple[str, str, str]]) -> None:
    import json

    hcl = "\n".join(f'{kind} "{label}" {{\n  policy = "{level}"\n}}' for kind, label, level in rules)
    document: dict[str, list[dict[str, dict[str, str]]]] = {}
    for kind, label, level in rules:
        document.setdefault(kind, []).append({label: {"policy": level}})
    as_hcl = parse_rules(hcl)
    as_json = parse_rules(json.dumps(document)) if rules else parse_rules("")
    assert sorted(as_hcl.blocks, key=repr) == sorted(as_json.blocks, key=repr)
