"""One bounded JSON request to an identity provider (JWKS, discovery metadata, introspection).

Over the server's shared aiohttp session, with a total timeout, no redirects (a 3xx is a failure: an IdP that moved
must be reconfigured, and a redirected POST would lose its body and credentials), the body capped at ``max_bytes``
while it streams. A non-200 status, a bigger body, a network error, a timeout or a body that is not JSON raise
``FetchFailed``, whose message is ours (status, size, exception type) and never echoes what was sent: requests
carry client secrets and tokens.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import aiohttp

from consulgw.errors import ConsulgwError
from consulgw.redaction import redact_urls
from consulgw.tracing.api import NO_TRACER, Call, Tracer

MAX_DOCUMENT_BYTES = 1 << 20


class FetchFailed(ConsulgwError):
    """A request to an identity provider failed; the message is safe to log."""


async def fetch_json(
    http: aiohttp.ClientSession,
    url: str,
    *,
    timeout: float,
    max_bytes: int = MAX_DOCUMENT_BYTES,
    form: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    tracer: Tracer = NO_TRACER,
    purpose: str = "fetch",
) -> object:
    """The decoded JSON body of a 200 answer to ``GET url`` (or ``POST`` of the urlencoded ``form``).

    With a ``tracer``, the call is a CLIENT span (``consulgw.call`` = ``purpose``) and sends its ``traceparent``.
    """
    method = "POST" if form is not None else "GET"
    with tracer.http_call(method, url, purpose) as call:
        return await _fetch_json(
            http, url, method, timeout, max_bytes, form, {**(headers or {}), **call.headers()}, call
        )


async def _fetch_json(
    http: aiohttp.ClientSession,
    url: str,
    method: str,
    timeout: float,
    max_bytes: int,
    form: Mapping[str, str] | None,
    headers: Mapping[str, str],
    call: Call,
) -> object:
    sent = {"Accept": "application/json", **headers}
    try:
        async with http.request(
            method,
            url,
            data=dict(form) if form is not None else None,
            headers=sent,
            timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=False,
        ) as resp:
            call.status(resp.status)
            if resp.status != 200:
                raise FetchFailed(f"HTTP status {resp.status}")
            if resp.content_length is not None and resp.content_length > max_bytes:
                raise FetchFailed(f"body larger than {max_bytes} bytes")
            body = bytearray()
            async for chunk in resp.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > max_bytes:
                    raise FetchFailed(f"body larger than {max_bytes} bytes")
    except TimeoutError as exc:
        call.failed("timeout")
        raise FetchFailed(f"no answer within {timeout:g}s") from exc
    except (aiohttp.ClientError, OSError) as exc:
        call.failed(type(exc).__name__)
        raise FetchFailed(f"{type(exc).__name__}: {redact_urls(str(exc))}") from exc
    try:
        return json.loads(bytes(body))
    except (ValueError, RecursionError) as exc:
        call.failed("invalid_json")
        raise FetchFailed("body is not JSON") from exc
