"""The terminal step of a composite route: make every call concurrently, merge the JSON answers.

Each call is a GET the gateway makes itself (:class:`~consulgw.pipeline.stages.made.MadeRequest`) to the rendered
path, sent through the *target service's* backend chain: its target selection, balancer, breakers, retries,
timeouts and request header rules, but none of its client-facing steps (auth, rate limit, CORS, cache, transform).
The composite authenticated the client once; its identity headers (``X-User-ID``, ``X-Consumer-ID``,
``X-User-Scopes``, claims), its own request header rules, ``X-Forwarded-*`` and ``X-Request-ID`` reach every call, with
the client headers named in ``forward_headers``. Credentials are not forwarded unless listed there.

Time: every call is cut at its own ``timeout`` and at the composite's deadline (``timeout``), whichever comes first,
so the whole answer is ready within the deadline. A call fails when it times out, when its service has no routed
instance, when it answers anything but 2xx JSON, more than ``max_body_bytes``, or invalid JSON, or when its path
needs a query parameter or header the request does not carry.

Merging, in declaration order:

* ``nest``: ``{"<call>": <its JSON>, ...}``; a failed optional call gives its ``default`` (or its key is left out).
* ``shallow``: the top-level keys of every call's JSON object in one object. **The first call (in declaration order)
  that has a key keeps it; a later call's value for that key is dropped, never overwriting**, and the collision is
  reported: ``X-Gateway-Collisions: <later calls>``, ``consulgw_composite_collisions_total`` and a
  ``composite_key_collision`` log line naming the keys. An answer that is not an object fails the call.

A failed ``required`` call answers ``502 composite_call_failed`` naming the call (the other calls are cancelled at
once); a call whose path lacks a client value answers ``400 bad_request`` when required. Failed optional calls are
listed in ``X-Gateway-Partial: <call names>`` and the answer gets ``partial_status`` (200 or 206).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import structlog
from multidict import CIMultiDict

from consulgw.clock import Clock
from consulgw.errors import BadRequest, CompositeCallFailed
from consulgw.metrics import GatewayMetrics
from consulgw.pipeline.answer import Answer
from consulgw.pipeline.chain import Next
from consulgw.pipeline.context import RequestContext
from consulgw.pipeline.stages.made import MadeRequest
from consulgw.pipeline.stages.placeholders import render
from consulgw.pipeline.stages.transform import is_json
from consulgw.policy.model import CompositeCall, CompositePolicy
from consulgw.upstream.http1 import ExchangeError
from consulgw.upstream.spool import Spool

PARTIAL_HEADER = "X-Gateway-Partial"
COLLISIONS_HEADER = "X-Gateway-Collisions"
Outcome = Literal["ok", "failed", "timeout", "skipped"]

log = structlog.get_logger("consulgw.composite")


@dataclass(frozen=True, slots=True, kw_only=True)
class CallResult:
    call: CompositeCall
    outcome: Outcome
    value: Any = None  # the decoded JSON when ok
    reason: str = ""  # why it failed (safe to show: no request data)


class Composer:
    def __init__(
        self,
        *,
        composite: CompositePolicy,
        backends: Mapping[str, Next | None],
        metrics: GatewayMetrics,
        clock: Clock,
    ) -> None:
        self._composite = composite
        self._backends = backends
        self._clock = clock
        self._label = composite.label
        self._calls = metrics.composite_calls
        self._collisions = metrics.composite_collisions
        self._defaults = {c.name: json.loads(c.default) for c in composite.calls if c.default is not None}

    async def __call__(self, ctx: RequestContext) -> Answer:
        composite = self._composite
        deadline = self._clock.monotonic() + composite.timeout
        tasks = {asyncio.create_task(self._call(call, ctx, deadline)): call for call in composite.calls}
        results: dict[str, CallResult] = {}
        try:
            pending: set[asyncio.Task[CallResult]] = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    result = task.result()
                    results[result.call.name] = result
                    if result.outcome != "ok" and result.call.required:
                        raise self._required_failed(result)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return self._answer(ctx, [results[c.name] for c in composite.calls])

    def _required_failed(self, result: CallResult) -> BadRequest | CompositeCallFailed:
        call = result.call
        if result.outcome == "skipped":
            return BadRequest(f"composite call {call.name!r} {result.reason}")
        return CompositeCallFailed(
            f"required call {call.name!r} ({call.service}) failed: {result.reason}", kind="composite"
        )

    # -- one call --------------------------------------------------------------------------------------------------

    async def _call(self, call: CompositeCall, ctx: RequestContext, deadline: float) -> CallResult:
        result = await self._attempt(call, ctx, deadline)
        self._calls.labels(self._label, call.name, result.outcome).inc()
        return result

    async def _attempt(self, call: CompositeCall, ctx: RequestContext, deadline: float) -> CallResult:
        target = render(call.path, ctx)
        if not isinstance(target, str):
            return CallResult(call=call, outcome="skipped", reason=f"needs {target.text}, which the request lacks")
        backend = self._backends.get(call.service)
        if backend is None:
            return CallResult(call=call, outcome="failed", reason=f"service {call.service} is not routed")
        budget = deadline - self._clock.monotonic()
        if call.timeout is not None:
            budget = min(budget, call.timeout)
        if budget <= 0:
            return CallResult(call=call, outcome="timeout", reason="no time left before the composite's deadline")
        call_ctx = self._context(call, ctx, target)
        answer: Answer | None = None
        try:
            async with asyncio.timeout(budget):
                answer = await backend(call_ctx)
                return await self._read(call, answer)
        except TimeoutError:
            return CallResult(call=call, outcome="timeout", reason=f"timed out after {budget:.3g}s")
        except ExchangeError:  # the body broke off (connection closed, read timeout, invalid framing)
            return CallResult(call=call, outcome="failed", reason=f"{call.service} broke off its answer")
        finally:
            if answer is not None:
                answer.discard()

    def _context(self, call: CompositeCall, ctx: RequestContext, target: str) -> RequestContext:
        headers: CIMultiDict[str] = CIMultiDict()
        client = ctx.request.headers
        for name in self._composite.forward_headers:
            for value in client.getall(name, []):
                headers.add(name, value)
        headers["Accept"] = "application/json"
        headers["Accept-Encoding"] = "identity"
        request = MadeRequest(method="GET", host=ctx.request.host, raw_path=target, headers=headers)
        return RequestContext(
            request=request,
            request_id=ctx.request_id,
            client_ip=ctx.client_ip,
            service=call.service,
            route=ctx.route,
            started=ctx.started,
            upstream_target=target,
            forwarded=ctx.forwarded,
            consumer=ctx.consumer,
            upstream_edits=ctx.upstream_edits,
        )

    async def _read(self, call: CompositeCall, answer: Answer) -> CallResult:
        if answer.error is not None:
            return CallResult(call=call, outcome="failed", reason=f"{answer.error} ({answer.status})")
        if not 200 <= answer.status < 300:
            return CallResult(call=call, outcome="failed", reason=f"{call.service} answered {answer.status}")
        if not is_json(answer.headers.get("Content-Type")) or answer.headers.get("Content-Encoding"):
            return CallResult(call=call, outcome="failed", reason=f"{call.service} did not answer JSON")
        cap = self._composite.max_body_bytes
        data = await _read_capped(answer.body, cap)
        if data is None:
            return CallResult(call=call, outcome="failed", reason=f"{call.service} answered more than {cap} bytes")
        try:
            value = json.loads(data)
        except (ValueError, RecursionError):
            return CallResult(call=call, outcome="failed", reason=f"{call.service} answered invalid JSON")
        if self._composite.merge == "shallow" and not isinstance(value, dict):
            return CallResult(call=call, outcome="failed", reason=f"{call.service} did not answer a JSON object")
        return CallResult(call=call, outcome="ok", value=value)

    # -- the merged answer -----------------------------------------------------------------------------------------

    def _answer(self, ctx: RequestContext, results: list[CallResult]) -> Answer:
        composite = self._composite
        partial = [r.call.name for r in results if r.outcome != "ok"]
        values: list[tuple[str, Any]] = []
        for result in results:
            name = result.call.name
            if result.outcome == "ok":
                values.append((name, result.value))
            elif name in self._defaults:
                values.append((name, json.loads(result.call.default or "null")))
        headers: CIMultiDict[str] = CIMultiDict({"Content-Type": "application/json"})
        if composite.merge == "nest":
            document: dict[str, Any] = dict(values)
        else:
            document, collided = _shallow(values)
            if collided:
                self._collisions.labels(self._label).inc(sum(len(keys) for keys in collided.values()))
                headers[COLLISIONS_HEADER] = ", ".join(collided)
                log.warning(
                    "composite_key_collision",
                    composite=composite.name,
                    request_id=ctx.request_id,
                    dropped={call: sorted(keys)[:20] for call, keys in collided.items()},
                )
        status = 200
        if partial:
            headers[PARTIAL_HEADER] = ", ".join(partial)
            status = composite.partial_status
        body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
        return Answer(status=status, headers=headers, body=body, edits=ctx.response_edits)


def _shallow(values: list[tuple[str, Any]]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Merge objects in order; the first call with a key keeps it. Returns the merge and {later call: its keys
    that were dropped}."""
    merged: dict[str, Any] = {}
    collided: dict[str, list[str]] = {}
    for name, value in values:
        if not isinstance(value, dict):
            continue
        for key, item in value.items():
            if key in merged:
                collided.setdefault(name, []).append(key)
            else:
                merged[key] = item
    return merged, collided


async def _read_capped(body: bytes | Spool, cap: int) -> bytes | None:
    if isinstance(body, bytes):
        return body if len(body) <= cap else None
    chunks: list[bytes] = []
    size = 0
    async for chunk in body:
        size += len(chunk)
        if size > cap:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
