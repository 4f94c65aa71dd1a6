"""The authentication stage: verify the credential the policy asks for, then forward the trusted identity.

On success the upstream request gets ``X-Consumer-ID`` (API key / Basic: the consumer's name; introspection: the
token's ``client_id``) and/or ``X-User-ID`` (JWT and introspection: ``sub``), ``X-User-Scopes`` (space-separated,
sorted; omitted when there are none) and, for introspection, the policy's ``claims_to_headers``. Client-sent copies
of all of them are removed first (the proxy strips the identity headers too), so an upstream can trust them.
``ctx.consumer`` is set to the identity's name, for rate limits keyed by consumer and for the access log.

On failure: ``Unauthorized`` (401) with a ``WWW-Authenticate`` challenge (``Bearer`` per RFC 6750, ``Basic`` per
RFC 7617, ``ApiKey header="..."``), ``Forbidden`` (403: ``error="insufficient_scope"`` for bearer tokens, no
challenge for API keys and Basic), or ``AuthUnavailable`` (503: the identity provider could not answer), counted
in ``consulgw_auth_rejected_total{reason}`` with the fixed reasons of ``consulgw.auth.outcome.RejectReason``.
The credential itself is forwarded unchanged (an upstream may want the JWT's other claims), unless the policy says
``hide_credentials``: then its header is removed from the upstream request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from consulgw.auth.apikey import ApiKeyAuthenticator
from consulgw.auth.basic import BasicAuthenticator
from consulgw.auth.discovery import DiscoveryCache
from consulgw.auth.introspection import Introspector
from consulgw.auth.jwt import JwtVerifier
from consulgw.auth.outcome import IDENTITY_HEADERS, SCOPES_HEADER, Identity, Rejection
from consulgw.pipeline.answer import Answer
from consulgw.pipeline.chain import Next
from consulgw.pipeline.context import HeaderEdits, Inbound, RequestContext
from consulgw.pipeline.stages.deps import StageDeps
from consulgw.policy.model import ApiKeyAuth, AuthPolicy, BasicAuth, IntrospectionAuth, JwtAuth
from consulgw.upstream.headers import CREDENTIAL_HEADER, require_single_credentials

Check = Callable[[Mapping[str, str]], Awaitable[Identity | Rejection]]


def credential_header(policy: AuthPolicy) -> str:
    """The request header that carries the credential of ``policy``."""
    if isinstance(policy, BasicAuth):
        return "Authorization"
    return policy.header


def _credential_headers(header: str) -> tuple[str, ...]:
    """``Authorization`` and the policy's own credential header, if that is another one."""
    return (CREDENTIAL_HEADER,) if header.lower() == CREDENTIAL_HEADER.lower() else (CREDENTIAL_HEADER, header)


class AuthStage:
    def __init__(
        self,
        *,
        check: Check,
        deps: StageDeps,
        remove: tuple[str, ...] = IDENTITY_HEADERS,
        credential_headers: tuple[str, ...] = (CREDENTIAL_HEADER,),
    ) -> None:
        self._check = check
        self._deps = deps
        self._remove = remove  # client-sent headers never forwarded: identity, mapped claims, a hidden credential
        self._credential_headers = credential_headers  # each may come once (400 ambiguous_credentials)

    @classmethod
    def from_policy(cls, policy: AuthPolicy, deps: StageDeps) -> AuthStage:
        """Raises ``PolicyError`` when the policy cannot work (e.g. ``public_key`` is not a PEM public key)."""
        remove: tuple[str, ...] = IDENTITY_HEADERS
        credentials = _credential_headers(credential_header(policy))
        if isinstance(policy, IntrospectionAuth):
            remove += tuple(header for header, _ in policy.claims_to_headers)
        if policy.hide_credentials:
            remove += (credential_header(policy),)
        if isinstance(policy, JwtAuth):
            discovery = (
                DiscoveryCache(http=deps.http, clock=deps.clock, tracer=deps.tracer) if policy.discovery else None
            )
            verifier = JwtVerifier(policy, jwks=deps.jwks, clock=deps.clock, discovery=discovery)

            async def check_jwt(headers: Mapping[str, str]) -> Identity | Rejection:
                return await verifier.check(headers.get(verifier.header))

            return cls(check=check_jwt, deps=deps, remove=remove, credential_headers=credentials)
        if isinstance(policy, ApiKeyAuth):
            api_keys = ApiKeyAuthenticator(policy, consumers=deps.consumers)

            async def check_api_key(headers: Mapping[str, str]) -> Identity | Rejection:
                return api_keys.check(headers)

            return cls(check=check_api_key, deps=deps, remove=remove, credential_headers=credentials)
        if isinstance(policy, BasicAuth):
            basic = BasicAuthenticator(policy, consumers=deps.consumers, verified=deps.verified_passwords)
            return cls(check=basic.check, deps=deps, remove=remove, credential_headers=credentials)
        if isinstance(policy, IntrospectionAuth):
            introspector = Introspector(
                policy,
                http=deps.http,
                clock=deps.clock,
                service=deps.service,
                redis=deps.redis,
                redis_timeout=deps.redis_timeout,
                tracer=deps.tracer,
            )
            return cls(check=introspector.check, deps=deps, remove=remove, credential_headers=credentials)
        raise TypeError(f"unknown auth policy {type(policy).__name__}")

    async def __call__(self, ctx: RequestContext, request: Inbound, call_next: Next) -> Answer:
        # Two credentials: this stage would verify one while the upstream might read the other.
        require_single_credentials(request.headers, self._credential_headers)
        outcome = await self._check(request.headers)
        if isinstance(outcome, Rejection):
            self._deps.metrics.auth_rejected.labels(self._deps.service, outcome.reason).inc()
            raise outcome.error()
        identity_headers: tuple[tuple[str, str], ...] = ((outcome.header, outcome.name), *outcome.extra)
        if outcome.scopes:
            identity_headers += ((SCOPES_HEADER, " ".join(sorted(outcome.scopes))),)
        edits = HeaderEdits(remove=self._remove, set=identity_headers)
        return await call_next(ctx.replace(consumer=outcome.name).with_upstream(edits))
