"""HTTP framework of the dev agent: Go ServeMux routing, request parsing, replies, headers and error mapping.

This is the one place where exceptions become HTTP answers: :class:`ApiError` keeps its status and Consul's text,
a body :class:`DecodeError` becomes ``400 Request decode failed: ...``, and anything unexpected becomes a one-line
500 that is logged (never a stack trace to the client).
"""

from __future__ import annotations

import posixpath
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import hdrs, web
from multidict import MultiDictProxy

from consulgw.devagent.authorizer import ALLOW_ALL, Authz
from consulgw.devagent.blocking import QueryOptions, meta_headers, parse_query_options
from consulgw.devagent.decode import parse_json
from consulgw.devagent.errors import ApiError, DecodeError, Forward
from consulgw.devagent.render import dumps

log = structlog.get_logger("consulgw.devagent")

NOT_V1_TEXT = "Invalid URL path: if attempting to use the HTTP API, ensure the path starts with '/v1/'\n"
NOT_FOUND_TEXT = "Invalid URL path: not a recognized HTTP API endpoint\n"
TEXT = "text/plain; charset=utf-8"
FILTERED_HEADER = "X-Consul-Results-Filtered-By-ACLs"

Stream = Callable[[web.StreamResponse], Awaitable[None]]
Resolver = Callable[[str], Authz]


@dataclass(slots=True, kw_only=True)
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    stream: Stream | None = None  # a streamed body (agent/monitor): headers are sent, then this writes the body
    after: Callable[[], None] | None = None  # runs once the whole answer has been written (agent/leave)


def request_token(request: web.BaseRequest) -> str:
    """Consul's token precedence: ``?token=``, then ``X-Consul-Token``, then ``Authorization: Bearer``; else ""."""
    query = request.query.get("token", "")
    if query:
        return query
    header = request.headers.get("X-Consul-Token", "")
    if header:
        return header
    authorization = request.headers.get(hdrs.AUTHORIZATION, "")
    parts = authorization.split(" ")
    if len(parts) > 1 and parts[0].lower() == "bearer":
        value = " ".join(parts[1:]).strip()
        return value.split(" ")[0].strip()
    return ""


def redacted_url(request: web.BaseRequest) -> str:
    """The request path and query with token values hidden, as Consul logs it."""
    if not request.query_string:
        return request.path
    pairs = urllib.parse.parse_qsl(request.query_string, keep_blank_values=True)
    shown = [(k, "<hidden>" if k == "token" else v) for k, v in pairs]
    return request.path + "?" + urllib.parse.urlencode(shown, safe="<>/")


