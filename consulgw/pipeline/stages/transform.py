"""The transform step (policy ``transform``): rewrite the request on its way up and the JSON answer on its way back.

Request, in this order: headers (remove, rename, set, add, as upstream edits), query parameters (same operations, on
the upstream request-target), ``path_prefix`` (``from`` replaced by ``to`` on whole segments), then the JSON body
(remove, rename, set). A body to transform is read into a buffer bounded by ``max_body_bytes`` and handed to the
forwarder as ``ctx.body`` (the forwarder sends it instead of the client's, with its own ``Content-Length``).

Response (JSON ``remove``, ``rename``, ``set``, then ``allow``): the step asks the upstream for an unencoded answer
(``Accept-Encoding: identity``), reads a JSON answer up to ``max_body_bytes``, rewrites it, drops the upstream's
``Content-Length`` (the writer frames the new body) and weakens a strong ``ETag`` (the bytes changed, the meaning did
not). Gateway error answers and statuses outside ``response.statuses`` (default: 2xx) are left alone.

A body that is not JSON (content type, encoding or syntax) or larger than ``max_body_bytes`` passes untouched with
``on_error: pass``; with ``fail`` a response answers 502 ``transform_failed``, a request 413 (too large) or 400
(not JSON). Values of ``set`` are constants or placeholders (:mod:`consulgw.pipeline.stages.placeholders`); a
placeholder without a value for this request skips that one edit.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from multidict import CIMultiDict

from consulgw.errors import BadRequest, TransformFailed
from consulgw.pipeline.answer import Answer
from consulgw.pipeline.body import TimedBody
from consulgw.pipeline.chain import Next
from consulgw.pipeline.context import HeaderEdits, Inbound, RequestContext
from consulgw.pipeline.stages.body_limit import ByteStream, LimitedBody, too_large
from consulgw.pipeline.stages.deps import StageDeps
from consulgw.pipeline.stages.placeholders import encode_segment, text
from consulgw.pipeline.stages.relay import RelayBody
from consulgw.policy import jsonpath
from consulgw.policy.model import FieldOps, JsonOps, JsonValue, TransformPolicy
from consulgw.upstream.http1 import ExchangeError
from consulgw.upstream.spool import Spool
from consulgw.upstream.transport import translate

IDENTITY = HeaderEdits(set=(("Accept-Encoding", "identity"),))
Outcome = Literal["applied", "passed", "failed"]


def is_json(content_type: str | None) -> bool:
    """``application/json`` or any ``+json`` type (RFC 6839), parameters ignored."""
    if not content_type:
        return False
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class _Edits:
    """One side's JSON operations, ready to run: constants decoded once, the allow list as a tree."""

    def __init__(self, ops: JsonOps) -> None:
        self.ops = ops
        self.active = bool(ops)
        self._allow = jsonpath.allow_tree(ops.allow) if ops.allow is not None else None

    def apply(self, document: Any, ctx: RequestContext) -> Any:
        ops = self.ops
        for path in ops.remove:
            jsonpath.remove(document, path)
        for path, new in ops.rename:
            jsonpath.rename(document, path, new)
        for path, value in ops.set:
            make = _maker(value, ctx)
            if make is not None:
                document = jsonpath.set_value(document, path, make)
        if self._allow is not None:
            document = jsonpath.project(document, self._allow)
        return document


def _maker(value: JsonValue, ctx: RequestContext) -> Callable[[], Any] | None:
    if value.placeholder is not None:
        resolved = text(value.placeholder, ctx)
        return None if resolved is None else (lambda: resolved)
    constant = value.json or "null"
    return lambda: json.loads(constant)


