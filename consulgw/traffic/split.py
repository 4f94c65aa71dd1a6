"""The ``split`` step: which subset a request goes to (canary and A/B releases).

Match rules are tried in order; the first whose every condition holds sends the request to its subset. Otherwise
the weights decide, by a hash of the request's key (``hash``): a weighted rendezvous over the subset names
(:func:`~consulgw.upstream.balancer.rendezvous_choice`), so a client keeps its subset across requests and across
gateway processes with no shared state, and a weight change moves only the clients whose subset lost share (90/10
-> 50/50 moves clients from the first to the second, never back). ``hash: none`` draws per request instead.

``hash: cookie`` keys by the ``gw_split`` cookie; a request without one gets a fresh random id, is assigned by it,
and the answer sets the cookie (every answer, errors included, so a client holds one id from its first request).
A request without the configured consumer or header is keyed by its client IP.

The chosen subset becomes the request's :class:`~consulgw.pipeline.target.Target` (its pool and its name as label),
so retries, breakers and the balancer work inside it. An empty or wholly unhealthy subset falls back to
``default`` (counted) or, with ``on_empty: fail``, is answered 503.
"""

from __future__ import annotations

import random
import urllib.parse
from dataclasses import dataclass

from consulgw.errors import NoHealthyUpstream
from consulgw.metrics import GatewayMetrics
from consulgw.pipeline.answer import Answer
from consulgw.pipeline.chain import Next
from consulgw.pipeline.context import HeaderEdits, Inbound, RequestContext
from consulgw.pipeline.target import Target
from consulgw.policy.model import SPLIT_COOKIE, SplitMatch, SplitPolicy
from consulgw.traffic.cookies import request_cookie, set_cookie
from consulgw.traffic.keys import request_key
from consulgw.traffic.subsets import SubsetPools, usable
from consulgw.upstream.balancer import rendezvous_choice, stable_hash

SUBSET_HEADER = "X-Gateway-Subset"
SPLIT_COOKIE_MAX_AGE = 365 * 24 * 3600.0


def matches(rule: SplitMatch, ctx: RequestContext, request: Inbound) -> bool:
    """Does the request meet every condition of ``rule``?"""
    headers = request.headers
    for name, values in rule.headers:
        if headers.get(name) not in values:
            return False
    if rule.cookies:
        cookies = headers.getall("Cookie", ())
        for name, values in rule.cookies:
            if request_cookie(cookies, name) not in values:
                return False
    if rule.query:
        query = urllib.parse.parse_qs(request.query_string, keep_blank_values=True)
        for name, values in rule.query:
            if not any(value in values for value in query.get(name, ())):
                return False
    return not rule.consumers or ctx.consumer in rule.consumers


@dataclass(frozen=True, slots=True)
class _Choice:
    subset: str
    by: str  # match, weight, default
    new_id: str | None = None  # a gw_split id made for this request


class SplitStep:
    """Built once per (service, policy); reads the subsets' pools per request."""

    def __init__(
        self,
        *,
        service: str,
        policy: SplitPolicy,
        subsets: SubsetPools,
        rng: random.Random,
        metrics: GatewayMetrics,
    ) -> None:
        self._service = service
        self._policy = policy
        self._subsets = subsets
        self._rng = rng
        self._metrics = metrics
        self._choices = tuple((name, stable_hash(name), weight) for name, weight in policy.weights)
        self._total = sum(weight for _, weight in policy.weights)
        self._cookie_hash = policy.hash is not None and policy.hash.kind == "cookie"
        names = {policy.default, *(name for name, _ in policy.weights), *(rule.to for rule in policy.match)}
        self._subset_edits = {name: HeaderEdits(set=((SUBSET_HEADER, name),)) for name in names}

    async def __call__(self, ctx: RequestContext, request: Inbound, call_next: Next) -> Answer:
        policy = self._policy
        choice = self._choose(ctx, request)
        name = choice.subset
        pool = self._subsets.pool(name)
        by = choice.by
        if not usable(pool):
            if policy.on_empty == "fail":
                raise self._empty(name)
            if name != policy.default:
                self._metrics.count(self._metrics.split_fallback, self._service, name)
                name, by = policy.default, "fallback"
                pool = self._subsets.pool(name)
            if pool is None or not usable(pool):
                raise self._empty(name)
        assert pool is not None
        metrics = self._metrics
        metrics.count(metrics.split_requests, self._service, name, by)
        edits = self._subset_edits.get(name) if policy.response_header else None
        if choice.new_id is not None:
            cookie = HeaderEdits(
                add=(("Set-Cookie", set_cookie(SPLIT_COOKIE, choice.new_id, max_age=SPLIT_COOKIE_MAX_AGE)),)
            )
            edits = cookie if edits is None else edits.merged(cookie)
        previous = ctx.target
        target = Target(pool=pool, label=name, key=previous.key if previous is not None else None)
        if edits is None:
            return await call_next(ctx.replace(target=target))
        return await call_next(ctx.replace(target=target, response_edits=ctx.response_edits.merged(edits)))

    def _empty(self, name: str) -> NoHealthyUpstream:
        headers = {SUBSET_HEADER: name} if self._policy.response_header else None
        return NoHealthyUpstream(f"subset {name!r} of {self._service} has no healthy instance", headers=headers)

    def _choose(self, ctx: RequestContext, request: Inbound) -> _Choice:
        policy = self._policy
        for rule in policy.match:
            if matches(rule, ctx, request):
                return _Choice(rule.to, "match")
        if self._total <= 0:
            return _Choice(policy.default, "default")
        key = policy.hash
        if key is None:  # hash: none -- a fresh draw per request
            point = self._rng.random() * self._total
            for name, _, weight in self._choices:
                point -= weight
                if point < 0 and weight > 0:
                    return _Choice(name, "weight")
            return _Choice(policy.default, "default")  # pragma: no cover - float edge
        value = request_key(key, ctx, request)
        new_id: str | None = None
        if value is None:
            if self._cookie_hash:
                value = new_id = f"{self._rng.getrandbits(64):016x}"
            else:
                value = ctx.client_ip
        chosen = rendezvous_choice(f"{self._service}\x00{value}", self._choices)
        return _Choice(chosen if chosen is not None else policy.default, "weight", new_id)
