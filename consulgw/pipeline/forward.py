"""The terminal step: send the request to an instance of ``ctx.target`` through the transport, with retries.

It picks once per attempt (the target's preferred instance first, then the balancer, skipping instances already
tried and those whose breaker is open), sends through the :class:`~consulgw.upstream.transport.UpstreamTransport`,
records the outcome in the instance's breaker and returns an :class:`~consulgw.pipeline.answer.Answer` whose body is
the spool the upstream's answer streams into. It never writes to the client.

Request bodies are the client's bytes, never decoded (a gzip body stays gzip), framed as the client framed them
(``Content-Length`` or chunked). Unless the policy says ``buffering.request: false``, the whole body is received
before the first attempt (in memory up to ``buffer_limit``, then in a temporary file up to ``request_buffer``; a
longer one streams on from there), so a client that sends slowly never holds an upstream connection; a body kept in
memory can also be sent again on a retry. A client that stalls or trickles gets ``408`` (:class:`~consulgw.pipeline.body.TimedBody`).
``Expect: 100-continue`` is answered to the client here, once every step before has let the request through, just
before the body is read.

Retries (policy ``retries``) go to another instance and only for idempotent methods: after a connect failure (no
byte reached the instance), and, when the body is replayable, after a reset, a timeout or a listed status.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable

from multidict import CIMultiDict

from consulgw.errors import CircuitOpen, NoHealthyUpstream, UpstreamError
from consulgw.metrics import GatewayMetrics
from consulgw.model.http import IDEMPOTENT_METHODS, REQUEST_ID_HEADER
from consulgw.model.snapshot import Instance
from consulgw.pipeline.answer import Answer
from consulgw.pipeline.body import TimedBody
from consulgw.pipeline.context import Inbound, RequestContext
from consulgw.pipeline.stages.body_limit import too_large
from consulgw.pipeline.target import Target
from consulgw.policy.model import Fallback, ServicePolicy
from consulgw.tracing.api import NO_TRACER, Tracer
from consulgw.upstream.breaker import BreakerBoard
from consulgw.upstream.connections import Endpoint
from consulgw.upstream.headers import end_to_end, strip_hop_by_hop
from consulgw.upstream.pool import ServicePool
from consulgw.upstream.spool import Spool
from consulgw.upstream.transport import (
    UpstreamRequest,
    UpstreamResponse,
    UpstreamTimeouts,
    UpstreamTransport,
    translate,
)

SendContinue = Callable[[Inbound], Awaitable[None]]


class Forwarder:
    """One service's terminal, built once per (service, policy) with the process-wide collaborators."""

    def __init__(
        self,
        *,
        service: str,
        policy: ServicePolicy,
        transport: UpstreamTransport,
        breakers: BreakerBoard,
        metrics: GatewayMetrics,
        send_continue: SendContinue,
        buffer_limit: int = 64 * 1024,
        request_buffer: int = 1024 * 1024 * 1024,
        body_timeout: float = 30.0,
        body_min_rate: int = 500,
        tracer: Tracer = NO_TRACER,
    ) -> None:
        self._service = service
        self._policy = policy
        self._transport = transport
        self._breakers = breakers
        self._metrics = metrics
        self._send_continue = send_continue
        self._buffer_limit = buffer_limit
        self._request_buffer = request_buffer if policy.buffer_request else 0
        self._body_timeout = body_timeout
        self._body_min_rate = body_min_rate
        self._timeouts = UpstreamTimeouts(connect=policy.timeouts.connect, read=policy.timeouts.read)
        self._retry_on = policy.retries.on
        self._extra_attempts = policy.retries.attempts
        breaker = policy.circuit_breaker
        self._failure_statuses = breaker.failure_statuses if breaker is not None else frozenset()
        self._uses_breaker = breaker is not None
        self._errors = metrics.upstream_errors
        self._retries = metrics.retries
        self._tracer = tracer  # one CLIENT span per attempt, and its traceparent (consulgw.tracing); no-op when off

    async def __call__(self, ctx: RequestContext) -> Answer:
        target = ctx.target
        if target is None:
            raise NoHealthyUpstream(f"no healthy instance of {ctx.service}")
        request = ctx.request
        method = request.method
        upgrade = _upgrade_token(request)
        headers = self._headers(ctx, request)
        body, length, replayable = await self._body(request) if ctx.body is None else _replaced(ctx.body)
        outgoing = UpstreamRequest(
            method=method, target=ctx.upstream_target, headers=headers, body=body, length=length, upgrade=upgrade
        )
        if not isinstance(body, Spool):
            return await self._send(ctx, target, outgoing, replayable)
        try:  # a buffered body: its temporary file goes once the upstream has answered (or nothing was sent)
            answer = await self._send(ctx, target, outgoing, replayable)
        except BaseException:
            body.close()
            raise
        if isinstance(answer.body, Spool):
            answer.body.add_done_callback(body.close)
        else:
            body.close()
        return answer

    async def _send(self, ctx: RequestContext, target: Target, outgoing: UpstreamRequest, replayable: bool) -> Answer:
        """Attempts on instances of ``target`` until one answers or the retry policy gives up."""
        upgrade = outgoing.upgrade
        attempts = 1 + (self._extra_attempts if outgoing.method in IDEMPOTENT_METHODS else 0)
        tried: set[str] = set()
        failures: list[str] = []
        service = self._service
        last_error: UpstreamError | None = None
        for attempt in range(attempts):
            instance = self._pick(ctx, target, tried)
            if instance is None:
                if last_error is not None:
                    break
                return self._no_instance(ctx, target)
            tried.add(instance.id)
            pool = target.pool
            pool.acquire(instance.id)
            call = self._tracer.attempt(service, outgoing.method, instance, ctx.upstream_target, attempt)
            try:
                response = await self._transport.send(
                    Endpoint(instance.scheme, instance.address, instance.port), call.request(outgoing), self._timeouts
                )
            except UpstreamError as exc:
                call.failed(exc.kind)
                pool.release(instance.id)
                self._breakers.record(pool.service, instance.id, ok=False)
                self._errors.labels(service, exc.kind).inc()
                failures.append(exc.kind)
                last_error = exc
                if _retryable(exc, self._retry_on, replayable) and attempt + 1 < attempts:
                    self._retries.labels(service).inc()
                    continue
                break
            except BaseException as exc:  # the client's body failed (too large, stalled, gone) or we were cancelled:
                call.failed(type(exc).__name__)
                pool.release(instance.id)  # not the instance's fault, so no breaker and no retry
                raise
            call.answered(response.status)
            status = response.status
            if pool.service == service:
                failed_status = status in self._failure_statuses
            else:  # a subset that is another service's pool: that service's breakers judge its instances
                failed_status = self._breakers.is_failure_status(pool.service, status)
            if (
                replayable
                and str(status) in self._retry_on
                and attempt + 1 < attempts
                and len(pool.members) > len(tried)  # another instance exists (picking has side effects)
            ):
                self._breakers.record(pool.service, instance.id, ok=not failed_status)
                response.body.close()
                pool.release(instance.id)
                self._errors.labels(service, "status").inc()
                self._retries.labels(service).inc()
                failures.append(str(status))
                continue
            if upgrade is None and status == 101:  # an upgrade nobody asked for (RFC 9110 section 15.2.2)
                self._breakers.record(pool.service, instance.id, ok=not failed_status)
                response.body.close()
                if response.tunnel is not None:
                    response.tunnel.close()
                pool.release(instance.id)
                self._errors.labels(service, "protocol").inc()
                unasked = UpstreamError(f"{instance.endpoint} switched protocols unasked", kind="protocol")
                unasked.attempts, unasked.failures = attempt + 1, (*failures, "protocol")
                raise unasked
            answer = _answer(response, ctx, instance, attempt + 1, tuple(failures))
            if response.tunnel is not None:
                self._breakers.record(pool.service, instance.id, ok=not failed_status)
                answer.tunnel = response.tunnel  # the in-flight count is released when the tunnel ends
                pool.release(instance.id)
            else:  # judged when the body has ended: one that breaks off is the instance's failure too
                response.body.add_done_callback(
                    functools.partial(self._body_ended, pool, instance, response.body, failed_status)
                )
            return answer
        assert last_error is not None
        last_error.attempts, last_error.failures = len(tried), tuple(failures)
        raise last_error

    def _body_ended(self, pool: ServicePool, instance: Instance, body: Spool, failed_status: bool) -> None:
        """The upstream finished its answer's body, broke it off, or the client went away first (``close``): the
        in-flight count goes, and the attempt is recorded in the instance's breaker now, not at the head, so a body
        that breaks off (reset, timeout, invalid framing) counts as the failure it is, in the breaker and in
        ``consulgw_upstream_errors_total``."""
        pool.release(instance.id)
        error = body.error
        if error is None:
            self._breakers.record(pool.service, instance.id, ok=not failed_status)
            return
        self._errors.labels(self._service, translate(error, instance.endpoint).kind).inc()
        self._breakers.record(pool.service, instance.id, ok=False)

    # -- request side ----------------------------------------------------------------------------------------------

    def _headers(self, ctx: RequestContext, request: Inbound) -> list[tuple[str, str]]:
        headers = end_to_end(request.headers, drop=ctx.drop)
        headers.popall("Content-Length", None)  # the transport frames the body
        for name, value in ctx.forwarded:
            headers[name] = value
        headers[REQUEST_ID_HEADER] = ctx.request_id
        if ctx.upstream_edits:
            ctx.upstream_edits.apply(headers)
        return list(headers.items())

    async def _body(self, request: Inbound) -> tuple[bytes | AsyncIterator[bytes] | None, int | None, bool]:
        """The body to send, its declared length, and whether it can be sent again (for retries)."""
        if not request.body_exists:  # none, or an explicit "Content-Length: 0", which is passed on as sent
            return (b"" if request.content_length == 0 else None), None, True
        if request.headers.get("Expect", "").lower() == "100-continue":
            await self._send_continue(request)  # every step passed: now invite the client to send its body
        length = request.content_length
        limit = self._policy.max_body_bytes
        if length is not None and limit is not None and length > limit:  # BodyLimitStage refuses this first
            raise too_large(limit, length)
        reader = TimedBody(request.content, self._body_timeout, self._body_min_rate, limit)
        if length is not None and length <= self._buffer_limit:
            return await reader.exactly(length), length, True
        if self._request_buffer <= 0:
            return reader.stream(), length, False
        spool = Spool(memory_limit=self._buffer_limit, file_limit=self._request_buffer)
        try:
            while spool.total < self._request_buffer:
                chunk = await reader.next()
                if not chunk:
                    spool.feed_eof()
                    return spool, length, False
                spool.feed(chunk)
        except BaseException:
            spool.close()
            raise
        return _then(spool, reader.stream()), length, False  # too long to hold: what we have, then the rest as it comes

    # -- choosing an instance --------------------------------------------------------------------------------------

    def _pick(self, ctx: RequestContext, target: Target, tried: set[str]) -> Instance | None:
        pool = target.pool
        exclude = frozenset(tried) if tried else frozenset()
        available = self._availability(pool.service)
        if target.prefer is not None and target.prefer not in tried:
            preferred = pool.pinnable(target.prefer)
            if preferred is not None and (available is None or available(preferred)):
                return preferred
        return pool.pick(target.key if target.key is not None else ctx.client_ip, exclude=exclude, available=available)

    def _availability(self, service: str) -> Callable[[Instance], bool] | None:
        """The breaker check of the pool's service: this one's, or another service's when a subset is that
        service's pool (its breakers and policy, as for its own routes)."""
        if service == self._service:
            return self._available if self._uses_breaker else None
        if self._breakers.policy(service) is None:
            return None
        allow = self._breakers.allow
        return lambda instance: allow(service, instance.id)

    def _available(self, instance: Instance) -> bool:
        return self._breakers.allow(self._service, instance.id)

    def _no_instance(self, ctx: RequestContext, target: Target) -> Answer:
        if target.pool.members:
            breaker = self._policy.circuit_breaker
            if breaker is not None and breaker.fallback is not None:
                return _fallback_answer(breaker.fallback, ctx)
            raise CircuitOpen(f"every instance of {self._service} has an open circuit breaker")
        raise NoHealthyUpstream(f"no healthy instance of {self._service}")