class TransformStage:
    def __init__(self, *, policy: TransformPolicy, deps: StageDeps, limit: int | None = None) -> None:
        self._policy = policy
        self._limit = limit  # the service's max_body_bytes: a body the step reads itself is held to it too
        self._deps = deps
        self._service = deps.service
        request = policy.request
        self._headers = request.headers
        self._query = request.query
        self._prefix = request.path_prefix
        self._request_json = _Edits(request.json)
        self._response_json = _Edits(policy.response.json)
        self._statuses = policy.response.statuses
        self._cap = policy.max_body_bytes
        self._fail = policy.on_error == "fail"
        self._counter = deps.metrics.transforms

    @classmethod
    def from_policy(cls, policy: TransformPolicy, deps: StageDeps, *, limit: int | None = None) -> TransformStage:
        return cls(policy=policy, deps=deps, limit=limit)

    def _count(self, direction: str, outcome: Outcome) -> None:
        self._counter.labels(self._service, direction, outcome).inc()

    async def __call__(self, ctx: RequestContext, request: Inbound, call_next: Next) -> Answer:
        if self._headers:
            ctx = ctx.with_upstream(_header_edits(self._headers, request, ctx))
        if self._query or self._prefix is not None:
            ctx = ctx.replace(upstream_target=self._target(ctx))
        if self._request_json.active:
            ctx = await self._request_body(ctx, request)
        if not self._response_json.active:
            return await call_next(ctx)
        answer = await call_next(ctx.with_upstream(IDENTITY))
        return await self._response(answer, ctx, request)

    # -- request ---------------------------------------------------------------------------------------------------

    def _target(self, ctx: RequestContext) -> str:
        path, sep, query = ctx.upstream_target.partition("?")
        if self._prefix is not None:
            old, new = self._prefix
            if old == "/":
                path = (new.rstrip("/") + path) if new != "/" else path
            elif path == old or path.startswith(old + "/"):
                path = (new if new != "/" else "") + path[len(old) :] or "/"
        if self._query:
            query = _query(self._query, query, ctx)
            sep = "?" if query else ""
        return f"{path}{sep}{query}"

    async def _request_body(self, ctx: RequestContext, request: Inbound) -> RequestContext:
        if not request.body_exists or not is_json(request.headers.get("Content-Type")):
            return ctx
        if request.headers.get("Content-Encoding", "identity").lower() != "identity":
            return self._request_untouched(ctx, "is encoded", too_big=False)
        length = request.content_length
        if length is not None and length > self._cap:
            return self._request_untouched(ctx, "is too large", too_big=True)
        if request.headers.get("Expect", "").lower() == "100-continue" and self._deps.send_continue is not None:
            await self._deps.send_continue(request)
        limit = self._limit
        content = TimedBody(request.content, self._deps.body_timeout, self._deps.body_min_rate, None)
        head, complete = await _read_capped(content, self._cap if limit is None else min(self._cap, limit))
        if not complete:
            if limit is not None and sum(len(chunk) for chunk in head) > limit:
                raise too_large(limit)  # the service's own limit: the client's fault whatever on_error says
            if self._fail:
                self._count("request", "failed")
                raise too_large(self._cap)
            self._count("request", "passed")
            if limit is None:
                return ctx.replace(body=_chain(head, content))
            # What was read, then the rest, still counted against the service's limit by the forwarder's own rule.
            return ctx.replace(body=LimitedBody(_Prefixed(head, content), limit))
        data = b"".join(head)
        document = _decode(data)
        if document is _NOT_JSON:
            if self._fail:
                self._count("request", "failed")
                raise BadRequest("the request body is not valid JSON")
            self._count("request", "passed")
            return ctx.replace(body=data)
        self._count("request", "applied")
        return ctx.replace(body=_encode(self._request_json.apply(document, ctx)))

    def _request_untouched(self, ctx: RequestContext, why: str, *, too_big: bool) -> RequestContext:
        if not self._fail:
            self._count("request", "passed")
            return ctx
        self._count("request", "failed")
        if too_big:
            raise too_large(self._cap, ctx.request.content_length)
        raise BadRequest(f"the request body {why}; this route transforms JSON bodies")

    # -- response --------------------------------------------------------------------------------------------------

    async def _response(self, answer: Answer, ctx: RequestContext, request: Inbound) -> Answer:
        if answer.error is not None or answer.tunnel is not None or request.method == "HEAD":
            return answer
        status = answer.status
        if (self._statuses is None and not 200 <= status < 300) or (
            self._statuses is not None and status not in self._statuses
        ):
            return answer
        if status in (204, 304):
            return answer
        headers = answer.headers
        encoded = headers.get("Content-Encoding", "identity").lower() != "identity"
        if not is_json(headers.get("Content-Type")) or encoded:
            return self._response_untouched(answer, "is not JSON" if not encoded else "is encoded")
        body = answer.body
        if isinstance(body, bytes):
            if len(body) > self._cap:
                return self._response_untouched(answer, "is too large")
            data = body
        else:
            if answer.length is not None and answer.length > self._cap:
                return self._response_untouched(answer, "is too large")
            try:
                head, complete = await _read_capped(body, self._cap)
            except ExchangeError as exc:  # the upstream broke off its answer before the head was sent on
                body.close()
                raise translate(exc, answer.instance or ctx.service) from exc
            if not complete:
                answer.body = RelayBody(body, head=head)
                return self._response_untouched(answer, "is too large")
            body.close()
            data = b"".join(head)
            answer.body = data
            answer.length = None
        document = _decode(data)
        if document is _NOT_JSON:
            return self._response_untouched(answer, "is not valid JSON")
        self._count("response", "applied")
        answer.body = _encode(self._response_json.apply(document, ctx))
        answer.length = None
        _reframe(headers)
        return answer

    def _response_untouched(self, answer: Answer, why: str) -> Answer:
        if not self._fail:
            self._count("response", "passed")
            return answer
        self._count("response", "failed")
        answer.discard()
        raise TransformFailed(f"the upstream's answer {why}; this route transforms JSON answers")


