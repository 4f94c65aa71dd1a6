"""The terminal stage: pick an instance, send the request upstream, stream the answer back.

Bodies are streamed both ways. Small bodies with a known length (up to ``buffer_limit``) are read in one go
instead, which is cheaper and makes the request replayable for retries; nothing is ever buffered without a bound.

Retries (policy ``retries``) go to another instance and only for idempotent methods: after a connect failure
(no byte reached the instance), and -- when the request body is replayable -- after a reset, a timeout or a
listed status. Every attempt is recorded by the instance's circuit breaker.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from consulgw.errors import CircuitOpen, NoHealthyUpstream, UpstreamError
from consulgw.metrics import GatewayMetrics
from consulgw.model.snapshot import Instance
from consulgw.pipeline.context import RequestContext
from consulgw.pipeline.stages.body_limit import LimitedBody, too_large
from consulgw.policy.model import IDEMPOTENT_METHODS, Fallback, ServicePolicy, Timeouts
from consulgw.upstream.breaker import BreakerBoard
from consulgw.upstream.headers import IDENTITY_HEADERS, end_to_end
from consulgw.upstream.pool import ServicePool
from consulgw.upstream.transport import upstream_errors

_CHUNK = 64 * 1024
# Headers aiohttp must compute itself for the WebSocket handshake to the upstream.
_WS_HANDSHAKE = ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions", "Sec-WebSocket-Protocol")


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """Where one request goes, resolved by the server from the active route table."""

    service: str
    policy: ServicePolicy
    pool: ServicePool
    path_qs: str  # the canonical path the route matched, after strip (consulgw.routing.path), plus "?query" as sent
    forwarded: tuple[tuple[str, str], ...]  # X-Forwarded-* for this request
    drop: tuple[str, ...] = IDENTITY_HEADERS  # client headers never forwarded (see client_headers_to_drop)


@dataclass(slots=True)
class Outcome:
    """Per-request facts the forwarder reports back for the request_completed line (owned by one request)."""

    instance: str | None = None
    attempts: int = 0
    bytes_sent: int = 0
    errors: list[str] = field(default_factory=list)


class Forwarder:
    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        breakers: BreakerBoard,
        metrics: GatewayMetrics,
        buffer_limit: int = 64 * 1024,
    ) -> None:
        self._session = session
        self._breakers = breakers
        self._metrics = metrics
        self._buffer_limit = buffer_limit
        self._log = structlog.get_logger("consulgw.forward")

    async def forward(
        self, ctx: RequestContext, request: web.BaseRequest, target: Target, outcome: Outcome
    ) -> web.StreamResponse:
        policy = target.policy
        headers = self._upstream_headers(ctx, request, target)
        if _is_websocket(request):
            return await self._websocket(ctx, request, target, headers, outcome)
        body, replayable = await self._request_body(request, policy)
        method = request.method
        idempotent = method in IDEMPOTENT_METHODS
        attempts = 1 + (policy.retries.attempts if idempotent else 0)
        retry_on = policy.retries.on
        timeout = _client_timeout(policy.timeouts)
        tried: set[str] = set()
        last_error: UpstreamError | None = None
        service = target.service
        for attempt in range(attempts):
            instance = self._pick(ctx, target, frozenset(tried))
            if instance is None:
                if last_error is not None:
                    raise last_error
                return self._no_instance(target)
            tried.add(instance.id)
            outcome.instance = instance.id
            outcome.attempts = attempt + 1
            url = URL(f"{instance.scheme}://{instance.endpoint}{target.path_qs}", encoded=True)
            target.pool.acquire(instance.id)
            try:
                with upstream_errors(instance.endpoint):
                    response = await self._session.request(
                        method,
                        url,
                        headers=headers,
                        data=body,
                        allow_redirects=False,
                        timeout=timeout,
                        compress=None,
                    )
            except UpstreamError as exc:
                target.pool.release(instance.id)
                if isinstance(body, LimitedBody) and body.exceeded:
                    raise body.error() from exc  # the client's fault, not the instance's: no breaker, no retry
                self._breakers.record(service, instance.id, ok=False)
                self._metrics.upstream_errors.labels(service, exc.kind).inc()
                outcome.errors.append(exc.kind)
                last_error = exc
                if _retryable(exc, retry_on, replayable) and attempt + 1 < attempts:
                    self._metrics.retries.labels(service).inc()
                    continue
                raise
            try:
                self._breakers.record(service, instance.id, ok=response.status not in _failure_statuses(policy))
                if (
                    replayable
                    and str(response.status) in retry_on
                    and attempt + 1 < attempts
                    and len(target.pool.members) > len(tried)  # another instance exists (picking has side effects)
                ):
                    self._metrics.upstream_errors.labels(service, "status").inc()
                    self._metrics.retries.labels(service).inc()
                    outcome.errors.append(str(response.status))
                    continue
                return await self._relay(ctx, request, response, outcome)
            finally:
                response.release()
                target.pool.release(instance.id)
        raise last_error or NoHealthyUpstream(f"no healthy instance of {service}")

    # -- request side -------------------------------------------------------------------------------------------

    def _upstream_headers(self, ctx: RequestContext, request: web.BaseRequest, target: Target) -> CIMultiDict[str]:
        headers = end_to_end(request.headers, drop=target.drop)
        for name, value in target.forwarded:
            headers[name] = value
        headers["X-Request-ID"] = ctx.request_id
        if ctx.upstream_edits:
            ctx.upstream_edits.apply(headers)
        return headers

    async def _request_body(self, request: web.BaseRequest, policy: ServicePolicy) -> tuple[object, bool]:
        """The body to send and whether it can be sent again (for retries)."""
        if not request.body_exists:
            return None, True
        if request.version >= (1, 1) and request.headers.get("Expect", "").lower() == "100-continue":
            # The request passed routing, auth and rate limits: now invite the client to send its body.
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        length = request.content_length
        limit = policy.max_body_bytes
        if length is not None:
            if limit is not None and length > limit:  # BodyLimitStage refuses this first; kept for direct callers
                raise too_large(limit, length)
            if length <= self._buffer_limit:
                return await request.read(), True
            return _stream(request.content), False
        if limit is not None:
            return LimitedBody(request.content, limit), False  # streamed; the chunk crossing the limit is never sent
        return _stream(request.content), False

    def _pick(self, ctx: RequestContext, target: Target, tried: frozenset[str]) -> Instance | None:
        if target.policy.circuit_breaker is None:  # no breaker: the balancer's fast path
            return target.pool.pick(ctx.client_ip, exclude=tried)
        service = target.service

        def available(instance: Instance) -> bool:
            return self._breakers.allow(service, instance.id)

        return target.pool.pick(ctx.client_ip, exclude=tried, available=available)

    def _no_instance(self, target: Target) -> web.StreamResponse:
        if target.pool.members:
            breaker = target.policy.circuit_breaker
            if breaker is not None and breaker.fallback is not None:
                return _fallback_response(breaker.fallback)
            raise CircuitOpen(f"every instance of {target.service} has an open circuit breaker")
        raise NoHealthyUpstream(f"no healthy instance of {target.service}")

    # -- response side ------------------------------------------------------------------------------------------

    async def _relay(
        self, ctx: RequestContext, request: web.BaseRequest, response: aiohttp.ClientResponse, outcome: Outcome
    ) -> web.StreamResponse:
        headers = end_to_end(response.headers)
        headers["X-Request-ID"] = ctx.request_id
        if ctx.response_edits:
            ctx.response_edits.apply(headers)
        length = response.content_length
        no_body = request.method == "HEAD" or response.status in (204, 304) or 100 <= response.status < 200
        absent = tuple(name for name in _SERVER_DEFAULTS if name not in headers)
        if no_body:
            out = _stream_response(response, headers, absent)
            await out.prepare(request)
            await out.write_eof()
            return out
        if length is not None and length <= self._buffer_limit:
            with upstream_errors(f"{outcome.instance}"):
                payload = await response.read()
            headers.pop("Content-Length", None)
            outcome.bytes_sent = len(payload)
            if not absent:
                return web.Response(status=response.status, reason=response.reason, headers=headers, body=payload)
            relayed = _RelayedResponse(status=response.status, reason=response.reason, headers=headers, body=payload)
            relayed.absent_headers = absent
            return relayed
        out = _stream_response(response, headers, absent)
        if length is not None:
            out.content_length = length
        await out.prepare(request)
        try:
            async for chunk in response.content.iter_chunked(_CHUNK):
                await out.write(chunk)
                outcome.bytes_sent += len(chunk)
        except (TimeoutError, aiohttp.ClientError) as exc:
            # Headers are gone already: the only honest signal left is to cut the client connection.
            outcome.errors.append("body_interrupted")
            self._log.warning("upstream_body_interrupted", instance=outcome.instance, error=type(exc).__name__)
            if request.transport is not None:
                request.transport.close()
            return out
        await out.write_eof()
        return out

    # -- WebSocket ----------------------------------------------------------------------------------------------

    async def _websocket(
        self,
        ctx: RequestContext,
        request: web.BaseRequest,
        target: Target,
        headers: CIMultiDict[str],
        outcome: Outcome,
    ) -> web.StreamResponse:
        for name in _WS_HANDSHAKE:
            headers.popall(name, None)
        protocols = tuple(
            p.strip() for v in request.headers.getall("Sec-WebSocket-Protocol", []) for p in v.split(",") if p.strip()
        )
        tried: set[str] = set()
        upstream: aiohttp.ClientWebSocketResponse | None = None
        instance: Instance | None = None
        for attempt in range(1 + target.policy.retries.attempts):
            instance = self._pick(ctx, target, frozenset(tried))
            if instance is None:
                break
            tried.add(instance.id)
            outcome.instance, outcome.attempts = instance.id, attempt + 1
            scheme = "wss" if instance.scheme == "https" else "ws"
            url = URL(f"{scheme}://{instance.endpoint}{target.path_qs}", encoded=True)
            try:
                with upstream_errors(instance.endpoint):
                    upstream = await self._session.ws_connect(
                        url,
                        headers=headers,
                        protocols=protocols,
                        timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0),
                        autoping=False,
                        max_msg_size=0,
                    )
            except UpstreamError as exc:
                self._breakers.record(target.service, instance.id, ok=False)
                self._metrics.upstream_errors.labels(target.service, exc.kind).inc()
                if exc.connect_failed and attempt < target.policy.retries.attempts:
                    continue
                raise
            break
        if upstream is None or instance is None:
            return self._no_instance(target)
        self._breakers.record(target.service, instance.id, ok=True)
        target.pool.acquire(instance.id)
        try:
            downstream = web.WebSocketResponse(
                protocols=(upstream.protocol,) if upstream.protocol else (), autoping=False, max_msg_size=0
            )
            await downstream.prepare(request)
            await _pump_websockets(downstream, upstream)
            return downstream
        finally:
            target.pool.release(instance.id)
            await upstream.close()


@functools.lru_cache(maxsize=1024)
def _client_timeout(timeouts: Timeouts) -> aiohttp.ClientTimeout:
    """aiohttp's timeout value for a policy's timeouts (built once per distinct policy, not per request)."""
    return aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect, sock_read=timeouts.read)


def _retryable(exc: UpstreamError, retry_on: frozenset[str], replayable: bool) -> bool:
    """May this failed attempt be repeated on another instance?"""
    if exc.connect_failed:
        return "connect_failure" in retry_on
    if not replayable:
        return False
    if exc.kind == "reset":  # closed before any response byte: the request may not have been processed
        return "connect_failure" in retry_on
    return exc.kind == "timeout" and "timeout" in retry_on


# Headers aiohttp's server fills in when a response lacks them; a proxy passes the upstream's or none.
_SERVER_DEFAULTS = ("Content-Type", "Server")


class _RelayedResponse(web.Response):
    """A relayed response that keeps aiohttp from inventing headers the upstream did not send (guarded by the
    httpbin tests ``status-418`` and friends). Used only when the upstream lacked one of _SERVER_DEFAULTS."""

    absent_headers: tuple[str, ...] = ()

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        for name in self.absent_headers:
            self._headers.popall(name, None)


class _RelayedStreamResponse(web.StreamResponse):
    """The streaming twin of _RelayedResponse."""

    absent_headers: tuple[str, ...] = ()

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        for name in self.absent_headers:
            self._headers.popall(name, None)


def _stream_response(
    response: aiohttp.ClientResponse, headers: CIMultiDict[str], absent: tuple[str, ...]
) -> web.StreamResponse:
    if not absent:
        return web.StreamResponse(status=response.status, reason=response.reason, headers=headers)
    out = _RelayedStreamResponse(status=response.status, reason=response.reason, headers=headers)
    out.absent_headers = absent
    return out


def _failure_statuses(policy: ServicePolicy) -> frozenset[int]:
    breaker = policy.circuit_breaker
    return breaker.failure_statuses if breaker is not None else frozenset()


def _is_websocket(request: web.BaseRequest) -> bool:
    return request.method == "GET" and request.headers.get("Upgrade", "").lower() == "websocket"


async def _stream(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    async for chunk in content.iter_chunked(_CHUNK):
        yield chunk


def _fallback_response(fallback: Fallback) -> web.Response:
    headers = CIMultiDict(fallback.headers)
    headers["Content-Type"] = fallback.content_type
    return web.Response(status=fallback.status, body=fallback.body.encode(), headers=headers)


async def _pump_websockets(downstream: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse) -> None:
    """Relay frames both ways until either side closes; then close the other with the same code."""

    async def relay(
        source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
        sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    ) -> None:
        async for message in source:
            if message.type is aiohttp.WSMsgType.TEXT:
                await sink.send_str(message.data)
            elif message.type is aiohttp.WSMsgType.BINARY:
                await sink.send_bytes(message.data)
            elif message.type is aiohttp.WSMsgType.PING:
                await sink.ping(message.data)
            elif message.type is aiohttp.WSMsgType.PONG:
                await sink.pong(message.data)
        code = source.close_code or aiohttp.WSCloseCode.OK
        await sink.close(code=code)

    tasks = [asyncio.ensure_future(relay(downstream, upstream)), asyncio.ensure_future(relay(upstream, downstream))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError, ConnectionError):
                await task
