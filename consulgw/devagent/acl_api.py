"""``/v1/acl/*``: bootstrap, policies and tokens, with Consul's status codes and texts.

With ACLs disabled every endpoint answers ``401 ACL support disabled``. Reading policies and tokens needs
``acl = "read"``, writing them ``acl = "write"``; a token read without ``acl = "write"`` shows ``<hidden>`` as its
SecretID. Validation failures are 500s with Consul's texts (they come from Consul's RPC layer); malformed bodies
are 400 ``Policy decoding failed: ...`` / ``Token decoding failed: ...``. Roles, auth methods and binding rules are
not implemented: a token that links a role is refused as Consul refuses a link to a role that does not exist.
"""

from __future__ import annotations

import datetime as dt
import urllib.parse
from typing import Any

from consulgw.devagent.acl import (
    ANONYMOUS_SECRET,
    GLOBAL_MANAGEMENT_ID,
    MAX_EXPIRATION_TTL,
    MIN_EXPIRATION_TTL,
    POLICIES_TOPIC,
    RESERVED_PREFIX,
    TOKENS_TOPIC,
    AclPolicy,
    AclSystem,
    AclToken,
    Identity,
    acl_not_found,
)
from consulgw.devagent.authorizer import ANONYMOUS_ACCESSOR, Authz
from consulgw.devagent.blocking import Answer
from consulgw.devagent.core import Core
from consulgw.devagent.decode import Fields, parse_json
from consulgw.devagent.errors import ApiError, DecodeError, bad_request, server_error
from consulgw.devagent.http import Call, Reply, Router, text
from consulgw.duration import format_go_duration

NS = 1_000_000_000