# -- helpers -------------------------------------------------------------------------------------------------------


def _header_edits(ops: FieldOps, request: Inbound, ctx: RequestContext) -> HeaderEdits:
    remove: list[str] = list(ops.remove)
    assign: list[tuple[str, str]] = []
    append: list[tuple[str, str]] = []
    headers = request.headers
    for old, new in ops.rename:
        values = headers.getall(old, [])
        remove.append(old)
        if values:
            assign.append((new, values[0]))
            append.extend((new, v) for v in values[1:])
    for name, value in ops.set:
        resolved = text(value, ctx)
        if resolved is not None:
            assign.append((name, resolved))
    for name, value in ops.add:
        resolved = text(value, ctx)
        if resolved is not None:
            append.append((name, resolved))
    return HeaderEdits(remove=tuple(remove), set=tuple(assign), add=tuple(append))


def _query(ops: FieldOps, query: str, ctx: RequestContext) -> str:
    """Query operations on the raw query: untouched parameters keep their exact encoding."""
    pairs = [pair for pair in query.split("&") if pair]

    def name_of(pair: str) -> str:
        return urllib.parse.unquote_plus(pair.partition("=")[0])

    removed = set(ops.remove)
    pairs = [p for p in pairs if name_of(p) not in removed]
    for old, new in ops.rename:
        pairs = [
            f"{encode_segment(new)}{p[p.find('=') :] if '=' in p else ''}" if name_of(p) == old else p for p in pairs
        ]
    for name, value in ops.set:
        resolved = text(value, ctx)
        if resolved is None:
            continue
        pairs = [p for p in pairs if name_of(p) != name]
        pairs.append(f"{encode_segment(name)}={encode_segment(resolved)}")
    for name, value in ops.add:
        resolved = text(value, ctx)
        if resolved is not None:
            pairs.append(f"{encode_segment(name)}={encode_segment(resolved)}")
    return "&".join(pairs)


async def _read_capped(source: ByteStream | Spool, cap: int) -> tuple[list[bytes], bool]:
    """Chunks of ``source`` until its end (complete: True) or until more than ``cap`` bytes arrived (False).

    A client body is read with ``readany`` (aiohttp's ``read()`` would read it all), a Spool with ``read``."""
    read = source.read if isinstance(source, Spool) else source.readany
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await read()
        if not chunk:
            return chunks, True
        chunks.append(chunk)
        size += len(chunk)
        if size > cap:
            return chunks, False


class _Prefixed:
    """A body reader (``readany``) that gives ``head`` first, then what ``content`` still has."""

    __slots__ = ("_content", "_head")

    def __init__(self, head: list[bytes], content: ByteStream) -> None:
        self._head = list(head)
        self._content = content

    async def readany(self) -> bytes:
        if self._head:
            return self._head.pop(0)
        return await self._content.readany()


async def _chain(head: list[bytes], content: ByteStream) -> AsyncIterator[bytes]:
    for chunk in head:
        yield chunk
    while True:
        chunk = await content.readany()
        if not chunk:
            return
        yield chunk


_NOT_JSON = object()


def _decode(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return _NOT_JSON


def _encode(document: Any) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def _reframe(headers: CIMultiDict[str]) -> None:
    headers.popall("Content-Length", None)
    etag = headers.get("ETag")
    if etag is not None and not etag.startswith("W/"):
        headers["ETag"] = "W/" + etag
