"""CORS, answered by the gateway from the service's ``cors`` policy (the gateway owns CORS for that service).

- Preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``): answered here, never forwarded and
  never authenticated (browsers send preflights without credentials). Allowed origin, method and headers: ``204``
  with ``Access-Control-Allow-Origin``/``-Methods``/``-Headers``/``-Credentials``/``Max-Age``. Anything refused:
  ``403 forbidden`` (the gateway's JSON error) WITHOUT any ``Access-Control-Allow-*`` header, which is what makes
  the browser fail the preflight; the message says which part was refused.
- Actual requests from an allowed origin: ``Access-Control-Allow-Origin`` (the request's origin, or ``*`` when the
  policy is ``["*"]`` without credentials), ``Access-Control-Allow-Credentials: true`` when configured,
  ``Access-Control-Expose-Headers``. They are response edits of the context, so every answer of the request carries
  them: the upstream's, and a 401 or 429 of a later step (a page must be able to read those).
- Upstream ``Access-Control-Allow-Origin``/``-Credentials``/``-Expose-Headers`` are removed, so a backend's own
  CORS answer can never widen the policy. Requests from other origins pass through without CORS headers (CORS is
  enforced by the browser; the server only withholds permission).
- ``Vary: Origin`` is added whenever the answer depends on the origin (every origin list), so shared caches do
  not serve one origin's permission to another.

Origins match exactly (case-insensitively, default ports dropped), ``*`` matches all, and ``https://*.example.com``
matches any subdomain of example.com (not example.com itself), same scheme and port.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from multidict import CIMultiDict

from consulgw.errors import Forbidden
from consulgw.pipeline.answer import Answer
from consulgw.pipeline.chain import Next
from consulgw.pipeline.context import HeaderEdits, Inbound, RequestContext
from consulgw.policy.model import CorsPolicy

ALLOW_ORIGIN = "Access-Control-Allow-Origin"
ALLOW_CREDENTIALS = "Access-Control-Allow-Credentials"
EXPOSE_HEADERS = "Access-Control-Expose-Headers"
ALLOW_METHODS = "Access-Control-Allow-Methods"
ALLOW_HEADERS = "Access-Control-Allow-Headers"
MAX_AGE = "Access-Control-Max-Age"
REQUEST_METHOD = "Access-Control-Request-Method"
REQUEST_HEADERS = "Access-Control-Request-Headers"
_UPSTREAM_CORS = (ALLOW_ORIGIN, ALLOW_CREDENTIALS, EXPOSE_HEADERS)
_PREFLIGHT_VARY = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
_REQUEST_ORIGIN = re.compile(r"(https?)://([a-z0-9.-]+)(:[0-9]{1,5})?")
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


@dataclass(frozen=True, slots=True, kw_only=True)
class CorsStage:
    """Stateless; built once per policy by ``from_policy``."""

    policy: CorsPolicy
    any_origin: bool
    exact: frozenset[str]
    wildcards: tuple[tuple[str, str, str], ...]  # (scheme, ".domain", ":port" or "")
    methods: frozenset[str]
    any_method: bool
    headers: frozenset[str]  # lower case
    any_header: bool
    vary: bool
    passthrough: HeaderEdits  # requests without (an allowed) Origin

    @classmethod
    def from_policy(cls, policy: CorsPolicy) -> CorsStage:
        wildcards: list[tuple[str, str, str]] = []
        exact: set[str] = set()
        for origin in policy.origins:
            scheme, sep, rest = origin.partition("://*.")
            if sep:
                host, colon, port = rest.partition(":")
                wildcards.append((scheme, "." + host, colon + port))
            elif origin != "*":
                exact.add(origin)
        any_origin = "*" in policy.origins
        vary = not any_origin
        return cls(
            policy=policy,
            any_origin=any_origin,
            exact=frozenset(exact),
            wildcards=tuple(wildcards),
            methods=frozenset(policy.methods),
            any_method="*" in policy.methods,
            headers=frozenset(h.lower() for h in policy.headers),
            any_header="*" in policy.headers,
            vary=vary,
            passthrough=HeaderEdits(remove=_UPSTREAM_CORS, add=(("Vary", "Origin"),) if vary else ()),
        )

    async def __call__(self, ctx: RequestContext, request: Inbound, call_next: Next) -> Answer:
        origin = request.headers.get("Origin")
        if origin is not None and request.method == "OPTIONS" and REQUEST_METHOD in request.headers:
            return self._preflight(request, origin)
        if origin is None or not self.allows_origin(origin):
            return await call_next(ctx.with_response(self.passthrough))
        return await call_next(ctx.with_response(self._actual_edits(origin)))

    def allows_origin(self, origin: str) -> bool:
        if self.any_origin:
            return True
        lowered = origin.lower()
        if lowered in self.exact:
            return True
        if not self.wildcards:
            return False
        match = _REQUEST_ORIGIN.fullmatch(lowered)
        if match is None:
            return False
        scheme, host, port = match.group(1), match.group(2), match.group(3) or ""
        if port == _DEFAULT_PORTS[scheme]:
            port = ""
        return any(
            scheme == w_scheme and port == w_port and host.endswith(domain) and len(host) > len(domain)
            for w_scheme, domain, w_port in self.wildcards
        )

    def _allow_origin_value(self, origin: str) -> str:
        return "*" if self.any_origin and not self.policy.credentials else origin

    def _actual_edits(self, origin: str) -> HeaderEdits:
        sets = [(ALLOW_ORIGIN, self._allow_origin_value(origin))]
        if self.policy.credentials:
            sets.append((ALLOW_CREDENTIALS, "true"))
        if self.policy.expose_headers:
            sets.append((EXPOSE_HEADERS, ", ".join(self.policy.expose_headers)))
        return HeaderEdits(
            remove=_UPSTREAM_CORS,
            set=tuple(sets),
            add=(("Vary", "Origin"),) if self.vary else (),
        )

    def _preflight(self, request: Inbound, origin: str) -> Answer:
        vary = {"Vary": _PREFLIGHT_VARY}
        if not self.allows_origin(origin):
            raise Forbidden("CORS preflight refused: origin not allowed", headers=vary)
        method = request.headers.get(REQUEST_METHOD, "").strip()
        if not (self.any_method or method.upper() in self.methods):
            raise Forbidden("CORS preflight refused: method not allowed", headers=vary)
        requested = [h.strip() for h in request.headers.get(REQUEST_HEADERS, "").split(",") if h.strip()]
        if not self.any_header:
            for name in requested:
                if name.lower() not in self.headers:
                    raise Forbidden("CORS preflight refused: request header not allowed", headers=vary)
        headers = {
            ALLOW_ORIGIN: self._allow_origin_value(origin),
            ALLOW_METHODS: method if self.any_method else ", ".join(self.policy.methods),
            "Vary": _PREFLIGHT_VARY,
        }
        if requested:
            headers[ALLOW_HEADERS] = ", ".join(requested) if self.any_header else ", ".join(self.policy.headers)
        if self.policy.credentials:
            headers[ALLOW_CREDENTIALS] = "true"
        if self.policy.max_age is not None:
            headers[MAX_AGE] = str(self.policy.max_age)
        return Answer(status=204, headers=CIMultiDict(headers))
