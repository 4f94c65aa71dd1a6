"""Request mirroring (shadow traffic): a copy of a request goes, in the background, to another service or a subset.

The invariant: a mirror never changes, delays or fails the primary exchange.

* The ``mirror`` step decides per request (method, ``percent`` per target) before the primary is sent. A body is
  not read ahead: the client's body reaches the forwarder through a tee (:class:`TeeRequest`) that keeps a copy of
  at most ``max_body_bytes``. A declared length above the cap is not mirrored (nothing is copied); a chunked body
  that grows past it, or that the upstream did not read to the end, is not mirrored either (counted).
* Once the primary's answer is there (headers; its body still streams to the client), the copies are handed to
  the process's :class:`MirrorDispatcher` and the answer is returned at once. Nothing of the mirror is awaited.
* The dispatcher owns every mirrored exchange: at most ``max_in_flight`` per service (more are dropped, counted),
  each bounded by ``timeout`` from connect to the last byte, sent through the gateway's ``UpstreamTransport`` with
  keep-alive, never retried, with no effect on any breaker; the answer is read to its end and discarded; only its
  status is compared with the primary's (``consulgw_mirror_status_mismatch_total``). ``close()`` cancels whatever
  is still in flight (the gateway calls it when it stops).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import structlog
from multidict import CIMultiDict, CIMultiDictProxy

from consulgw.errors import UpstreamError
from consulgw.metrics import GatewayMetrics
from consulgw.model.http import REQUEST_ID_HEADER
from consulgw.pipeline.answer import Answer
from consulgw.pipeline.chain import Next
from consulgw.pipeline.context import BodyReader, HeaderEdits, Inbound, RequestContext
from consulgw.policy.model import MirrorPolicy, MirrorTarget
from consulgw.traffic.subsets import SubsetPools
from consulgw.upstream.connections import Endpoint
from consulgw.upstream.headers import end_to_end
from consulgw.upstream.pool import ServicePool, UpstreamPools
from consulgw.upstream.transport import UpstreamRequest, UpstreamTimeouts, UpstreamTransport

SendContinue = Callable[[Inbound], Awaitable[None]]
_log = structlog.get_logger("consulgw.mirror")


# -- the tee: the client's body, copied (up to a cap) while the forwarder reads it ------------------------------------


class _TeeReader:
    """``request.content`` for the forwarder, keeping a copy of at most ``cap`` bytes for the mirror."""

    __slots__ = ("_chunks", "_content", "_expected", "_on_first_read", "_size", "cap", "ended", "overflow")

    def __init__(
        self, content: BodyReader, cap: int, expected: int | None, on_first_read: Callable[[], Awaitable[None]]
    ) -> None:
        self._content = content
        self._expected = expected
        self._on_first_read: Callable[[], Awaitable[None]] | None = on_first_read
        self._chunks: list[bytes] = []
        self._size = 0
        self.cap = cap
        self.ended = False  # the whole body went through
        self.overflow = False  # more than cap: not mirrored

    def _keep(self, data: bytes) -> None:
        if not data:
            self.ended = True
            return
        self._size += len(data)
        if self._size > self.cap:
            self.overflow = True
            self._chunks.clear()
        elif not self.overflow:
            self._chunks.append(data)
        if self._expected is not None and self._size >= self._expected:
            self.ended = True

    async def _first(self) -> None:
        start, self._on_first_read = self._on_first_read, None
        if start is not None:
            await start()

    async def readany(self) -> bytes:
        await self._first()
        data = await self._content.readany()
        self._keep(data)
        return data

    async def readexactly(self, n: int) -> bytes:
        await self._first()
        data = await self._content.readexactly(n)
        self._keep(data)
        return data

    def iter_chunked(self, n: int) -> AsyncIterator[bytes]:
        return self._iterate(n)

    async def _iterate(self, n: int) -> AsyncIterator[bytes]:
        await self._first()
        async for chunk in self._content.iter_chunked(n):
            self._keep(chunk)
            yield chunk
        self.ended = True

    def captured(self) -> bytes | None:
        """The whole body, if it went through completely and within the cap."""
        if self.overflow or not self.ended:
            return None
        return b"".join(self._chunks)


class TeeRequest:
    """The client's request with its body teed (see :class:`_TeeReader`); everything else is the original's."""

    __slots__ = ("_request", "tee")

    def __init__(self, request: Inbound, cap: int, send_continue: SendContinue) -> None:
        self._request = request

        async def invite() -> None:  # 100 Continue, for the original request, just before the body is read
            if request.headers.get("Expect", "").lower() == "100-continue":
                await send_continue(request)

        self.tee = _TeeReader(request.content, cap, request.content_length, invite)

    @property
    def method(self) -> str:
        return self._request.method

    @property
    def host(self) -> str:
        return self._request.host

    @property
    def path(self) -> str:
        return self._request.path

    @property
    def raw_path(self) -> str:
        return self._request.raw_path

    @property
    def query_string(self) -> str:
        return self._request.query_string

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return self._request.headers

    @property
    def content_length(self) -> int | None:
        return self._request.content_length

    @property
    def body_exists(self) -> bool:
        return self._request.body_exists

    @property
    def content(self) -> BodyReader:
        return self.tee


# -- the dispatcher: every mirrored exchange of the process ---------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class MirrorJob:
    service: str  # the service whose traffic is mirrored
    target: str  # MirrorTarget.label
    pool: ServicePool
    key: str  # the hash balancer's key (the client IP)
    request: UpstreamRequest
    timeout: float
    primary_status: int


class MirrorDispatcher:
    """Runs mirrored exchanges in the background, bounded in flight per service; owned by the Gateway."""

    def __init__(self, *, transport: UpstreamTransport, metrics: GatewayMetrics) -> None:
        self._transport = transport
        self._metrics = metrics
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight: dict[str, int] = {}
        self._closed = False

    def in_flight(self, service: str) -> int:
        return self._in_flight.get(service, 0)

    def dispatch(self, job: MirrorJob, *, max_in_flight: int) -> bool:
        """Start ``job`` in the background, or drop it (counted); never waits, never raises for the job."""
        service = job.service
        reason: str | None = None
        instance = None
        if self._closed:
            reason = "shutdown"
        elif self._in_flight.get(service, 0) >= max_in_flight:
            reason = "in_flight_full"
        else:
            instance = job.pool.pick(job.key)
            if instance is None:
                reason = "no_instance"
        if reason is not None or instance is None:
            self._metrics.count(self._metrics.mirror_dropped, service, job.target, reason or "no_instance")
            return False
        self._in_flight[service] = self._in_flight.get(service, 0) + 1
        job.pool.acquire(instance.id)
        endpoint = Endpoint(instance.scheme, instance.address, instance.port)
        task = asyncio.get_running_loop().create_task(self._run(job, endpoint), name=f"consulgw-mirror:{service}")
        self._tasks.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._tasks.discard(finished)
            job.pool.release(instance.id)
            left = self._in_flight.get(service, 1) - 1
            if left > 0:
                self._in_flight[service] = left
            else:
                self._in_flight.pop(service, None)

        task.add_done_callback(done)
        self._metrics.count(self._metrics.mirror_sent, service, job.target)
        return True

    async def _run(self, job: MirrorJob, endpoint: Endpoint) -> None:
        timeouts = UpstreamTimeouts(connect=job.timeout, read=job.timeout)
        try:
            async with asyncio.timeout(job.timeout):
                response = await self._transport.send(endpoint, job.request, timeouts)
                try:
                    async for _ in response.body:  # read to the end: the connection goes back to its pool
                        pass
                finally:
                    response.body.close()
                    if response.tunnel is not None:  # never asked for; close whatever the upstream did
                        response.tunnel.close()
        except UpstreamError as exc:
            self._metrics.count(self._metrics.mirror_errors, job.service, job.target, exc.kind)
            return
        except TimeoutError:
            self._metrics.count(self._metrics.mirror_errors, job.service, job.target, "timeout")
            return
        except Exception:  # noqa: BLE001 - a mirror's bug must never surface anywhere; logged and counted
            _log.exception("mirror_failed", service=job.service, target=job.target)
            self._metrics.count(self._metrics.mirror_errors, job.service, job.target, "error")
            return
        if response.status // 100 != job.primary_status // 100:
            self._metrics.count(self._metrics.mirror_status_mismatch, job.service, job.target)

    async def close(self) -> None:
        """Stop taking jobs and cancel those in flight (their sockets are closed by the transport)."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _pool_of(target: MirrorTarget, pools: UpstreamPools, subsets: SubsetPools) -> Callable[[], ServicePool | None]:
    """Where a target's pool is found per request: another service's pool, or a subset's."""
    if target.service is not None:
        service = target.service
        return lambda: pools.pool(service)
    name = target.subset or ""
    return lambda: subsets.pool(name)


