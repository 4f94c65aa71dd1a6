"""Provider metadata from OpenID Connect Discovery / RFC 8414, cached per URL, refreshed, last good kept.

A policy's ``discovery`` URL names the metadata document; from it JWT takes ``jwks_uri`` (and the issuer its tokens
must carry) and introspection takes ``introspection_endpoint``.

- The issuer: OIDC Discovery section 4.3 says the document's ``issuer`` MUST be the issuer URL the document was
  fetched for. ``expected_issuer`` derives it from the URL: ``<issuer>/.well-known/openid-configuration`` (OIDC),
  or ``https://host/.well-known/oauth-authorization-server/<path>`` and
  ``https://host/.well-known/openid-configuration/<path>`` (RFC 8414 section 3 and 5) give ``https://host/<path>``.
  A policy may also name the issuer itself (required when the URL has neither form). A document whose issuer
  differs is refused (a failed fetch); the comparison ignores one trailing ``/`` on either side, because providers
  disagree with their own discovery URLs about it (``https://tenant.example/`` served at
  ``https://tenant.example/.well-known/openid-configuration``). The issuer used to check tokens is the document's.
- The field the caller needs (``jwks_uri`` or ``introspection_endpoint``) must be there, as an http(s) URL;
  a document without it is a failed fetch too, with a reason that says so (Auth0 has no introspection endpoint).
- Refresh, exactly like ``JwksCache``: a document older than ``max_age`` is fetched again; attempts are
  rate-limited to one per ``refresh_interval`` per (URL, issuer, need), whatever the outcome; concurrent callers
  share one fetch; a failed fetch keeps the previous document and logs ``oidc_discovery_failed`` (so at most once
  per refresh interval). Only when no document was ever loaded does ``metadata`` answer None (the caller answers
  503 ``auth_unavailable``).
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import aiohttp
import structlog

from consulgw.auth.fetch import FetchFailed, fetch_json
from consulgw.clock import Clock
from consulgw.tracing.api import NO_TRACER, Tracer

log = structlog.get_logger("consulgw.auth")

Need = Literal["jwks_uri", "introspection_endpoint"]

OIDC_SUFFIX = "/.well-known/openid-configuration"
_RFC8414_PREFIXES = ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration")


def expected_issuer(url: str) -> str | None:
    """The issuer a discovery URL is for, or None when the URL has none of the well-known forms."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return None
    if parts.query or parts.fragment or not parts.netloc:
        return None
    origin = f"{parts.scheme}://{parts.netloc}"
    if parts.path.endswith(OIDC_SUFFIX):
        return origin + parts.path[: -len(OIDC_SUFFIX)]
    for prefix in _RFC8414_PREFIXES:
        if parts.path.startswith(prefix + "/"):
            return origin + parts.path[len(prefix) :]
    return None


def discovery_issuer(url: str, configured: str | None) -> str | None:
    """The issuer a policy's metadata must state: the configured one, else the one the URL names."""
    return configured or expected_issuer(url)


def same_issuer(a: str, b: str) -> bool:
    """Issuer identifiers compared as strings, ignoring one trailing slash (see the module docstring)."""
    return bool(a) and a.removesuffix("/") == b.removesuffix("/")


def is_http_url(value: object) -> bool:
    if not isinstance(value, str) or len(value) > 2048:
        return False
    try:
        parts = urllib.parse.urlsplit(value)
        _ = parts.port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and "@" not in parts.netloc


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderMetadata:
    issuer: str  # as the document states it (tokens carry this exact string)
    jwks_uri: str | None = None
    introspection_endpoint: str | None = None


@dataclass(slots=True)
class _Entry:
    """Runtime state of one (URL, issuer, need) (mutable on purpose; owned by the cache)."""

    metadata: ProviderMetadata | None = None
    fetched_at: float | None = None
    attempted_at: float | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class _Refused(Exception):
    """The document was fetched and is not acceptable (never leaves this module)."""


class DiscoveryCache:
    def __init__(
        self,
        *,
        http: aiohttp.ClientSession,
        clock: Clock,
        timeout: float = 5.0,
        refresh_interval: float = 10.0,
        max_age: float = 600.0,
        max_bytes: int = 1 << 20,
        tracer: Tracer = NO_TRACER,
    ) -> None:
        self._http = http
        self._clock = clock
        self._timeout = timeout
        self._refresh_interval = refresh_interval
        self._max_age = max_age
        self._max_bytes = max_bytes
        self._tracer = tracer
        self._entries: dict[tuple[str, str, Need], _Entry] = {}

    async def metadata(self, url: str, *, issuer: str, need: Need) -> ProviderMetadata | None:
        """The provider's metadata with ``need`` present, or None when none was ever loaded."""
        key = (url, issuer, need)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        if entry.metadata is not None and (not self._stale(entry) or entry.lock.locked()):
            return entry.metadata
        if not entry.lock.locked() and not self._may_fetch(entry):
            return entry.metadata
        async with entry.lock:
            if (entry.metadata is not None and not self._stale(entry)) or not self._may_fetch(entry):
                return entry.metadata
            entry.attempted_at = self._clock.monotonic()
            try:
                metadata = await self._fetch(url, issuer, need)
            except (FetchFailed, _Refused) as exc:
                log.warning(
                    "oidc_discovery_failed", url=url, error=str(exc), keeping_previous=entry.metadata is not None
                )
                return entry.metadata
            if metadata != entry.metadata:
                log.info("oidc_discovery_loaded", url=url, issuer=metadata.issuer, **{need: getattr(metadata, need)})
            entry.metadata = metadata
            entry.fetched_at = self._clock.monotonic()
            return metadata

    def _stale(self, entry: _Entry) -> bool:
        return entry.fetched_at is None or self._clock.monotonic() - entry.fetched_at >= self._max_age

    def _may_fetch(self, entry: _Entry) -> bool:
        return entry.attempted_at is None or self._clock.monotonic() - entry.attempted_at >= self._refresh_interval

    async def _fetch(self, url: str, issuer: str, need: Need) -> ProviderMetadata:
        document = await fetch_json(
            self._http,
            url,
            timeout=self._timeout,
            max_bytes=self._max_bytes,
            tracer=self._tracer,
            purpose="oidc_discovery",
        )
        if not isinstance(document, Mapping):
            raise _Refused("the metadata document is not a JSON object")
        stated = document.get("issuer")
        if not isinstance(stated, str) or not stated:
            raise _Refused("the metadata document has no issuer")
        if not same_issuer(stated, issuer):
            raise _Refused(
                f"the metadata document's issuer {stated[:200]!r} is not {issuer!r} "
                "(OpenID Connect Discovery section 4.3)"
            )
        values: dict[str, str | None] = {}
        for name in ("jwks_uri", "introspection_endpoint"):
            value = document.get(name)
            if value is not None and not is_http_url(value):
                raise _Refused(f"the metadata document's {name} is not an http(s) URL")
            values[name] = value if isinstance(value, str) else None
        if values[need] is None:
            hint = " (the provider may not support token introspection)" if need == "introspection_endpoint" else ""
            raise _Refused(f"the metadata document has no {need}{hint}")
        return ProviderMetadata(
            issuer=stated, jwks_uri=values["jwks_uri"], introspection_endpoint=values["introspection_endpoint"]
        )
