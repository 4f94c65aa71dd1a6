"""Consul's ACL decisions: a token's merged policy rules, then the agent's default policy.

Rules of all the token's policies are merged first: for the same rule (kind and label) the stronger access wins,
``deny`` > ``write`` > ``list`` > ``read``. A decision for a named resource takes the exact-match rule if there is
one, else the longest matching prefix rule; ``write`` grants read and list, ``list`` grants read (key rules only),
``deny`` refuses. When no rule applies, the default policy decides: ``allow`` permits everything but ACL
management, ``deny`` permits nothing. A token with the ``global-management`` policy therefore manages everything.

Refusals become :class:`ApiError` 403 with Consul's text, e.g. ``Permission denied: token with AccessorID '...'
lacks permission 'key:read' on "app/config"``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from consulgw.devagent.acl_rules import Rules
from consulgw.devagent.errors import ApiError

ANONYMOUS_ACCESSOR = "00000000-0000-0000-0000-000000000002"
_PRECEDENCE = {"deny": 4, "write": 3, "list": 2, "read": 1, "": 0}
_GRANTS = {"write": {"read", "list", "write"}, "list": {"read", "list"}, "read": {"read"}, "deny": set()}
# resource -> the rule kinds deciding it (exact kind, prefix kind); unlabelled resources use a scalar rule
_TREES = {
    "agent": ("agent", "agent_prefix"),
    "event": ("event", "event_prefix"),
    "key": ("key", "key_prefix"),
    "node": ("node", "node_prefix"),
    "query": ("query", "query_prefix"),
    "service": ("service", "service_prefix"),
    "session": ("session", "session_prefix"),
}
SCALAR_RESOURCES = ("acl", "keyring", "operator", "mesh", "peering")


def _stronger(new: str, old: str) -> bool:
    return _PRECEDENCE.get(new, 0) > _PRECEDENCE.get(old, 0)


@dataclass(slots=True)
class _Tree:
    exact: dict[str, str] = field(default_factory=dict)
    prefix: dict[str, str] = field(default_factory=dict)

    def put(self, label: str, policy: str, *, is_prefix: bool) -> None:
        table = self.prefix if is_prefix else self.exact
        if label not in table or _stronger(policy, table[label]):
            table[label] = policy

    def lookup(self, name: str) -> str | None:
        """Exact match first, else the longest prefix (Consul walks its radix tree the same way)."""
        found = self.exact.get(name)
        if found is not None:
            return found
        if not self.prefix:
            return None
        for end in range(len(name), -1, -1):
            found = self.prefix.get(name[:end])
            if found is not None:
                return found
        return None


class Authorizer:
    """Decisions for one token: its merged rules chained onto the default policy (``allow`` or ``deny``)."""

    __slots__ = ("_default_allow", "_intentions", "_scalars", "_trees")

    def __init__(self, rule_sets: Iterable[Rules], *, default_allow: bool) -> None:
        self._default_allow = default_allow
        self._scalars: dict[str, str] = {}
        self._trees: dict[str, _Tree] = {kind: _Tree() for kind in _TREES}
        self._intentions = _Tree()
        for rules in rule_sets:
            for kind, level in rules.scalars.items():
                if _stronger(level, self._scalars.get(kind, "")):
                    self._scalars[kind] = level
            for rule in rules.blocks:
                resource = rule.kind.removesuffix("_prefix")
                is_prefix = rule.kind.endswith("_prefix")
                self._trees[resource].put(rule.label, rule.policy, is_prefix=is_prefix)
                if resource == "service":
                    intentions = rule.intentions or ("read" if rule.policy in ("read", "write") else "deny")
                    self._intentions.put(rule.label, intentions, is_prefix=is_prefix)

    def _policy_decision(self, resource: str, access: str, name: str) -> bool | None:
        """True/False when a rule decides, None when the default policy must."""
        if resource in SCALAR_RESOURCES:
            level = self._scalars.get(resource)
            if level is None and resource in ("mesh", "peering"):
                level = self._scalars.get("operator")  # mesh and peering fall back to operator rules
        elif resource == "intention":
            level = self._intentions.lookup(name)
        else:
            level = self._trees[resource].lookup(name)
        if level is None:
            return None
        return access in _GRANTS[level]

    def allows(self, resource: str, access: str, name: str = "") -> bool:
        decided = self._policy_decision(resource, access, name)
        if decided is not None:
            return decided
        if resource == "acl":
            return False  # the default "allow" authorizer never grants ACL management
        return self._default_allow

    def allows_key_write_prefix(self, prefix: str) -> bool:
        """Consul's KeyWritePrefix: write on the prefix itself and no rule under it that would not grant write."""
        tree = self._trees["key"]
        base: bool | None = None
        for end in range(len(prefix) + 1):
            level = tree.prefix.get(prefix[:end])
            if level is not None:
                base = level == "write"
        if base is False:
            return False
        for table in (tree.prefix, tree.exact):
            for label, level in table.items():
                if label.startswith(prefix) and level != "write":
                    return False
        if base is None:
            return self._default_allow
        return True


@dataclass(frozen=True, slots=True)
class Authz:
    """The requester: who (accessor), whether a token was given, and what it may do (None: ACLs disabled)."""

    accessor: str = ""
    supplied: bool = False
    authorizer: Authorizer | None = None

    @property
    def unrestricted(self) -> bool:
        return self.authorizer is None

    def allows(self, resource: str, access: str, name: str = "") -> bool:
        return self.authorizer is None or self.authorizer.allows(resource, access, name)

    def require(self, resource: str, access: str, name: str | None = None) -> None:
        """Raise Consul's 403 unless allowed; ``name=None`` for unnamed resources (``operator``, ``acl``)."""
        if not self.allows(resource, access, name or ""):
            raise self.denied(resource, access, name)

    def require_key_write_prefix(self, prefix: str) -> None:
        if self.authorizer is not None and not self.authorizer.allows_key_write_prefix(prefix):
            raise self.denied("key", "write", prefix)

    def denied(self, resource: str, access: str, name: str | None) -> ApiError:
        return ApiError(403, permission_denied(self.accessor, resource, access, name))


ALLOW_ALL = Authz()


def permission_denied(accessor: str, resource: str, access: str, name: str | None) -> str:
    """Consul's PermissionDeniedError text for a decision made by ACL rules."""
    anonymous = accessor == ANONYMOUS_ACCESSOR
    who = "anonymous token" if anonymous else f"token with AccessorID '{accessor}'"
    text = f"Permission denied: {who} lacks permission '{resource}:{access}'"
    if name:
        text += f' on "{name}"'
    if anonymous:
        text += ". The anonymous token is used implicitly when a request does not specify a token."
    return text
