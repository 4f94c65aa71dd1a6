"""HTTP framework of the dev agent: Go ServeMux routing, request parsing, replies, headers and error mapping.

This is the one place where exceptions become HTTP answers: :class:`ApiError` keeps its status and Consul's text,
a body :class:`DecodeError` becomes ``400 Request decode failed: ...``, and anything unexpected becomes a one-line
500 that is logged (never a stack trace to the client).
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import hdrs, web
from multidict import MultiDictProxy

from consulgw.devagent.blocking import QueryOptions, meta_headers, parse_query_options
from consulgw.devagent.decode import parse_json
from consulgw.devagent.errors import ApiError, DecodeError
from consulgw.devagent.render import dumps

log = structlog.get_logger("consulgw.devagent")

NOT_V1_TEXT = "Invalid URL path: if attempting to use the HTTP API, ensure the path starts with '/v1/'\n"
NOT_FOUND_TEXT = "Invalid URL path: not a recognized HTTP API endpoint\n"
TEXT = "text/plain; charset=utf-8"


@dataclass(slots=True, kw_only=True)
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


class Call:
    """One API request as a handler sees it."""

    __slots__ = ("_body", "pretty", "request", "suffix")

    def __init__(self, request: web.BaseRequest, suffix: str, *, pretty: bool) -> None:
        self.request = request
        self.suffix = suffix
        self.pretty = pretty or "pretty" in request.query
        self._body: bytes | None = None

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

    def reply_meta(self, value: object, index: int, opts: QueryOptions, *, status: int = 200) -> Reply:
        return self.reply(value, status=status, headers=meta_headers(index, opts))


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


class HttpApi:
    """The aiohttp handler that dispatches every request through the router."""

    def __init__(self, router: Router, *, pretty: bool = True, gzip_min: int = 1400) -> None:
        self.router = router
        self.pretty = pretty
        self.gzip_min = gzip_min

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.monotonic()
        try:
            reply = await self._dispatch(request)
        except ApiError as exc:
            reply = text(exc.status, exc.text, exc.headers)
        except DecodeError as exc:
            reply = text(400, f"Request decode failed: {exc}")
        except Exception as exc:
            log.error("request_failed", method=request.method, path=request.path, error=repr(exc), exc_info=True)
            reply = text(500, f"Internal error: {type(exc).__name__}: {exc}".splitlines()[0])
        response = web.Response(status=reply.status, body=reply.body or None)
        if reply.content_type is not None:
            response.headers[hdrs.CONTENT_TYPE] = reply.content_type
        response.headers.update(reply.headers)
        response.headers["X-Consul-Default-ACL-Policy"] = "allow"
        if len(reply.body) > self.gzip_min and "gzip" in request.headers.get(hdrs.ACCEPT_ENCODING, ""):
            response.headers["Vary"] = "Accept-Encoding"
            response.enable_compression(web.ContentCoding.gzip)
        log.debug(
            "request_completed",
            method=request.method,
            path=request.path,
            status=reply.status,
            duration_ms=round((time.monotonic() - started) * 1000, 3),
        )
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
        call = Call(request, path[len(route.pattern) :] if route.pattern.endswith("/") else "", pretty=self.pretty)
        return await route.handler(call)