class Call:
    """One API request as a handler sees it."""

    __slots__ = ("_authz", "_body", "_resolve", "pretty", "request", "suffix", "token")

    def __init__(self, request: web.BaseRequest, suffix: str, *, pretty: bool, resolve: Resolver | None = None) -> None:
        self.request = request
        self.suffix = suffix
        self.pretty = pretty or "pretty" in request.query
        self.token = request_token(request)
        self._resolve = resolve
        self._authz: Authz | None = None
        self._body: bytes | None = None

    def authz(self) -> Authz:
        """The requester's permissions (resolved once; an unknown token is ``403 ACL not found``)."""
        if self._authz is None:
            self._authz = self._resolve(self.token) if self._resolve is not None else ALLOW_ALL
        return self._authz

    def authz_for(self, token: str) -> Authz:
        """The permissions of another token carried by the request (a sidecar registration's own ``Token``)."""
        return self._resolve(token) if self._resolve is not None else ALLOW_ALL

    def filtered(self, removed: bool) -> dict[str, str]:
        """The filtered-by-ACLs header, sent only to requesters that gave a token (Consul hides it otherwise)."""
        if removed and self.authz().supplied:
            return {FILTERED_HEADER: "true"}
        return {}

    @property
    def query(self) -> MultiDictProxy[str]:
        return self.request.query  # type: ignore[return-value]

    def has(self, name: str) -> bool:
        return name in self.request.query

    def param(self, name: str, default: str = "") -> str:
        return self.request.query.get(name, default)

    def params(self, name: str) -> list[str]:
        return self.request.query.getall(name, [])

    def options(self) -> QueryOptions:
        return parse_query_options(self.request.query, self.request.headers)

    async def body(self, limit: int | None = None, too_large: Callable[[int], ApiError] | None = None) -> bytes:
        """Read the body, refusing more than ``limit`` bytes (checked on Content-Length first, then as read)."""
        if self._body is None:
            length = self.request.content_length
            if limit is not None and too_large is not None and length is not None and length > limit:
                raise too_large(length)
            if self.request.headers.get(hdrs.EXPECT, "").lower() == "100-continue" and self.request.version >= (1, 1):
                # Go's server answers 100 Continue when the handler starts reading the body; so do we
                await self.request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            chunks: list[bytes] = []
            size = 0
            async for chunk in self.request.content.iter_chunked(65536):
                size += len(chunk)
                if limit is not None and too_large is not None and size > limit:
                    raise too_large(length if length is not None else size)
                chunks.append(chunk)
            self._body = b"".join(chunks)
        return self._body

    async def json(self) -> Any:
        return parse_json(await self.body())

    def reply(self, value: object, *, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
        return Reply(
            status=status,
            body=dumps(value, pretty=self.pretty),
            content_type="application/json",
            headers=dict(headers or {}),
        )

    def reply_meta(
        self, value: object, index: int, opts: QueryOptions, *, status: int = 200, filtered: bool = False
    ) -> Reply:
        return self.reply(value, status=status, headers={**meta_headers(index, opts), **self.filtered(filtered)})


Handler = Callable[[Call], Awaitable[Reply]]


def empty() -> Reply:
    return Reply()


def text(status: int, body: str, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status=status, body=body.encode("utf-8"), content_type=TEXT, headers=dict(headers or {}))


@dataclass(frozen=True, slots=True)
class Route:
    pattern: str
    methods: tuple[str, ...]
    handler: Handler

    @property
    def allow(self) -> str:
        return ",".join(("OPTIONS", *self.methods))


class Router:
    """Go ``net/http.ServeMux``: patterns ending in ``/`` match subtrees, the longest pattern wins."""

    def __init__(self) -> None:
        self._exact: dict[str, Route] = {}
        self._prefixes: list[Route] = []

    def add(self, pattern: str, methods: Iterable[str], handler: Handler) -> None:
        route = Route(pattern, tuple(methods), handler)
        if pattern.endswith("/"):
            self._prefixes.append(route)
            self._prefixes.sort(key=lambda r: len(r.pattern), reverse=True)
        else:
            self._exact[pattern] = route

    def match(self, path: str) -> Route | None:
        route = self._exact.get(path)
        if route is not None:
            return route
        for candidate in self._prefixes:
            if path.startswith(candidate.pattern):
                return candidate
        return None

    def subtree_redirect(self, path: str) -> str | None:
        """ServeMux redirects ``/v1/kv`` to ``/v1/kv/`` when only the subtree pattern exists."""
        if path in self._exact:
            return None
        for candidate in self._prefixes:
            if candidate.pattern == path + "/":
                return candidate.pattern
        return None


def clean_path(path: str) -> str:
    """Go's ``cleanPath``: path.Clean, keeping a trailing slash."""
    if not path:
        return "/"
    if not path.startswith("/"):
        path = "/" + path
    cleaned = posixpath.normpath(path)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    if path.endswith("/") and cleaned != "/":
        cleaned += "/"
    return cleaned


def _redirect(location: str, request: web.BaseRequest) -> Reply:
    if request.query_string:
        location += "?" + request.query_string
    return Reply(status=301, headers={"Location": location}, content_type="text/html; charset=utf-8")


Finished = Callable[[web.BaseRequest, str, int, float], None]
Forwarder = Callable[[Forward], Awaitable[Reply]]


class HttpApi:
    """The aiohttp handler that dispatches every request through the router."""

    def __init__(
        self,
        router: Router,
        *,
        pretty: bool = True,
        gzip_min: int = 1400,
        default_policy: str = "allow",
        resolve: Resolver | None = None,
        finished: Finished | None = None,
        forward: Forwarder | None = None,
    ) -> None:
        self.router = router
        self.forward = forward  # answers a request for a WAN peer's datacenter (consulgw.devagent.wan)
        self.pretty = pretty
        self.gzip_min = gzip_min
        self.default_policy = default_policy
        self.resolve = resolve
        self.finished = finished

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.monotonic()
        pattern = ""
        try:
            route = self.router.match(request.path)
            pattern = route.pattern if route is not None else ""
            try:
                reply = await self._dispatch(request)
            except Forward as forward:
                if self.forward is None:
                    raise ApiError(500, "No path to datacenter") from None
                reply = await self.forward(forward)
        except ApiError as exc:
            reply = text(exc.status, exc.text, exc.headers)
        except DecodeError as exc:
            reply = text(400, f"Request decode failed: {exc}")
        except Exception as exc:
            log.error("request_failed", method=request.method, path=request.path, error=repr(exc), exc_info=True)
            reply = text(500, f"Internal error: {type(exc).__name__}: {exc}".splitlines()[0])
        try:
            if reply.stream is not None or reply.after is not None:
                return await self._stream(request, reply)
            response = web.Response(status=reply.status, body=reply.body or None)
            self._headers(response, reply)
            if len(reply.body) > self.gzip_min and "gzip" in request.headers.get(hdrs.ACCEPT_ENCODING, ""):
                response.headers["Vary"] = "Accept-Encoding"
                response.enable_compression(web.ContentCoding.gzip)
            return response
        finally:
            if self.finished is not None:
                self.finished(request, pattern, reply.status, time.monotonic() - started)

    def _headers(self, response: web.StreamResponse, reply: Reply) -> None:
        if reply.content_type is not None:
            response.headers[hdrs.CONTENT_TYPE] = reply.content_type
        response.headers.update(reply.headers)
        response.headers["X-Consul-Default-ACL-Policy"] = self.default_policy

    async def _stream(self, request: web.BaseRequest, reply: Reply) -> web.StreamResponse:
        response = web.StreamResponse(status=reply.status)
        self._headers(response, reply)
        if reply.stream is None:
            response.content_length = len(reply.body)
        await response.prepare(request)
        try:
            if reply.stream is not None:
                await reply.stream(response)
            elif reply.body:
                await response.write(reply.body)
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away; the stream just ends
        if reply.after is not None:
            reply.after()
        return response

    async def _dispatch(self, request: web.BaseRequest) -> Reply:
        path = request.path
        if path == "/":
            return _redirect("/ui/", request)  # Consul's index handler redirects whatever the method
        cleaned = clean_path(path)
        if cleaned != path:
            return _redirect(cleaned, request)
        route = self.router.match(path)
        if route is None:
            target = self.router.subtree_redirect(path)
            if target is not None:
                return _redirect(target, request)
            return text(404, NOT_FOUND_TEXT if "/v1/" in path else NOT_V1_TEXT)
        if request.method == "OPTIONS":
            return Reply(headers={"Allow": route.allow})
        if request.method not in route.methods:
            return text(405, f"method {request.method} not allowed", {"Allow": route.allow})
        suffix = path[len(route.pattern) :] if route.pattern.endswith("/") else ""
        call = Call(request, suffix, pretty=self.pretty, resolve=self.resolve)
        return await route.handler(call)
