"""The authentication stage: verify the credential the policy asks for, then forward the trusted identity.

On success the upstream request gets ``X-Consumer-ID`` (API key / Basic: the consumer's name) or ``X-User-ID``
(JWT: ``sub``), and ``X-User-Scopes`` (space-separated, sorted; omitted when there are none). Client-sent copies of
all three are removed first (the proxy strips them too), so an upstream can trust them. ``ctx.consumer`` is set to
the same name, for rate limits keyed by consumer and for the access log.

On failure: ``Unauthorized`` (401) with a ``WWW-Authenticate`` challenge (``Bearer`` per RFC 6750, ``Basic`` per
RFC 7617, ``ApiKey header="..."``), or ``Forbidden`` (403, ``error="insufficient_scope"``), counted in
``consulgw_auth_rejected_total{reason}`` with the fixed reasons of ``consulgw.auth.outcome.RejectReason``.
The credential itself is forwarded unchanged (an upstream may want the JWT's other claims).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from consulgw.auth.apikey import ApiKeyAuthenticator
from consulgw.auth.basic import BasicAuthenticator
from consulgw.auth.jwt import JwtVerifier
from consulgw.auth.outcome import IDENTITY_HEADERS, SCOPES_HEADER, Identity, Rejection
from consulgw.pipeline.context import HeaderEdits, Next, RequestContext
from consulgw.pipeline.stages.deps import StageDeps
from consulgw.policy.model import ApiKeyAuth, AuthPolicy, BasicAuth, JwtAuth
from consulgw.upstream.headers import CREDENTIAL_HEADER, require_single_credentials

Check = Callable[[Mapping[str, str]], Awaitable[Identity | Rejection]]


def _credential_headers(header: str) -> tuple[str, ...]:
    """``Authorization`` and the policy's own credential header, if that is another one."""
    return (CREDENTIAL_HEADER,) if header.lower() == CREDENTIAL_HEADER.lower() else (CREDENTIAL_HEADER, header)


class AuthStage:
    def __init__(
        self, *, check: Check, deps: StageDeps, credential_headers: tuple[str, ...] = (CREDENTIAL_HEADER,)
    ) -> None:
        self._check = check
        self._deps = deps
        self._credential_headers = credential_headers  # each may come once (400 ambiguous_credentials)

    @classmethod
    def from_policy(cls, policy: AuthPolicy, deps: StageDeps) -> AuthStage:
        """Raises ``PolicyError`` when the policy cannot work (e.g. ``public_key`` is not a PEM public key)."""
        if isinstance(policy, JwtAuth):
            verifier = JwtVerifier(policy, jwks=deps.jwks, clock=deps.clock)

            async def check_jwt(headers: Mapping[str, str]) -> Identity | Rejection:
                return await verifier.check(headers.get(verifier.header))

            return cls(check=check_jwt, deps=deps, credential_headers=_credential_headers(verifier.header))
        if isinstance(policy, ApiKeyAuth):
            api_keys = ApiKeyAuthenticator(policy, consumers=deps.consumers)

            async def check_api_key(headers: Mapping[str, str]) -> Identity | Rejection:
                return api_keys.check(headers)

            return cls(check=check_api_key, deps=deps, credential_headers=_credential_headers(api_keys.header))
        if isinstance(policy, BasicAuth):
            basic = BasicAuthenticator(policy, consumers=deps.consumers, verified=deps.verified_passwords)
            return cls(check=basic.check, deps=deps)
        raise TypeError(f"unknown auth policy {type(policy).__name__}")

    async def __call__(self, ctx: RequestContext, request: web.BaseRequest, call_next: Next) -> web.StreamResponse:
        # Two credentials: this stage would verify one while the upstream might read the other.
        require_single_credentials(request.headers, self._credential_headers)
        outcome = await self._check(request.headers)
        if isinstance(outcome, Rejection):
            self._deps.metrics.auth_rejected.labels(self._deps.service, outcome.reason).inc()
            raise outcome.error()
        identity_headers: tuple[tuple[str, str], ...] = ((outcome.header, outcome.name),)
        if outcome.scopes:
            identity_headers += ((SCOPES_HEADER, " ".join(sorted(outcome.scopes))),)
        edits = HeaderEdits(remove=IDENTITY_HEADERS, set=identity_headers)
        return await call_next(ctx.replace(consumer=outcome.name).with_upstream(edits))
