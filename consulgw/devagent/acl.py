"""The ACL system of the dev agent: policies, tokens, bootstrap, and resolving a request's token (Consul's semantics).

When ACLs are enabled the agent starts as a Consul leader does: it creates the builtin policies
(``global-management``, ``builtin/global-read-only``), the ``acl.tokens.initial_management`` token if one is
configured (which uses up the one-time bootstrap, as in Consul) and the anonymous token. Requests without a token
act as the anonymous token (or ``acl.tokens.default`` when configured); a token Consul does not know is refused with
``403 ACL not found``.

ACL writes take the shared Raft index like every other write; the blocking reads of ``/v1/acl/*`` wake on the
``acl-policies`` / ``acl-tokens`` topics. Resolution is cached per secret and recomputed after any ACL write.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from consulgw.devagent.acl_rules import Rules, RulesError, parse_rules
from consulgw.devagent.agent_config import AclConfig
from consulgw.devagent.authorizer import ALLOW_ALL, ANONYMOUS_ACCESSOR, Authorizer, Authz
from consulgw.devagent.core import Core
from consulgw.devagent.errors import ApiError

GLOBAL_MANAGEMENT_ID = "00000000-0000-0000-0000-000000000001"
GLOBAL_READ_ONLY_ID = "00000000-0000-0000-0000-000000000002"
ANONYMOUS_SECRET = "anonymous"
RESERVED_PREFIX = "00000000-0000-0000-0000-0000000000"
POLICIES_TOPIC = "acl-policies"
TOKENS_TOPIC = "acl-tokens"
MIN_EXPIRATION_TTL = 60.0
MAX_EXPIRATION_TTL = 24 * 3600.0
_POLICY_NAME = re.compile(r"[A-Za-z0-9\-_]{1,128}")
_IDENTITY_NAME = re.compile(r"[a-z0-9]([a-z0-9\-_]*[a-z0-9])?")

_ALL_RULES = """
acl = "{level}"
agent_prefix "" {{
	policy = "{level}"
}}
event_prefix "" {{
	policy = "{level}"
}}
key_prefix "" {{
	policy = "{level}"
}}
keyring = "{level}"
node_prefix "" {{
	policy = "{level}"
}}
operator = "{level}"
mesh = "{level}"
peering = "{level}"
query_prefix "" {{
	policy = "{level}"
}}
service_prefix "" {{
	policy = "{level}"
	intentions = "{level}"
}}
session_prefix "" {{
	policy = "{level}"
}}"""
GLOBAL_MANAGEMENT_RULES = _ALL_RULES.format(level="write")
GLOBAL_READ_ONLY_RULES = _ALL_RULES.format(level="read")


def acl_not_found() -> ApiError:
    return ApiError(403, "ACL not found")


def go_time(seconds: float) -> str:
    """Go's time.Time JSON form (RFC 3339 with trailing-zero-trimmed nanoseconds) in UTC."""
    whole = int(seconds)
    nanos = round((seconds - whole) * 1e9)
    if nanos >= 1_000_000_000:
        whole, nanos = whole + 1, nanos - 1_000_000_000
    stamp = dt.datetime.fromtimestamp(whole, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f".{nanos:09d}".rstrip("0") if nanos else ""
    return f"{stamp}{fraction}Z"


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


@dataclass(frozen=True, slots=True, kw_only=True)
class AclPolicy:
    id: str
    name: str
    description: str = ""
    rules: str = ""
    datacenters: tuple[str, ...] = ()
    parsed: Rules = field(default_factory=Rules, compare=False)
    create_index: int = 0
    modify_index: int = 0

    @property
    def hash(self) -> bytes:
        h = hashlib.blake2b(digest_size=32)
        for part in (self.name, self.description, self.rules, *self.datacenters):
            h.update(part.encode())
        return h.digest()

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ID": self.id, "Name": self.name, "Description": self.description, "Rules": self.rules}
        if self.datacenters:
            out["Datacenters"] = list(self.datacenters)
        out.update(Hash=_b64(self.hash), CreateIndex=self.create_index, ModifyIndex=self.modify_index)
        return out

    def stub(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Name": self.name,
            "Description": self.description,
            "Datacenters": list(self.datacenters) or None,
            "Hash": _b64(self.hash),
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    """A service or node identity: a synthetic policy made from a name (Consul's ServiceIdentities/NodeIdentities)."""

    kind: str  # "service" or "node"
    name: str
    datacenters: tuple[str, ...] = ()

    def rules(self) -> Rules:
        if self.kind == "service":
            text = (
                f'service "{self.name}" {{ policy = "write" }}\n'
                f'service "{self.name}-sidecar-proxy" {{ policy = "write" }}\n'
                'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }\n'
            )
        else:
            text = f'node "{self.name}" {{ policy = "write" }}\nservice_prefix "" {{ policy = "read" }}\n'
        return parse_rules(text)

    def json(self) -> dict[str, Any]:
        if self.kind == "service":
            out: dict[str, Any] = {"ServiceName": self.name}
            if self.datacenters:
                out["Datacenters"] = list(self.datacenters)
            return out
        return {"NodeName": self.name, "Datacenter": self.datacenters[0] if self.datacenters else ""}


@dataclass(frozen=True, slots=True, kw_only=True)
class AclToken:
    accessor_id: str
    secret_id: str
    description: str = ""
    policy_ids: tuple[str, ...] = ()
    identities: tuple[Identity, ...] = ()
    local: bool = False
    create_time: float = 0.0
    expiration_time: float | None = None
    create_index: int = 0
    modify_index: int = 0

    @property
    def hash(self) -> bytes:
        h = hashlib.blake2b(digest_size=32)
        h.update(self.description.encode())
        h.update(b"local" if self.local else b"global")
        for policy_id in self.policy_ids:
            h.update(policy_id.encode())
        for ident in self.identities:
            h.update(ident.name.encode())
            for dc in ident.datacenters:
                h.update(dc.encode())
        return h.digest()

    def expired(self, now: float) -> bool:
        return self.expiration_time is not None and self.expiration_time < now


class AclSystem:
    """Policies and tokens, and the resolution of a request's secret into an :class:`Authz`."""

    def __init__(self, core: Core, config: AclConfig) -> None:
        self.core = core
        self.config = config
        self.policies: dict[str, AclPolicy] = {}
        self.tokens: dict[str, AclToken] = {}  # by accessor
        self._by_secret: dict[str, str] = {}
        self.bootstrap_index = 0
        self.policies_index = 0
        self.tokens_index = 0
        self._cache: dict[str, Authz] = {}

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    # ---- start-up (what a Consul leader does when it establishes leadership) -----------------------------------

    def initialize(self) -> None:
        if not self.enabled:
            return
        for policy_id, name, description, rules in (
            (GLOBAL_MANAGEMENT_ID, "global-management", "Builtin Policy that grants unlimited access",
             GLOBAL_MANAGEMENT_RULES),
            (GLOBAL_READ_ONLY_ID, "builtin/global-read-only",
             "Builtin Policy that grants unlimited read-only access to all components", GLOBAL_READ_ONLY_RULES),
        ):  # fmt: skip
            self.put_policy(
                AclPolicy(id=policy_id, name=name, description=description, rules=rules, parsed=parse_rules(rules))
            )
        if self.config.initial_management:
            token = AclToken(
                accessor_id=self.core.new_uuid(),
                secret_id=self.config.initial_management,
                description="Initial Management Token",
                policy_ids=(GLOBAL_MANAGEMENT_ID,),
                create_time=self.core.clock.time(),
            )
            stored = self.put_token(token)
            self.bootstrap_index = stored.create_index
            self.core.log("info", "agent.server", "Bootstrapped ACL token from configuration",
                          description="Initial Management Token")  # fmt: skip
        self.put_token(
            AclToken(
                accessor_id=ANONYMOUS_ACCESSOR,
                secret_id=ANONYMOUS_SECRET,
                description="Anonymous Token",
                create_time=self.core.clock.time(),
            )
        )

    # ---- writes -------------------------------------------------------------------------------------------------

    def _commit(self, topic: str) -> int:
        with self.core.store.write() as tx:
            index = tx.index
        if topic == POLICIES_TOPIC:
            self.policies_index = index
        else:
            self.tokens_index = index
        self._cache.clear()
        self.core.store.watch.notify([topic])
        return index

    def put_policy(self, policy: AclPolicy) -> AclPolicy:
        old = self.policies.get(policy.id)
        index = self._commit(POLICIES_TOPIC)
        stored = replace(policy, create_index=old.create_index if old else index, modify_index=index)
        self.policies[policy.id] = stored
        return stored

    def delete_policy(self, policy_id: str) -> None:
        if self.policies.pop(policy_id, None) is not None:
            self._commit(POLICIES_TOPIC)

    def put_token(self, token: AclToken) -> AclToken:
        old = self.tokens.get(token.accessor_id)
        index = self._commit(TOKENS_TOPIC)
        stored = replace(token, create_index=old.create_index if old else index, modify_index=index)
        if old is not None:
            self._by_secret.pop(old.secret_id, None)
        self.tokens[token.accessor_id] = stored
        self._by_secret[token.secret_id] = token.accessor_id
        return stored

    def delete_token(self, accessor_id: str) -> None:
        token = self.tokens.pop(accessor_id, None)
        if token is not None:
            self._by_secret.pop(token.secret_id, None)
            self._commit(TOKENS_TOPIC)

    def set_default_token(self, secret: str) -> None:
        """``PUT /v1/agent/token/default``: the token of requests that carry none."""
        self.config = replace(self.config, default_token=secret)
        self._cache.clear()

    def bootstrap(self, secret: str = "") -> AclToken:
        if self.bootstrap_index:
            raise ApiError(
                403, f"Permission denied: ACL bootstrap no longer allowed (reset index: {self.bootstrap_index})"
            )
        token = self.put_token(
            AclToken(
                accessor_id=self.new_id(),
                secret_id=secret or self.new_id(),
                description="Bootstrap Token (Global Management)",
                policy_ids=(GLOBAL_MANAGEMENT_ID,),
                create_time=self.core.clock.time(),
            )
        )
        self.bootstrap_index = token.create_index
        self.core.log("info", "agent.server.acl", "ACL bootstrap completed")
        return token

    def new_id(self) -> str:
        while True:
            candidate = self.core.new_uuid()
            taken = candidate in self.tokens or candidate in self._by_secret or candidate in self.policies
            if not candidate.startswith(RESERVED_PREFIX) and not taken:
                return candidate

    # ---- reads --------------------------------------------------------------------------------------------------

    def policy_by_name(self, name: str) -> AclPolicy | None:
        for policy in self.policies.values():
            if policy.name == name:
                return policy
        return None

    def token_by_secret(self, secret: str) -> AclToken | None:
        accessor = self._by_secret.get(secret)
        token = self.tokens.get(accessor) if accessor is not None else None
        if token is None or token.expired(self.core.clock.time()):
            return None
        return token

    def live_token(self, accessor: str) -> AclToken | None:
        token = self.tokens.get(accessor)
        if token is None or token.expired(self.core.clock.time()):
            return None
        return token

    def policy_links(self, token: AclToken) -> list[dict[str, str]]:
        """The token's policy links with current names; links to deleted policies are dropped, as Consul does."""
        return [{"ID": pid, "Name": self.policies[pid].name} for pid in token.policy_ids if pid in self.policies]

    def token_json(self, token: AclToken, *, redact: bool = False, stub: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "AccessorID": token.accessor_id,
            "SecretID": "<hidden>" if redact else token.secret_id,
            "Description": token.description,
        }
        links = self.policy_links(token)
        if links:
            out["Policies"] = links
        services = [i.json() for i in token.identities if i.kind == "service"]
        nodes = [i.json() for i in token.identities if i.kind == "node"]
        if services:
            out["ServiceIdentities"] = services
        if nodes:
            out["NodeIdentities"] = nodes
        out["Local"] = token.local
        if token.expiration_time is not None:
            out["ExpirationTime"] = go_time(token.expiration_time)
        out["CreateTime"] = go_time(token.create_time)
        out["Hash"] = _b64(token.hash)
        out["CreateIndex"] = token.create_index
        out["ModifyIndex"] = token.modify_index
        return out

    # ---- resolution ---------------------------------------------------------------------------------------------

    def resolve(self, secret: str) -> Authz:
        """The requester behind ``secret`` (``""``: no token given). ACLs disabled: everything is allowed."""
        if not self.enabled:
            return ALLOW_ALL
        supplied = bool(secret)
        if not secret:
            secret = self.config.default_token
            supplied = bool(secret)
        key = secret or ANONYMOUS_SECRET
        cached = self._cache.get(key)
        if cached is not None and (cached.accessor == ANONYMOUS_ACCESSOR or self.token_by_secret(key) is not None):
            return replace(cached, supplied=supplied)
        token = self.token_by_secret(key)
        if token is None:
            if secret:
                raise acl_not_found()
            token = AclToken(accessor_id=ANONYMOUS_ACCESSOR, secret_id=ANONYMOUS_SECRET)
        authz = Authz(accessor=token.accessor_id, supplied=supplied, authorizer=self._authorizer(token))
        self._cache[key] = authz
        return authz

    def _authorizer(self, token: AclToken) -> Authorizer:
        rule_sets: list[Rules] = [self.policies[pid].parsed for pid in token.policy_ids if pid in self.policies]
        rule_sets.extend(i.rules() for i in token.identities if self._identity_applies(i))
        return Authorizer(rule_sets, default_allow=self.config.default_policy == "allow")

    def _identity_applies(self, ident: Identity) -> bool:
        return not ident.datacenters or self.core.datacenter in ident.datacenters

    # ---- validation shared by the endpoints ----------------------------------------------------------------------

    @staticmethod
    def check_rules(text: str) -> Rules:
        try:
            return parse_rules(text)
        except RulesError as exc:
            raise ApiError(500, str(exc)) from None

    @staticmethod
    def valid_policy_name(name: str) -> bool:
        return bool(_POLICY_NAME.fullmatch(name))

    @staticmethod
    def valid_identity_name(name: str) -> bool:
        return bool(_IDENTITY_NAME.fullmatch(name))

    @staticmethod
    def valid_uuid(text: str) -> bool:
        try:
            uuid.UUID(text)
        except ValueError:
            return False
        return len(text) == 36

    def sorted_tokens(self) -> Iterable[AclToken]:
        now = self.core.clock.time()
        return [t for _, t in sorted(self.tokens.items()) if not t.expired(now)]
