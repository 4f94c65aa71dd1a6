"""ACL decisions with Consul's semantics: exact match, then longest prefix, merged policies, default policy."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consulgw.devagent.acl_rules import parse_rules
from consulgw.devagent.authorizer import ANONYMOUS_ACCESSOR, Authorizer, Authz, permission_denied


def authorizer(*texts: str, default_allow: bool = False) -> Authorizer:
    return Authorizer([parse_rules(t) for t in texts], default_allow=default_allow)


RULES = """
key_prefix "" { policy = "read" }
key_prefix "app/" { policy = "write" }
key_prefix "app/secret/" { policy = "deny" }
key "app/secret/shared" { policy = "read" }
key "app/ro" { policy = "read" }
key_prefix "list/" { policy = "list" }
service_prefix "web" { policy = "read" }
service "web-admin" { policy = "deny" }
node_prefix "" { policy = "read" }
operator = "read"
"""


@pytest.mark.parametrize(
    ("resource", "access", "name", "allowed"),
    [
        pytest.param("key", "read", "anything", True, id="catch-all-prefix"),
        pytest.param("key", "write", "anything", False, id="catch-all-is-read-only"),
        pytest.param("key", "write", "app/x", True, id="longer-prefix-wins"),
        pytest.param("key", "read", "app/secret/x", False, id="longest-prefix-deny"),
        pytest.param("key", "read", "app/secret/shared", True, id="exact-beats-prefix"),
        pytest.param("key", "write", "app/ro", False, id="exact-read-beats-write-prefix"),
        pytest.param("key", "read", "app/secret/", False, id="prefix-itself"),
        pytest.param("key", "list", "list/a", True, id="list"),
        pytest.param("key", "read", "list/a", True, id="list-grants-read"),
        pytest.param("key", "write", "list/a", False, id="list-not-write"),
        pytest.param("key", "list", "app/x", True, id="write-grants-list"),
        pytest.param("key", "list", "other", False, id="read-does-not-grant-list"),
        pytest.param("service", "read", "web-api", True, id="service-prefix"),
        pytest.param("service", "read", "web-admin", False, id="service-exact-deny"),
        pytest.param("service", "read", "db", False, id="no-rule-default-deny"),
        pytest.param("operator", "read", "", True, id="operator-read"),
        pytest.param("operator", "write", "", False, id="operator-write"),
        pytest.param("mesh", "read", "", True, id="mesh-falls-back-to-operator"),
        pytest.param("acl", "read", "", False, id="no-acl-rule"),
        pytest.param("agent", "read", "node1", False, id="no-agent-rule"),
    ],
)
def test_decisions(resource: str, access: str, name: str, allowed: bool) -> None:
    assert authorizer(RULES).allows(resource, access, name) is allowed


@pytest.mark.parametrize(
    ("resource", "access", "allowed"),
    [
        pytest.param("service", "write", True, id="service"),
        pytest.param("key", "write", True, id="key"),
        pytest.param("operator", "write", True, id="operator"),
        pytest.param("acl", "read", False, id="acl-never-by-default"),
        pytest.param("acl", "write", False, id="acl-write-never-by-default"),
    ],
)
def test_default_allow_grants_everything_but_acl_management(resource: str, access: str, allowed: bool) -> None:
    assert authorizer("", default_allow=True).allows(resource, access, "x") is allowed


def test_merged_policies_the_stronger_rule_wins() -> None:
    read = 'key_prefix "a/" { policy = "read" }'
    write = 'key_prefix "a/" { policy = "write" }'
    deny = 'key_prefix "a/" { policy = "deny" }'
    assert authorizer(read, write).allows("key", "write", "a/x")
    assert not authorizer(write, deny).allows("key", "read", "a/x")
    assert authorizer('acl = "read"', 'acl = "write"').allows("acl", "write")
    listing = 'key_prefix "a/" { policy = "list" }'
    assert authorizer(read, listing).allows("key", "list", "a/x")


@pytest.mark.parametrize(
    ("rules", "prefix", "allowed"),
    [
        pytest.param('key_prefix "a/" { policy = "write" }', "a/", True, id="write-prefix"),
        pytest.param('key_prefix "a/" { policy = "write" }\nkey "a/b" { policy = "read" }', "a/", False,
                     id="exact-read-under"),
        pytest.param('key_prefix "a/" { policy = "write" }\nkey_prefix "a/c/" { policy = "deny" }', "a/", False,
                     id="deny-prefix-under"),
        pytest.param('key_prefix "a/" { policy = "write" }\nkey "b" { policy = "read" }', "a/", True,
                     id="unrelated-rule"),
        pytest.param('key_prefix "" { policy = "read" }', "a/", False, id="read-above"),
        pytest.param('key "a/x" { policy = "write" }', "a/", False, id="no-prefix-rule-default-deny"),
    ],
)  # fmt: skip
def test_key_write_prefix(rules: str, prefix: str, allowed: bool) -> None:
    assert authorizer(rules).allows_key_write_prefix(prefix) is allowed


def test_denial_texts() -> None:
    assert permission_denied("abc", "key", "read", "app/x") == (
        "Permission denied: token with AccessorID 'abc' lacks permission 'key:read' on \"app/x\""
    )
    assert permission_denied("abc", "operator", "read", None) == (
        "Permission denied: token with AccessorID 'abc' lacks permission 'operator:read'"
    )
    assert permission_denied(ANONYMOUS_ACCESSOR, "service", "write", "web") == (
        "Permission denied: anonymous token lacks permission 'service:write' on \"web\". "
        "The anonymous token is used implicitly when a request does not specify a token."
    )


def test_acls_disabled_allow_everything() -> None:
    authz = Authz()
    assert authz.unrestricted
    authz.require("acl", "write")
    authz.require_key_write_prefix("")


def _reference(rules: list[tuple[bool, str, str]], name: str) -> str | None:
    """The decision by definition: an exact rule on ``name``, else the prefix rule with the longest label."""
    exact = [level for is_prefix, label, level in rules if not is_prefix and label == name]
    if exact:
        return exact[-1]
    prefixes = [(len(label), level) for is_prefix, label, level in rules if is_prefix and name.startswith(label)]
    if not prefixes:
        return None
    longest = max(length for length, _ in prefixes)
    return [level for length, level in prefixes if length == longest][-1]


@given(
    st.lists(
        st.tuples(st.booleans(), st.text(alphabet="ab/", max_size=4), st.sampled_from(["read", "write", "deny"])),
        max_size=8,
        unique_by=lambda r: (r[0], r[1]),
    ),
    st.text(alphabet="ab/", max_size=5),
)
def test_decision_is_exact_else_longest_prefix(rules: list[tuple[bool, str, str]], name: str) -> None:
    text = "\n".join(f'{"key_prefix" if p else "key"} "{label}" {{ policy = "{level}" }}' for p, label, level in rules)
    expected = _reference(rules, name)
    allowed = authorizer(text).allows("key", "read", name)
    assert allowed is (expected in ("read", "write"))
