"""The one exception tree of consulgw.

::

    ConsulgwError
    ├── ConfigError              bad flag, env var, tag or KV document (names the key and the value)
    │   └── PolicyError          a KV policy/consumer document that does not validate
    ├── DiscoveryError           Consul could not be read (network, status, undecodable body)
    │   └── ConsulPermissionDenied   Consul answered 403: the ACL token may not read this
    ├── OpenApiError             a service's OpenAPI document could not be fetched or used (the last good one stays)
    └── GatewayError             an answer to a client; carries HTTP status, stable code and extra headers
        ├── InvalidPath                   400 invalid_path (malformed, climbs above the root, ambiguous once decoded)
        ├── AmbiguousCredentials          400 ambiguous_credentials (two Authorization or API-key headers)
        ├── BadRequest                    400 bad_request (a composite's input is missing, a body to transform is not JSON)
        ├── NoRoute                       404 no_route
        ├── MethodNotAllowed              405 method_not_allowed (+ Allow)
        ├── PayloadTooLarge               413 payload_too_large
        ├── RequestTimeout                408 request_timeout (the client stopped sending its body)
        ├── Unauthorized                  401 unauthorized (+ WWW-Authenticate)
        ├── Forbidden                     403 forbidden
        ├── AuthUnavailable               503 auth_unavailable (the identity provider cannot answer)
        ├── RateLimited                   429 rate_limited (+ RateLimit-*, Retry-After)
        ├── RateLimitBackendUnavailable   503 rate_limit_unavailable
        ├── NoHealthyUpstream             503 no_healthy_upstream
        ├── CircuitOpen                   503 circuit_open
        ├── Overloaded                    503 overloaded (the service's max_in_flight is reached)
        ├── CacheUnavailable              503 cache_unavailable (the cache's Redis failed and on_backend_error is deny)
        ├── TransformFailed               502 transform_failed (an answer to transform is not JSON or too large; on_error fail)
        └── UpstreamError
            ├── UpstreamUnreachable       502 upstream_unreachable (connect failed, reset before response)
            ├── UpstreamTimeout           504 upstream_timeout
            └── CompositeCallFailed       502 composite_call_failed (a required call of a composite route failed)

Foreign exceptions (aiohttp, redis, jwt) are translated where they are caught, once, with ``raise ... from exc``.
Messages of GatewayError are shown to clients: they never contain secrets.
"""

from __future__ import annotations

from collections.abc import Mapping


class ConsulgwError(Exception):
    """Base of every error consulgw raises on purpose."""


class ConfigError(ConsulgwError):
    """Invalid configuration input; the message names the key and the offending value."""


class PolicyError(ConfigError):
    """A KV policy or consumer document that was rejected; the previous good one stays in force."""


class DiscoveryError(ConsulgwError):
    """Consul could not be read."""


class OpenApiError(ConsulgwError):
    """A service's OpenAPI document could not be fetched, parsed or used; the last good one stays in use."""


class ConsulPermissionDenied(DiscoveryError):
    """Consul answered 403 (``Permission denied``, ``ACL not found``): the token may not read this endpoint."""


class GatewayError(ConsulgwError):
    """An error answered to the client as JSON ``{"error", "message", "request_id"}``."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers: dict[str, str] = dict(headers or {})


class InvalidPath(GatewayError):
    """The request path is malformed, climbs above the root, or would mean another path to an upstream that decodes
    what the gateway keeps encoded (``consulgw.routing.path``)."""

    status = 400
    code = "invalid_path"


class AmbiguousCredentials(GatewayError):
    """More than one credential header of one kind: the gateway would verify one and the upstream might read another."""

    status = 400
    code = "ambiguous_credentials"


class BadRequest(GatewayError):
    status = 400
    code = "bad_request"


class NoRoute(GatewayError):
    status = 404
    code = "no_route"


class MethodNotAllowed(GatewayError):
    status = 405
    code = "method_not_allowed"


class PayloadTooLarge(GatewayError):
    status = 413
    code = "payload_too_large"


class Unauthorized(GatewayError):
    status = 401
    code = "unauthorized"


class Forbidden(GatewayError):
    status = 403
    code = "forbidden"


class RequestTimeout(GatewayError):
    """The client went silent for longer than ``--client-body-timeout`` while sending its body."""

    status = 408
    code = "request_timeout"


class Overloaded(GatewayError):
    """The service already has ``max_in_flight`` requests on their way to its instances."""

    status = 503
    code = "overloaded"


class AuthUnavailable(GatewayError):
    """The identity provider could not vouch for a credential (introspection timeout, 5xx, not JSON, no ``active``;
    discovery never loaded). Never a 401: the client's credential may be fine, the gateway cannot tell."""

    status = 503
    code = "auth_unavailable"


class RateLimited(GatewayError):
    status = 429
    code = "rate_limited"


class RateLimitBackendUnavailable(GatewayError):
    status = 503
    code = "rate_limit_unavailable"


class NoHealthyUpstream(GatewayError):
    status = 503
    code = "no_healthy_upstream"


class CircuitOpen(GatewayError):
    status = 503
    code = "circuit_open"


class UpstreamError(GatewayError):
    """A failed upstream attempt. ``kind`` is a fixed vocabulary (metric label); ``connect_failed`` means no byte
    of the request reached the instance, so any method may be retried elsewhere."""

    status = 502
    code = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        kind: str = "error",
        connect_failed: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, headers=headers)
        self.kind = kind
        self.connect_failed = connect_failed
        self.attempts = 0  # set by the Forwarder when it gives up: how many instances it tried
        self.failures: tuple[str, ...] = ()  # and how each attempt failed


class UpstreamUnreachable(UpstreamError):
    status = 502
    code = "upstream_unreachable"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class CacheUnavailable(GatewayError):
    status = 503
    code = "cache_unavailable"


class TransformFailed(GatewayError):
    """An answer the policy says to transform could not be (not JSON, or larger than the transform's cap)."""

    status = 502
    code = "transform_failed"


class CompositeCallFailed(UpstreamError):
    """A required call of a composite route failed; the message names the call."""

    status = 502
    code = "composite_call_failed"
