"""OAuth 2.0 token introspection (RFC 7662) for ``IntrospectionAuth`` policies.

Per request:

1. The token: ``Authorization: Bearer <token>`` (scheme case-insensitive); with a custom ``header`` the value may
   also be the bare token. RFC 6750 ``b64token`` syntax, at most 16 KiB; anything else is refused without asking
   the authorization server. No token: 401 ``Bearer realm="consulgw"`` (no error code, RFC 6750 section 3.1).
2. The verdict, from the first of: this stage's memory cache, the shared Redis cache (``"cache": "redis"``), the
   authorization server. Concurrent requests with the same token share one call (single-flight): the call runs
   in its own task, so a client that disconnects does not cancel it for the others.
3. The call: ``POST endpoint`` (or the ``introspection_endpoint`` of the ``discovery`` metadata, see
   ``consulgw.auth.discovery``) with ``token`` and ``token_type_hint`` form-encoded, authenticated as the client by
   HTTP Basic (``client_secret_basic``: id and secret form-urlencoded first, RFC 6749 section 2.3.1) or in the
   form (``client_secret_post``), over the server's aiohttp session, within the policy's ``timeout``, no
   redirects, body at most 64 KiB (``consulgw.auth.fetch``).
4. The answer: a JSON object whose ``active`` is ``true`` passes on to the claim checks; ``false`` is an inactive
   token (401 ``invalid_token``). A timeout, a connection error, any status but 200, a body that is not a JSON
   object, a missing or non-boolean ``active``, or discovery metadata that never loaded: 503 ``auth_unavailable``
   -- never a 401, because nothing is known about the token (clients log users out on 401; APISIX #9288).
5. Claim checks on every request, cached or not, against the injected clock: ``exp`` and ``nbf`` when present
   (with ``leeway``), ``iss`` equal to ``issuer`` and ``aud`` containing one ``audience`` when configured (then the
   claim is required), scopes (``scope``/``scp``/``scopes``, ``consulgw.auth.claims``) against
   ``required_scopes`` (403 ``insufficient_scope``). The identity: ``sub`` (else ``username``) becomes
   ``X-User-ID``, ``client_id`` becomes ``X-Consumer-ID``; one of them must be there. Both must be printable
   ASCII of at most 1024 characters. ``claims_to_headers`` copies string, number and boolean claims the same way;
   a claim that is missing, structured, not printable ASCII or longer than 1024 characters is left out (never
   truncated: a cut identity could name someone else).

Caching (the cache key is an HMAC-SHA256 of the token under a key derived from the endpoint, the client
credentials and the claim names kept; the raw token is never stored or logged):

- Positive answers until ``min(exp, now + cache_ttl)``; inactive answers for ``negative_cache_ttl``; failures are
  never cached. ``cache_ttl`` is the revocation delay: a token revoked at the server is still accepted for at most
  that long. Only the claims the checks and ``claims_to_headers`` read are kept; an answer whose kept claims exceed
  8 KiB is used but not cached.
- Memory: a per-stage LRU of ``cache_max_entries`` (a policy edit builds a new stage, so nothing is trusted across
  policies).
- Redis: ``consulgw:introspection:<key>`` with a millisecond expiry, the value signed with the same derived key (a
  process that can write Redis but does not know the client secret cannot mint identities). Every Redis call is
  bounded by ``StageDeps.redis_timeout``; on any Redis error the request goes to the authorization server as if
  the cache were empty, Redis is skipped for a second, and ``introspection_cache_unavailable`` is logged at most
  every ``_LOG_INTERVAL`` seconds. The cache never fails a request. Without a configured Redis the memory cache is
  used alone (logged once when the stage is built).

Failures are logged as ``introspection_failed`` (URL without query, our reason, never the token or secret), at most
once per ``_LOG_INTERVAL`` with the count of the others. Rejections are counted by the auth stage in
``consulgw_auth_rejected_total{reason}`` (``inactive_token``, ``auth_unavailable``, ...).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from redis.exceptions import RedisError

from consulgw.auth.claims import audiences, number, token_scopes
from consulgw.auth.discovery import DiscoveryCache, discovery_issuer
from consulgw.auth.fetch import FetchFailed, fetch_json
from consulgw.auth.outcome import (
    CONSUMER_ID_HEADER,
    USER_ID_HEADER,
    Identity,
    Rejection,
    RejectReason,
    insufficient_scope,
    is_safe_header_value,
    quoted,
)
from consulgw.clock import Clock
from consulgw.policy.model import IntrospectionAuth
from consulgw.redisclient import RedisClient
from consulgw.tracing.api import NO_TRACER, Tracer

log = structlog.get_logger("consulgw.auth")

REALM = "consulgw"
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_MAX_TOKEN = 16 * 1024
_MAX_ANSWER_BYTES = 64 * 1024
_MAX_CACHED_CLAIMS_BYTES = 8 * 1024
_MAX_IDENTITY_CHARS = 1024
_LOG_INTERVAL = 10.0
_REDIS_RETRY = 1.0
REDIS_PREFIX = "consulgw:introspection:"
# What the checks read; claims_to_headers adds its claim names.
_CHECKED_CLAIMS = ("exp", "nbf", "iss", "aud", "sub", "username", "client_id", "scope", "scp", "scopes")


# -- verdicts -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Active:
    claims: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class _Inactive:
    pass


@dataclass(frozen=True, slots=True)
class _Unavailable:
    reason: str  # for the log, never shown to clients


_Verdict = _Active | _Inactive | _Unavailable


def bearer_token(value: str | None, *, bare_allowed: bool) -> str | None:
    """The token in a header value ("" when there is none at all), or None when it is malformed."""
    if value is None or not value.strip():
        return ""
    value = value.strip()
    scheme, _, rest = value.partition(" ")
    if scheme.lower() == "bearer":
        token = rest.strip()
    elif bare_allowed:
        token = value
    else:
        return None
    if not token or len(token) > _MAX_TOKEN or _B64TOKEN.fullmatch(token) is None:
        return None
    return token


def interpret(answer: object) -> _Verdict:
    """RFC 7662 section 2.2: only a JSON object with ``"active": true`` is an active token."""
    if not isinstance(answer, Mapping):
        return _Unavailable("the answer is not a JSON object")
    active = answer.get("active")
    if active is True:
        return _Active(answer)
    if active is False:
        return _Inactive()
    return _Unavailable('the answer has no boolean "active"')


class _Throttled:
    """A warning logged at most once per interval, with how many were left out."""

    def __init__(self, event: str, clock: Clock) -> None:
        self._event = event
        self._clock = clock
        self._last: float | None = None
        self._suppressed = 0

    def warn(self, **fields: object) -> None:
        now = self._clock.monotonic()
        if self._last is not None and now - self._last < _LOG_INTERVAL:
            self._suppressed += 1
            return
        log.warning(self._event, suppressed=self._suppressed, **fields)
        self._last = now
        self._suppressed = 0


class _Memory:
    """A bounded LRU of verdicts by cache key, each with its monotonic expiry."""

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._entries: OrderedDict[str, tuple[float, _Active | _Inactive]] = OrderedDict()

    def get(self, key: str, now: float) -> _Active | _Inactive | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now >= entry[0]:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: str, until: float, verdict: _Active | _Inactive) -> None:
        self._entries[key] = (until, verdict)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)


class Introspector:
    """Checks bearer tokens for one ``IntrospectionAuth`` policy. Built once per policy; shared by all requests."""

    def __init__(
        self,
        policy: IntrospectionAuth,
        *,
        http: aiohttp.ClientSession,
        clock: Clock,
        service: str,
        redis: RedisClient | None = None,
        redis_timeout: float = 0.25,
        discovery: DiscoveryCache | None = None,
        tracer: Tracer = NO_TRACER,
    ) -> None:
        self._policy = policy
        self._http = http
        self._clock = clock
        self._redis = redis if policy.cache == "redis" else None
        self._redis_timeout = redis_timeout
        self._redis_skip_until = 0.0
        self._tracer = tracer
        self._discovery = discovery or DiscoveryCache(http=http, clock=clock, timeout=policy.timeout, tracer=tracer)
        self._bare_allowed = policy.header.lower() != "authorization"
        self._kept = frozenset(_CHECKED_CLAIMS) | {claim for _, claim in policy.claims_to_headers}
        namespace = "\0".join(
            (
                "consulgw introspection v1",
                policy.endpoint or policy.discovery or "",
                policy.client_id,
                policy.client_secret,
                ",".join(sorted(self._kept)),
            )
        )
        self._namespace = hashlib.sha256(namespace.encode("utf-8", "surrogatepass")).digest()
        self._memory = _Memory(policy.cache_max_entries)
        self._inflight: dict[str, asyncio.Task[_Verdict]] = {}
        self._idp_failures = _Throttled("introspection_failed", clock)
        self._redis_failures = _Throttled("introspection_cache_unavailable", clock)
        if policy.cache == "redis" and redis is None:
            log.warning(
                "introspection_cache_backend_missing",
                service=service,
                hint="cache redis needs a Redis URL (--redis or CONSULGW_REDIS_URL); using this process's memory",
            )
        self._service = service

    @property
    def header(self) -> str:
        return self._policy.header

    # -- the request path -----------------------------------------------------------------------------------------

    async def check(self, headers: Mapping[str, str]) -> Identity | Rejection:
        token = bearer_token(headers.get(self._policy.header), bare_allowed=self._bare_allowed)
        if token == "":
            return Rejection(
                reason="missing_credentials", message="a bearer token is required", challenge=f'Bearer realm="{REALM}"'
            )
        if token is None:
            return self._reject("malformed_credentials", "expected a bearer token")
        verdict = await self._verdict(token)
        if isinstance(verdict, _Unavailable):
            return Rejection(
                reason="auth_unavailable",
                message="the identity provider could not check the token; try again shortly",
                challenge="",
                unavailable=True,
            )
        if isinstance(verdict, _Inactive):
            return self._reject("inactive_token", "the token is not active")
        return self._identity(verdict.claims)

    def _reject(self, reason: RejectReason, description: str) -> Rejection:
        return Rejection(
            reason=reason,
            message=f"invalid token: {description}",
            challenge=f'Bearer realm="{REALM}", error="invalid_token", error_description={quoted(description)}',
        )

    def _identity(self, claims: Mapping[str, Any]) -> Identity | Rejection:
        policy = self._policy
        now = self._clock.time()
        if "exp" in claims:
            exp = number(claims["exp"])
            if exp is None:
                return self._reject("invalid_claims", "exp must be a number")
            if now >= exp + policy.leeway:
                return self._reject("expired", "the token has expired")
        if "nbf" in claims:
            nbf = number(claims["nbf"])
            if nbf is None:
                return self._reject("invalid_claims", "nbf must be a number")
            if now + policy.leeway < nbf:
                return self._reject("not_yet_valid", "the token is not valid yet")
        if policy.issuer is not None and claims.get("iss") != policy.issuer:
            return self._reject("invalid_claims", "wrong issuer")
        if policy.audience:
            granted = audiences(claims)
            if granted is None or not set(granted) & set(policy.audience):
                return self._reject("invalid_claims", "wrong audience")
        subject = claims.get("sub")
        if subject is None:
            subject = claims.get("username")
        client_id = claims.get("client_id")
        for value in (subject, client_id):
            if value is not None and not _header_safe(value):
                return self._reject("invalid_claims", "sub, username and client_id must be printable ASCII strings")
        scopes = token_scopes(claims)
        if scopes is None:
            return self._reject("invalid_claims", "malformed scope claim")
        needed = " ".join(sorted(policy.required_scopes))
        refused = insufficient_scope(
            policy.required_scopes,
            scopes,
            challenge=f'Bearer realm="{REALM}", error="insufficient_scope", scope={quoted(needed)}',
            noun="token",
        )
        if refused is not None:
            return refused
        extra: list[tuple[str, str]] = []
        if subject is not None and client_id is not None:
            extra.append((CONSUMER_ID_HEADER, client_id))
        for header, claim in policy.claims_to_headers:
            rendered = _claim_value(claims.get(claim))
            if rendered is not None:
                extra.append((header, rendered))
        if isinstance(subject, str):
            return Identity(header=USER_ID_HEADER, name=subject, scopes=scopes, extra=tuple(extra))
        if isinstance(client_id, str):
            return Identity(header=CONSUMER_ID_HEADER, name=client_id, scopes=scopes, extra=tuple(extra))
        return self._reject("invalid_claims", "the token names neither a subject nor a client")

    # -- verdicts: memory, single-flight, Redis, the authorization server ----------------------------------------

    def cache_key(self, token: str) -> str:
        return hmac.new(self._namespace, token.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()

    async def _verdict(self, token: str) -> _Verdict:
        key = self.cache_key(token)
        cached = self._memory.get(key, self._clock.monotonic())
        if cached is not None:
            return cached
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._resolve(key, token), name="consulgw-introspection")
            self._inflight[key] = task
            task.add_done_callback(self._finished(key))
        return await asyncio.shield(task)

    def _finished(self, key: str) -> Callable[[asyncio.Task[_Verdict]], None]:
        def done(task: asyncio.Task[_Verdict]) -> None:
            if self._inflight.get(key) is task:
                del self._inflight[key]
            if not task.cancelled():
                task.exception()  # retrieved here, so an exception nobody awaited is not reported as lost

        return done

    async def _resolve(self, key: str, token: str) -> _Verdict:
        shared = await self._redis_get(key)
        if shared is not None:
            return shared
        verdict = await self._introspect(token)
        if isinstance(verdict, _Unavailable):
            return verdict
        ttl = self._ttl(verdict)
        if ttl > 0:
            if isinstance(verdict, _Active):
                verdict = _Active({k: v for k, v in verdict.claims.items() if k in self._kept})
                if len(_encode(verdict)) > _MAX_CACHED_CLAIMS_BYTES:
                    return verdict
            self._memory.put(key, self._clock.monotonic() + ttl, verdict)
            await self._redis_put(key, verdict, ttl)
        return verdict

    def _ttl(self, verdict: _Active | _Inactive) -> float:
        if isinstance(verdict, _Inactive):
            return self._policy.negative_cache_ttl
        ttl = self._policy.cache_ttl
        exp = number(verdict.claims.get("exp"))
        if exp is not None:
            ttl = min(ttl, exp - self._clock.time())
        return ttl

    async def _endpoint(self) -> str | None:
        if self._policy.endpoint is not None:
            return self._policy.endpoint
        url = self._policy.discovery or ""  # the parser requires one of endpoint and discovery
        issuer = discovery_issuer(url, self._policy.issuer) or ""
        metadata = await self._discovery.metadata(url, issuer=issuer, need="introspection_endpoint")
        return None if metadata is None else metadata.introspection_endpoint

    async def _introspect(self, token: str) -> _Verdict:
        policy = self._policy
        endpoint = await self._endpoint()
        if endpoint is None:
            return self._failed(policy.discovery or "", "no usable discovery metadata (see oidc_discovery_failed)")
        form = {"token": token}
        if policy.token_type_hint is not None:
            form["token_type_hint"] = policy.token_type_hint
        headers: dict[str, str] = {}
        if policy.client_auth == "basic":
            pair = f"{urllib.parse.quote_plus(policy.client_id)}:{urllib.parse.quote_plus(policy.client_secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")
        else:
            form["client_id"] = policy.client_id
            form["client_secret"] = policy.client_secret
        try:
            answer = await fetch_json(
                self._http,
                endpoint,
                timeout=policy.timeout,
                max_bytes=_MAX_ANSWER_BYTES,
                form=form,
                headers=headers,
                tracer=self._tracer,
                purpose="introspection",
            )
        except FetchFailed as exc:
            return self._failed(endpoint, str(exc))
        verdict = interpret(answer)
        if isinstance(verdict, _Unavailable):
            return self._failed(endpoint, verdict.reason)
        return verdict

    def _failed(self, url: str, reason: str) -> _Unavailable:
        shown = urllib.parse.urlsplit(url)._replace(query="", fragment="").geturl()
        self._idp_failures.warn(service=self._service, url=shown, error=reason)
        return _Unavailable(reason)

    # -- Redis ------------------------------------------------------------------------------------------------------

    def _sign(self, payload: bytes) -> str:
        return hmac.new(self._namespace, b"value\0" + payload, hashlib.sha256).hexdigest()

    async def _redis_get(self, key: str) -> _Active | _Inactive | None:
        if self._redis is None or self._clock.monotonic() < self._redis_skip_until:
            return None
        try:
            with self._tracer.redis_call("GET"):
                async with asyncio.timeout(self._redis_timeout):
                    raw = await self._redis.get(REDIS_PREFIX + key)
        except (RedisError, OSError, TimeoutError) as exc:
            self._redis_failed(exc)
            return None
        if not isinstance(raw, bytes):
            return None
        verdict, until = _decode(raw, self._sign)
        if verdict is None:
            return None
        ttl = until - self._clock.time()
        if ttl <= 0:
            return None
        self._memory.put(key, self._clock.monotonic() + ttl, verdict)
        return verdict

    async def _redis_put(self, key: str, verdict: _Active | _Inactive, ttl: float) -> None:
        if self._redis is None or self._clock.monotonic() < self._redis_skip_until:
            return
        payload = _encode(verdict, until=self._clock.time() + ttl)
        value = payload + b"." + self._sign(payload).encode("ascii")
        try:
            with self._tracer.redis_call("SET"):
                async with asyncio.timeout(self._redis_timeout):
                    await self._redis.set(REDIS_PREFIX + key, value, px=max(1, int(ttl * 1000)))
        except (RedisError, OSError, TimeoutError) as exc:
            self._redis_failed(exc)

    def _redis_failed(self, exc: BaseException) -> None:
        self._redis_skip_until = self._clock.monotonic() + _REDIS_RETRY
        self._redis_failures.warn(service=self._service, error=type(exc).__name__)


def _header_safe(value: object) -> bool:
    return isinstance(value, str) and len(value) <= _MAX_IDENTITY_CHARS and is_safe_header_value(value)


def _claim_value(value: object) -> str | None:
    """A claim as a header value, or None when it cannot be one unchanged."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        finite = number(value)
        if finite is None:
            return None
        text = json.dumps(value)
        return text if len(text) <= _MAX_IDENTITY_CHARS else None
    if isinstance(value, str) and _header_safe(value):
        return value
    return None


def _encode(verdict: _Active | _Inactive, *, until: float = 0.0) -> bytes:
    body: dict[str, Any] = {"active": isinstance(verdict, _Active), "until": until}
    if isinstance(verdict, _Active):
        body["claims"] = dict(verdict.claims)
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode("utf-8")


def _decode(raw: bytes, sign: Callable[[bytes], str]) -> tuple[_Active | _Inactive | None, float]:
    """A cached value from Redis, when its signature holds and it is well-formed."""
    payload, dot, tag = raw.rpartition(b".")
    if not dot:
        return None, 0.0
    try:
        expected = sign(payload).encode("ascii")
        if not hmac.compare_digest(expected, tag):
            return None, 0.0
        body = json.loads(payload)
    except (ValueError, RecursionError):
        return None, 0.0
    if not isinstance(body, dict):
        return None, 0.0
    until = number(body.get("until"))
    if until is None:
        return None, 0.0
    if body.get("active") is False:
        return _Inactive(), until
    claims = body.get("claims")
    if body.get("active") is True and isinstance(claims, dict):
        return _Active(claims), until
    return None, 0.0