def _answer(
    response: UpstreamResponse, ctx: RequestContext, instance: Instance, attempts: int, failures: tuple[str, ...]
) -> Answer:
    headers: CIMultiDict[str] = CIMultiDict(response.headers)
    upgrade = headers.get("Upgrade") if response.tunnel is not None else None
    strip_hop_by_hop(headers)
    if upgrade is not None:
        headers["Connection"] = "Upgrade"
        headers["Upgrade"] = upgrade
    spool = response.body
    whole = spool.whole()
    length = _content_length(headers) if whole is None else None
    return Answer(
        status=response.status,
        reason=response.reason,
        headers=headers,
        body=whole if whole is not None else spool,
        length=length,
        edits=ctx.response_edits,
        instance=instance.id,
        attempts=attempts,
        failures=failures,
    )


def _content_length(headers: CIMultiDict[str]) -> int | None:
    value = headers.get("Content-Length")
    if value is None or not value.isdigit():
        return None
    return int(value)


def _retryable(exc: UpstreamError, retry_on: frozenset[str], replayable: bool) -> bool:
    """May this failed attempt be repeated on another instance?"""
    if exc.connect_failed:
        return "connect_failure" in retry_on
    if not replayable:
        return False
    if exc.kind == "reset":  # closed before any response byte: the request may not have been processed
        return "connect_failure" in retry_on
    return exc.kind == "timeout" and "timeout" in retry_on


def _upgrade_token(request: Inbound) -> str | None:
    """The protocol the client asks to switch to (``Connection: upgrade`` with ``Upgrade``), if any."""
    upgrade = request.headers.get("Upgrade")
    if upgrade is None:
        return None
    connection = request.headers.get("Connection", "")
    if "upgrade" not in (token.strip().lower() for token in connection.split(",")):
        return None
    return upgrade


async def _then(first: Spool, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        async for chunk in first:
            yield chunk
    finally:
        first.close()
    async for chunk in rest:
        yield chunk


def _replaced(body: bytes | AsyncIterable[bytes]) -> tuple[bytes | AsyncIterable[bytes], int | None, bool]:
    """A body a step put in ``ctx.body``: bytes (sent with their length, replayable) or a stream (chunked, once)."""
    if isinstance(body, bytes):
        return body, len(body), True
    return body, None, False


def _fallback_answer(fallback: Fallback, ctx: RequestContext) -> Answer:
    headers: CIMultiDict[str] = CIMultiDict(fallback.headers)
    headers["Content-Type"] = fallback.content_type
    return Answer(status=fallback.status, headers=headers, body=fallback.body.encode(), edits=ctx.response_edits)


__all__ = ["Forwarder", "SendContinue", "Spool"]