def _go_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class AclEndpoints:
    def __init__(self, core: Core, acl: AclSystem) -> None:
        self.core = core
        self.acl = acl

    def register(self, router: Router) -> None:
        router.add("/v1/acl/bootstrap", ("PUT",), self.bootstrap)
        router.add("/v1/acl/policies", ("GET",), self.policy_list)
        router.add("/v1/acl/policy", ("PUT",), self.policy_create)
        router.add("/v1/acl/policy/", ("GET", "PUT", "DELETE"), self.policy_crud)
        router.add("/v1/acl/policy/name/", ("GET",), self.policy_by_name)
        router.add("/v1/acl/tokens", ("GET",), self.token_list)
        router.add("/v1/acl/token", ("PUT",), self.token_create)
        router.add("/v1/acl/token/self", ("GET",), self.token_self)
        router.add("/v1/acl/token/", ("GET", "PUT", "DELETE"), self.token_crud)

    def _enabled(self) -> None:
        if not self.acl.enabled:
            raise ApiError(401, "ACL support disabled")

    # ---- bootstrap ----------------------------------------------------------------------------------------------

    async def bootstrap(self, call: Call) -> Reply:
        self._enabled()
        secret = ""
        raw = await call.body()
        if raw:
            try:
                secret = Fields(parse_json(raw), "BootstrapRequest").string("BootstrapSecret")
            except DecodeError as exc:
                raise bad_request(f"Request decoding failed: {exc}") from None
        token = self.acl.bootstrap(secret)
        return call.reply({"ID": token.secret_id, **self.acl.token_json(token)})

    # ---- policies -----------------------------------------------------------------------------------------------

    async def policy_list(self, call: Call) -> Reply:
        self._enabled()
        opts = self.core.read_options(call)
        call.authz().require("acl", "read")

        def query() -> Answer:
            return Answer(
                index=self.acl.policies_index,
                topics=(POLICIES_TOPIC,),
                render=lambda: [p.stub() for _, p in sorted(self.acl.policies.items())],
            )

        answer = await self.core.blocking(opts, query)
        return call.reply_meta(answer.value, answer.index, opts)

    async def policy_crud(self, call: Call) -> Reply:
        self._enabled()
        policy_id = call.suffix
        method = call.request.method
        if not policy_id and method != "PUT":
            raise bad_request("Missing policy ID")
        if method == "GET":
            return await self._policy_read(call, lambda: self.acl.policies.get(policy_id))
        if method == "PUT":
            return await self._policy_write(call, policy_id, create=False)
        return await self._policy_delete(call, policy_id)

    async def policy_by_name(self, call: Call) -> Reply:
        self._enabled()
        if not call.suffix:
            raise bad_request("Missing policy Name")
        name = urllib.parse.unquote_plus(call.suffix)
        return await self._policy_read(call, lambda: self.acl.policy_by_name(name))

    async def _policy_read(self, call: Call, lookup: Any) -> Reply:
        opts = self.core.read_options(call)
        call.authz().require("acl", "read")

        def query() -> Answer:
            policy = lookup()
            return Answer(
                index=self.acl.policies_index,
                topics=(POLICIES_TOPIC,),
                found=policy is not None,
                render=lambda: policy.json() if policy is not None else None,
            )

        answer = await self.core.blocking(opts, query)
        if not answer.found:
            return text(404, "Requested policy does not exist: ACL not found")
        return call.reply_meta(answer.value, answer.index, opts)

    async def policy_create(self, call: Call) -> Reply:
        self._enabled()
        return await self._policy_write(call, "", create=True)

    async def _policy_write(self, call: Call, policy_id: str, *, create: bool) -> Reply:
        try:
            f = Fields(await call.json(), "ACLPolicy")
            given_id = f.string("ID")
            name, description, rules = f.string("Name"), f.string("Description"), f.string("Rules")
            datacenters = f.str_list("Datacenters")
        except DecodeError as exc:
            raise bad_request(f"Policy decoding failed: {exc}") from None
        if create:
            if given_id:
                raise bad_request("Cannot specify the ID when creating a new policy")
        elif given_id and given_id != policy_id:
            raise bad_request("Policy ID in URL and payload do not match")
        else:
            given_id = policy_id
        call.authz().require("acl", "write")
        if not name:
            raise server_error("Invalid Policy: no Name is set")
        if not self.acl.valid_policy_name(name):
            raise server_error("Invalid Policy: invalid Name. Only alphanumeric characters, '-' and '_' are allowed")
        name_match = self.acl.policy_by_name(name)
        if given_id:
            if not self.acl.valid_uuid(given_id):
                raise server_error("Policy ID invalid UUID")
            id_match = self.acl.policies.get(given_id)
            if id_match is None:
                raise server_error(f"cannot find policy {given_id}")
            if id_match.name != name and name_match is not None:
                raise server_error(f"Invalid Policy: A policy with name {_go_quote(name)} already exists")
            if given_id == GLOBAL_MANAGEMENT_ID:
                if datacenters:
                    raise server_error(
                        "Changing the Datacenters of the builtin global-management policy is not permitted"
                    )
                if rules != id_match.rules:
                    raise server_error("Changing the Rules for the builtin global-management policy is not permitted")
        else:
            if name_match is not None:
                raise server_error(f"Invalid Policy: A Policy with Name {_go_quote(name)} already exists")
            given_id = self.acl.new_id()
        parsed = self.acl.check_rules(rules)
        stored = self.acl.put_policy(
            AclPolicy(
                id=given_id,
                name=name,
                description=description,
                rules=rules,
                datacenters=datacenters,
                parsed=parsed,
            )
        )
        return call.reply(stored.json())

    async def _policy_delete(self, call: Call, policy_id: str) -> Reply:
        call.authz().require("acl", "write")
        policy = self.acl.policies.get(policy_id)
        if policy is None:
            return call.reply(True)
        if policy.id == GLOBAL_MANAGEMENT_ID:
            raise server_error("Delete operation not permitted on the builtin global-management policy")
        self.acl.delete_policy(policy_id)
        return call.reply(True)

    # ---- tokens -------------------------------------------------------------------------------------------------

    async def token_list(self, call: Call) -> Reply:
        self._enabled()
        opts = self.core.read_options(call)
        authz = call.authz()
        authz.require("acl", "read")
        redact = not authz.allows("acl", "write")
        policy_filter = call.param("policy")

        def render() -> list[dict[str, Any]]:
            tokens = [t for t in self.acl.sorted_tokens() if not policy_filter or policy_filter in t.policy_ids]
            return [self.acl.token_json(t, redact=redact) for t in tokens]

        def query() -> Answer:
            return Answer(index=self.acl.tokens_index, topics=(TOKENS_TOPIC,), render=render)

        answer = await self.core.blocking(opts, query)
        return call.reply_meta(answer.value, answer.index, opts)

    async def token_self(self, call: Call) -> Reply:
        self._enabled()
        opts = self.core.read_options(call)
        secret = call.token or self.acl.config.default_token

        def query() -> Answer:
            token = self.acl.token_by_secret(secret) if secret else None
            return Answer(
                index=self.acl.tokens_index,
                topics=(TOKENS_TOPIC,),
                found=token is not None,
                render=lambda: self.acl.token_json(token) if token is not None else None,
            )

        answer = await self.core.blocking(opts, query)
        if not answer.found:
            return text(404, "Supplied token does not exist")
        return call.reply_meta(answer.value, answer.index, opts)

    async def token_crud(self, call: Call) -> Reply:
        self._enabled()
        accessor = call.suffix
        method = call.request.method
        if method == "PUT" and accessor.endswith("/clone"):
            return await self._token_clone(call, accessor.removesuffix("/clone"))
        if not accessor and method != "PUT":
            raise bad_request("Missing token AccessorID")
        if method == "GET":
            return await self._token_read(call, accessor)
        if method == "PUT":
            return await self._token_write(call, accessor, create=False)
        return await self._token_delete(call, accessor)

    async def token_create(self, call: Call) -> Reply:
        self._enabled()
        return await self._token_write(call, "", create=True)

    async def _token_read(self, call: Call, accessor: str) -> Reply:
        opts = self.core.read_options(call)
        authz = call.authz()
        authz.require("acl", "read")
        redact = not authz.allows("acl", "write")

        def query() -> Answer:
            token = self.acl.live_token(accessor)
            return Answer(
                index=self.acl.tokens_index,
                topics=(TOKENS_TOPIC,),
                found=token is not None,
                render=lambda: self.acl.token_json(token, redact=redact) if token is not None else None,
            )

        answer = await self.core.blocking(opts, query)
        if not answer.found:
            return text(404, "Requested token does not exist: ACL not found")
        return call.reply_meta(answer.value, answer.index, opts)

    def _decode_token(self, raw: Any) -> _TokenRequest:
        try:
            return _TokenRequest.parse(raw)
        except DecodeError as exc:
            raise bad_request(f"Token decoding failed: {exc}") from None

    async def _token_write(self, call: Call, accessor: str, *, create: bool) -> Reply:
        request = self._decode_token(await call.json())
        if not create:
            if not request.accessor_id:
                request.accessor_id = accessor
            if request.accessor_id != accessor:
                raise bad_request("Token Accessor ID in URL and payload do not match")
        call.authz().require("acl", "write")
        token = self._create(request) if create or not request.accessor_id else self._update(request)
        return call.reply(self.acl.token_json(token))

    def _now(self) -> float:
        return self.core.clock.time()

    def _create(self, request: _TokenRequest) -> AclToken:
        acl = self.acl
        accessor = request.accessor_id
        if accessor:
            self._check_id("AccessorID", accessor)
        else:
            accessor = acl.new_id()
        secret = request.secret_id
        if secret:
            self._check_id("SecretID", secret)
        else:
            secret = acl.new_id()
        now = self._now()
        expiration = request.expiration_time
        if request.expiration_ttl_ns < 0:
            raise server_error(f"Token Expiration TTL '{format_go_duration(request.expiration_ttl_ns)}' should be > 0")
        if request.expiration_ttl_ns > 0:
            if expiration is not None:
                raise server_error("Token Expiration TTL and Expiration Time cannot both be set")
            expiration = now + request.expiration_ttl_ns / NS
        if expiration is not None:
            if expiration < now:
                raise server_error("ExpirationTime cannot be before CreateTime")
            expires_in = expiration - now
            shown = format_go_duration(round(expires_in * NS))
            if expires_in > MAX_EXPIRATION_TTL:
                raise server_error(f"ExpirationTime cannot be more than 24h0m0s in the future (was {shown})")
            if expires_in < MIN_EXPIRATION_TTL:
                raise server_error(f"ExpirationTime cannot be less than 1m0s in the future (was {shown})")
        if request.auth_method:
            raise server_error("AuthMethod field is disallowed outside of login")
        return acl.put_token(
            AclToken(
                accessor_id=accessor,
                secret_id=secret,
                description=request.description,
                policy_ids=self._policy_ids(request),
                identities=self._identities(request),
                local=request.local,
                create_time=now,
                expiration_time=expiration,
            )
        )

    def _check_id(self, which: str, value: str) -> None:
        if value.startswith(RESERVED_PREFIX):
            raise server_error(f'Invalid Token: {which} - UUIDs with the prefix "{RESERVED_PREFIX}" are reserved')
        if not self.acl.valid_uuid(value):
            raise server_error(f"Invalid Token: {which} - not a valid UUID")
        if value in self.acl.tokens or self.acl.token_by_secret(value) is not None:
            raise server_error(f"Invalid Token: {which} is already in use")

    def _update(self, request: _TokenRequest) -> AclToken:
        acl = self.acl
        accessor = request.accessor_id
        if not acl.valid_uuid(accessor):
            raise server_error("AccessorID is not a valid UUID")
        match = acl.live_token(accessor)
        if match is None:
            raise server_error(f"Cannot find token {_go_quote(accessor)}")
        if request.secret_id and request.secret_id != match.secret_id:
            raise server_error("Changing a token's SecretID is not permitted")
        if request.local != match.local:
            raise server_error(f"Cannot toggle local mode of {accessor}")
        if request.auth_method:
            raise server_error(f"Cannot change AuthMethod of {accessor}")
        if request.expiration_ttl_ns or (
            request.expiration_time is not None and request.expiration_time != match.expiration_time
        ):
            raise server_error(f"Cannot change expiration time of {accessor}")
        return acl.put_token(
            AclToken(
                accessor_id=accessor,
                secret_id=match.secret_id,
                description=request.description,
                policy_ids=self._policy_ids(request),
                identities=self._identities(request),
                local=match.local,
                create_time=match.create_time,
                expiration_time=match.expiration_time,
            )
        )

    def _policy_ids(self, request: _TokenRequest) -> tuple[str, ...]:
        if request.roles:
            kind, value = request.roles[0]
            raise server_error(f"No such ACL role with {kind} {_go_quote(value)}")
        ids: list[str] = []
        for policy_id, name in request.policies:
            if policy_id:
                if policy_id not in self.acl.policies:
                    raise server_error(f"No such ACL policy with ID {_go_quote(policy_id)}")
            else:
                found = self.acl.policy_by_name(name)
                if found is None:
                    raise server_error(f"No such ACL policy with name {_go_quote(name)}")
                policy_id = found.id
            if policy_id not in ids:
                ids.append(policy_id)
        return tuple(ids)

    def _identities(self, request: _TokenRequest) -> tuple[Identity, ...]:
        for ident in request.identities:
            if ident.kind == "service":
                if not ident.name:
                    raise server_error("Service identity is missing the service name field on this token")
                if request.local and ident.datacenters:
                    raise server_error(
                        f"Service identity {_go_quote(ident.name)} cannot specify a list of datacenters on a "
                        "local token"
                    )
                if not self.acl.valid_identity_name(ident.name):
                    raise server_error(
                        f"Service identity {_go_quote(ident.name)} has an invalid name. Only lowercase "
                        "alphanumeric characters, '-' and '_' are allowed"
                    )
            else:
                if not ident.name:
                    raise server_error("Node identity is missing the node name field on this token")
                if not ident.datacenters or not ident.datacenters[0]:
                    raise server_error("Node identity is missing the datacenter field on this token")
                if not self.acl.valid_identity_name(ident.name):
                    raise server_error(
                        "Node identity has an invalid name. Only lowercase alphanumeric characters, '-' and '_' "
                        "are allowed"
                    )
        unique: dict[tuple[str, str, tuple[str, ...]], Identity] = {}
        for ident in request.identities:
            unique.setdefault((ident.kind, ident.name, ident.datacenters), ident)
        return tuple(unique.values())

    async def _token_delete(self, call: Call, accessor: str) -> Reply:
        authz: Authz = call.authz()
        authz.require("acl", "write")
        if not self.acl.valid_uuid(accessor):
            raise server_error("Accessor ID is missing or an invalid UUID")
        if accessor == ANONYMOUS_ACCESSOR:
            raise server_error("Delete operation not permitted on the anonymous token")
        token = self.acl.tokens.get(accessor)
        if token is None:
            return call.reply(True)
        if token.secret_id == (call.token or self.acl.config.default_token or ANONYMOUS_SECRET):
            raise server_error("Deletion of the request's authorization token is not permitted")
        self.acl.delete_token(accessor)
        return call.reply(True)

    async def _token_clone(self, call: Call, accessor: str) -> Reply:
        request = self._decode_token(await call.json() if (await call.body()).strip() else {})
        call.authz().require("acl", "write")
        source = self.acl.live_token(accessor)
        if source is None:
            raise acl_not_found()
        token = self.acl.put_token(
            AclToken(
                accessor_id=self.acl.new_id(),
                secret_id=self.acl.new_id(),
                description=request.description or source.description,
                policy_ids=source.policy_ids,
                identities=source.identities,
                local=source.local,
                create_time=self._now(),
                expiration_time=source.expiration_time,
            )
        )
        return call.reply(self.acl.token_json(token))