# -- the step --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Resolved:
    target: MirrorTarget
    label: str
    pool: Callable[[], ServicePool | None]


class MirrorStep:
    """Built once per (service, policy)."""

    def __init__(
        self,
        *,
        service: str,
        policy: MirrorPolicy,
        subsets: SubsetPools,
        pools: UpstreamPools,
        dispatcher: MirrorDispatcher,
        rng: random.Random,
        metrics: GatewayMetrics,
        send_continue: SendContinue,
    ) -> None:
        self._service = service
        self._policy = policy
        self._dispatcher = dispatcher
        self._rng = rng
        self._metrics = metrics
        self._send_continue = send_continue
        self._edits = HeaderEdits(remove=(*policy.headers.remove, "Expect"), set=policy.headers.set)
        self._targets = tuple(_Resolved(t, t.label, _pool_of(t, pools, subsets)) for t in policy.to)

    async def __call__(self, ctx: RequestContext, request: Inbound, call_next: Next) -> Answer:
        policy = self._policy
        if request.method not in policy.methods or "Upgrade" in request.headers:
            return await call_next(ctx)
        rng = self._rng
        chosen = [t for t in self._targets if t.target.percent >= 100 or rng.random() * 100 < t.target.percent]
        if not chosen:
            return await call_next(ctx)
        tee: TeeRequest | None = None
        if request.body_exists:
            length = request.content_length
            if length is not None and length > policy.max_body_bytes:
                self._drop(chosen, "body_too_large")
                return await call_next(ctx)
            tee = TeeRequest(request, policy.max_body_bytes, self._send_continue)
            ctx = ctx.replace(request=tee)
        answer = await call_next(ctx)
        try:
            self._dispatch(ctx, request, tee, chosen, answer.status)
        except Exception:  # noqa: BLE001 - whatever happens to a mirror, the primary answer goes out unchanged
            _log.exception("mirror_failed", service=self._service)
        return answer

    def _dispatch(
        self, ctx: RequestContext, request: Inbound, tee: TeeRequest | None, chosen: list[_Resolved], status: int
    ) -> None:
        body: bytes | None
        if tee is None:
            body = b"" if request.content_length == 0 else None
        else:
            body = tee.tee.captured()
            if body is None:
                self._drop(chosen, "body_too_large" if tee.tee.overflow else "body_incomplete")
                return
        outgoing = UpstreamRequest(
            method=request.method, target=ctx.upstream_target, headers=self._headers(ctx, request), body=body
        )
        policy = self._policy
        for resolved in chosen:
            pool = resolved.pool()
            if pool is None:
                self._drop([resolved], "no_instance")
                continue
            job = MirrorJob(
                service=self._service,
                target=resolved.label,
                pool=pool,
                key=ctx.client_ip,
                request=outgoing,
                timeout=policy.timeout,
                primary_status=status,
            )
            self._dispatcher.dispatch(job, max_in_flight=policy.max_in_flight)

    def _headers(self, ctx: RequestContext, request: Inbound) -> list[tuple[str, str]]:
        # What the forwarder sends upstream (consulgw.pipeline.forward), then the mirror's own header rules.
        headers: CIMultiDict[str] = end_to_end(request.headers, drop=ctx.drop)
        headers.popall("Content-Length", None)
        for name, value in ctx.forwarded:
            headers[name] = value
        headers[REQUEST_ID_HEADER] = ctx.request_id
        if ctx.upstream_edits:
            ctx.upstream_edits.apply(headers)
        self._edits.apply(headers)
        return list(headers.items())

    def _drop(self, targets: list[_Resolved], reason: str) -> None:
        for resolved in targets:
            self._metrics.count(self._metrics.mirror_dropped, self._service, resolved.label, reason)
