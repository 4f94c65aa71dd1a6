"""The ``sticky`` step: a cookie pins a client to one instance (inside the split's subset, when there is a split).

The cookie value is opaque, ``<token>.<check>``: ``token`` is the first 16 hex digits of HMAC-SHA256(key, service,
instance id) and ``check`` 8 hex digits of HMAC-SHA256(key, service, token). No address or id leaks, every gateway
with the same key (``--sticky-key`` / ``CONSULGW_STICKY_KEY``) maps a cookie to the same instance without shared
state, and a value the gateway did not make (tampered, or another service's) is told apart from one whose instance
is gone: the first is simply re-picked (never an error), the second follows ``on_unavailable``.

Per request:

* a made cookie naming an instance of the target pool that can take it -- a member (passing or warning, weight
  > 0), or with ``keep_draining`` a healthy instance drained to weight 0 -- becomes ``Target.prefer``: the forwarder
  tries it first, if its breaker lets it, then picks as usual (``hit``);
* a made cookie whose instance is gone, critical, drained (without ``keep_draining``) or breaker-open: ``repick``
  lets the balancer choose (``repick``), ``fail`` answers 503 (``fail``);
* no cookie (``new``) or a tampered one (``tampered``): the balancer chooses.

When the answer came from another instance than the cookie named (a new client, a re-pick, a retry that moved),
the answer gets a new cookie -- a response edit, so it leaves through the response phase like every header.
"""

from __future__ import annotations

import functools
import hashlib
import hmac

from consulgw.errors import NoHealthyUpstream
from consulgw.metrics import GatewayMetrics
from consulgw.pipeline.answer import Answer
from consulgw.pipeline.chain import Next
from consulgw.pipeline.context import HeaderEdits, Inbound, RequestContext
from consulgw.pipeline.target import Target
from consulgw.policy.model import StickyPolicy
from consulgw.traffic.cookies import request_cookie, set_cookie
from consulgw.traffic.subsets import current_target
from consulgw.upstream.breaker import BreakerBoard
from consulgw.upstream.pool import ServicePool, UpstreamPools

_TOKEN_HEX = 16
_CHECK_HEX = 8


class StickyTokens:
    """Cookie values of one service's instances under one key (pure; memoised per instance id)."""

    def __init__(self, key: bytes, service: str) -> None:
        self._key = key
        self._service = service.encode("utf-8", "surrogateescape")
        self.token = functools.lru_cache(maxsize=4096)(self._token)
        # Cookie values seen recently: a returning client costs a dict lookup, not an HMAC (bounded; a flood of
        # forged values only evicts entries).
        self.authentic_token = functools.lru_cache(maxsize=4096)(self._authentic_token)

    def _token(self, instance_id: str) -> str:
        message = self._service + b"\x00" + instance_id.encode("utf-8", "surrogateescape")
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:_TOKEN_HEX]

    def _check(self, token: str) -> str:
        message = b"check\x00" + self._service + b"\x00" + token.encode("ascii")
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:_CHECK_HEX]

    def cookie_value(self, instance_id: str) -> str:
        token = self.token(instance_id)
        return f"{token}.{self._check(token)}"

    def _authentic_token(self, value: str) -> str | None:
        """The token of a cookie value this key made for this service, else None (tampered or foreign)."""
        token, sep, check = value.partition(".")
        if not sep or len(token) != _TOKEN_HEX or len(check) != _CHECK_HEX:
            return None
        try:
            expected = self._check(token)
        except UnicodeEncodeError:
            return None
        return token if hmac.compare_digest(expected, check) else None


class StickyStep:
    """Built once per (service, policy); reads the target pool and the breakers per request."""

    def __init__(
        self,
        *,
        service: str,
        policy: StickyPolicy,
        key: bytes,
        pools: UpstreamPools,
        breakers: BreakerBoard,
        metrics: GatewayMetrics,
    ) -> None:
        self._service = service
        self._policy = policy
        self._tokens = StickyTokens(key, service)
        self._pools = pools
        self._breakers = breakers
        self._metrics = metrics

    async def __call__(self, ctx: RequestContext, request: Inbound, call_next: Next) -> Answer:
        policy = self._policy
        target = current_target(ctx, self._pools)
        value = request_cookie(request.headers.getall("Cookie", ()), policy.cookie)
        pinned: str | None = None
        if not value:
            outcome = "new"
        else:
            token = self._tokens.authentic_token(value)
            if token is None:
                outcome = "tampered"
            else:
                pinned = self._resolve(token, target.pool)
                outcome = "hit" if pinned is not None else "repick"
                if pinned is None and policy.on_unavailable == "fail":
                    self._metrics.count(self._metrics.sticky, self._service, "fail")
                    raise NoHealthyUpstream(f"the instance this client is pinned to is unavailable ({self._service})")
        self._metrics.count(self._metrics.sticky, self._service, outcome)
        if pinned is not None:
            ctx = ctx.replace(target=_with_prefer(target, pinned))
        answer = await call_next(ctx)
        served = answer.instance
        if served is not None and served != pinned:
            cookie = set_cookie(
                policy.cookie,
                self._tokens.cookie_value(served),
                path=policy.path,
                max_age=policy.max_age,
                secure=policy.secure,
                http_only=policy.http_only,
                same_site=policy.same_site,
            )
            answer.edits = answer.edits.merged(HeaderEdits(add=(("Set-Cookie", cookie),)))
        return answer

    def _resolve(self, token: str, pool: ServicePool) -> str | None:
        """The id of the instance in ``pool`` that ``token`` names, if it may take this client now."""
        token_of = self._tokens.token
        for member in pool.members:
            if token_of(member.id) == token:
                return member.id if self._available(pool, member.id) else None
        if self._policy.keep_draining:
            for drained in pool.draining:
                if token_of(drained.id) == token:
                    return drained.id if self._available(pool, drained.id) else None
        return None

    def _available(self, pool: ServicePool, instance_id: str) -> bool:
        # The breaker's state, without claiming its half-open probe (the forwarder claims it when it sends).
        return self._breakers.state(pool.service, instance_id) != "open"


def _with_prefer(target: Target, instance_id: str) -> Target:
    return Target(pool=target.pool, prefer=instance_id, label=target.label, key=target.key)