class _TokenRequest:
    """An ACLToken request body, decoded with Go's rules (case-insensitive keys, typed fields)."""

    __slots__ = (
        "accessor_id",
        "auth_method",
        "description",
        "expiration_time",
        "expiration_ttl_ns",
        "identities",
        "local",
        "policies",
        "roles",
        "secret_id",
    )

    def __init__(self) -> None:
        self.accessor_id = ""
        self.secret_id = ""
        self.description = ""
        self.policies: list[tuple[str, str]] = []
        self.roles: list[tuple[str, str]] = []
        self.identities: list[Identity] = []
        self.local = False
        self.auth_method = ""
        self.expiration_ttl_ns = 0
        self.expiration_time: float | None = None

    @classmethod
    def parse(cls, raw: Any) -> _TokenRequest:
        f = Fields(raw, "ACLToken")
        out = cls()
        out.accessor_id = f.string("AccessorID")
        out.secret_id = f.string("SecretID")
        out.description = f.string("Description")
        for link in f.obj_list("Policies", "ACLTokenPolicyLink"):
            out.policies.append((link.string("ID"), link.string("Name")))
        for link in f.obj_list("Roles", "ACLTokenRoleLink"):
            role_id, role_name = link.string("ID"), link.string("Name")
            out.roles.append(("ID", role_id) if role_id else ("name", role_name))
        for ident in f.obj_list("ServiceIdentities", "ACLServiceIdentity"):
            out.identities.append(
                Identity(kind="service", name=ident.string("ServiceName"), datacenters=ident.str_list("Datacenters"))
            )
        for ident in f.obj_list("NodeIdentities", "ACLNodeIdentity"):
            dc = ident.string("Datacenter")
            out.identities.append(Identity(kind="node", name=ident.string("NodeName"), datacenters=(dc,)))
        out.local = f.boolean("Local")
        out.auth_method = f.string("AuthMethod")
        out.expiration_ttl_ns = f.duration("ExpirationTTL")
        raw_time = f.raw("ExpirationTime")
        if raw_time is not None:
            if not isinstance(raw_time, str):
                raise DecodeError(
                    "json: cannot unmarshal into Go struct field ACLToken.ExpirationTime of type time.Time"
                )
            try:
                parsed = dt.datetime.fromisoformat(raw_time.replace("Z", "+00:00"))
            except ValueError as exc:
                raise DecodeError(f"parsing time {_go_quote(raw_time)}: {exc}") from None
            out.expiration_time = parsed.timestamp()
        return out
