"""A request's key for a hash (the hash balancer's ``lb.key``, a split's ``hash``): IP, consumer, header, cookie."""

from __future__ import annotations

from consulgw.model.balancing import HashKey
from consulgw.pipeline.context import Inbound, RequestContext
from consulgw.traffic.cookies import request_cookie


def request_key(key: HashKey, ctx: RequestContext, request: Inbound) -> str | None:
    """The value ``key`` names in this request, or None when the request does not carry it (no verified consumer,
    no such header or cookie, or an empty one)."""
    kind = key.kind
    if kind == "ip":
        return ctx.client_ip or None
    if kind == "consumer":
        return ctx.consumer or None
    if kind == "header":
        return request.headers.get(key.name) or None
    return request_cookie(request.headers.getall("Cookie", ()), key.name) or None
