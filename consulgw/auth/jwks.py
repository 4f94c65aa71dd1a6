"""JWKS key sets fetched from identity providers, cached per URL, refreshed on rotation, kept when the IdP is down.

One ``JwksCache`` lives for the life of the server (``StageDeps.jwks``), so policy rebuilds keep their keys.

- Fetch: ``GET <url>`` over the server's shared aiohttp session with a total ``timeout`` (``consulgw.auth.fetch``:
  no redirects, the body capped at ``max_bytes``); a non-200 status, a body that is not a JWK Set, or a network
  error is a failed fetch.
- Keys are indexed by ``kid``. Keys that cannot verify signatures are skipped: ``use`` other than ``sig``, symmetric
  ``oct`` keys (HMAC secrets belong in the policy, never in a published set), keys PyJWT cannot load (``PyJWK``),
  and anything that is not a public key.
- Refresh: when a token names a ``kid`` the cached set does not have (the IdP rotated its keys), or when the set is
  older than ``max_age``. Attempts are rate-limited to one per ``refresh_interval`` seconds per URL, whatever the
  outcome, so a client sending random ``kid`` values cannot make the gateway hammer the IdP; concurrent requests
  share one fetch (per-URL lock).
- Failure: the previous keys stay in force (stale beats locked out), and ``jwks_fetch_failed`` is logged (at most
  once per refresh interval, since that is how often fetches are tried). A set with no usable key at all counts as
  a failed fetch too (an IdP serving an empty or broken set is far likelier than one revoking every key at once).

Tokens without a ``kid`` are accepted only when exactly one cached key fits the token's algorithm.

A URL is logged without its userinfo and query (``consulgw.redaction.redact_url``): a ``jwks_url`` may carry
``user:pass@`` or ``?api_key=``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp
import structlog
from jwt import PyJWK
from jwt.exceptions import PyJWTError

from consulgw.auth.fetch import FetchFailed, fetch_json
from consulgw.auth.keys import PublicKey, key_fits
from consulgw.clock import Clock
from consulgw.errors import ConsulgwError
from consulgw.redaction import redact_url
from consulgw.tracing.api import NO_TRACER, Tracer

log = structlog.get_logger("consulgw.auth")

_MAX_KEYS = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class _Key:
    kid: str | None
    alg: str | None  # the JWK's own "alg", when it pins one
    key: PublicKey


@dataclass(slots=True)
class _KeySet:
    """Runtime state of one URL (mutable on purpose; owned by the cache)."""

    keys: tuple[_Key, ...] = ()
    fetched_at: float | None = None  # monotonic time of the last successful fetch
    attempted_at: float | None = None  # monotonic time of the last attempt, successful or not
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def find(self, kid: str | None, alg: str) -> PublicKey | None:
        fitting = [k for k in self.keys if (k.alg is None or k.alg == alg) and key_fits(k.key, alg)]
        if kid is None:
            return fitting[0].key if len(fitting) == 1 else None
        for k in fitting:
            if k.kid == kid:
                return k.key
        return None


class _FetchFailed(ConsulgwError):
    """One fetch failed; caught in ``key_for`` (never leaves this module)."""


class JwksCache:
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
        self._sets: dict[str, _KeySet] = {}

    async def key_for(self, url: str, kid: str | None, alg: str) -> PublicKey | None:
        """The public key that verifies a token of ``alg`` naming ``kid``, or None when there is none (yet)."""
        keyset = self._sets.get(url)
        if keyset is None:
            keyset = self._sets[url] = _KeySet()
        key = keyset.find(kid, alg)
        if key is not None and (not self._stale(keyset) or keyset.lock.locked()):
            return key  # fresh, or someone is refreshing right now: do not wait for it
        if not keyset.lock.locked() and not self._may_fetch(keyset):
            return key  # refreshed too recently; when a fetch is in flight, wait for its result below
        async with keyset.lock:
            key = keyset.find(kid, alg)
            if (key is not None and not self._stale(keyset)) or not self._may_fetch(keyset):
                return key  # another request refreshed (or tried to) while we waited
            keyset.attempted_at = self._clock.monotonic()
            try:
                keys = await self._fetch(url)
            except _FetchFailed as exc:
                log.warning("jwks_fetch_failed", url=redact_url(url), error=str(exc), cached_keys=len(keyset.keys))
                return key
            keyset.keys = keys
            keyset.fetched_at = self._clock.monotonic()
            log.info("jwks_refreshed", url=redact_url(url), keys=len(keys))
            return keyset.find(kid, alg)

    def _stale(self, keyset: _KeySet) -> bool:
        return keyset.fetched_at is None or self._clock.monotonic() - keyset.fetched_at >= self._max_age

    def _may_fetch(self, keyset: _KeySet) -> bool:
        return keyset.attempted_at is None or self._clock.monotonic() - keyset.attempted_at >= self._refresh_interval

    async def _fetch(self, url: str) -> tuple[_Key, ...]:
        try:
            document = await fetch_json(
                self._http, url, timeout=self._timeout, max_bytes=self._max_bytes, tracer=self._tracer, purpose="jwks"
            )
        except FetchFailed as exc:
            raise _FetchFailed(str(exc)) from exc
        if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
            raise _FetchFailed('body is not a JWK Set (no "keys" array)')
        keys = _parse_keys(document["keys"])
        if not keys:
            raise _FetchFailed("the key set has no usable signature verification key")
        return keys


def _parse_keys(entries: list[object]) -> tuple[_Key, ...]:
    keys: list[_Key] = []
    for entry in entries[:_MAX_KEYS]:
        if not isinstance(entry, Mapping):
            continue
        if entry.get("use", "sig") != "sig" or entry.get("kty") == "oct":
            continue
        kid = entry.get("kid")
        alg = entry.get("alg")
        if (kid is not None and not isinstance(kid, str)) or (alg is not None and not isinstance(alg, str)):
            continue
        try:
            loaded = PyJWK(dict(entry)).key
        except (PyJWTError, ValueError, TypeError, KeyError):
            continue
        if any(key_fits(loaded, a) for a in ("RS256", "ES256", "ES384", "ES512", "ES256K", "EdDSA")):
            keys.append(_Key(kid=kid, alg=alg, key=loaded))
    return tuple(keys)
