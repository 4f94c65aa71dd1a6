"""Typed, validated policy values. Parsed once from KV JSON (consulgw.policy.parse); read on the request path.

Names mirror the KV document keys, which are part of the public contract (docs/policies.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from consulgw.model.balancing import HashKey, LbAlgorithm
from consulgw.model.snapshot import Instance
from consulgw.routing.rules import RouteSpec

# What a retry may be triggered by: a failed connect, a read timeout (only before any byte was sent back),
# or one of these upstream statuses. Retries only ever apply to idempotent methods.
RETRY_CONDITIONS: frozenset[str] = frozenset({"connect_failure", "timeout", "500", "502", "503", "504"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    connect: float = 2.0  # seconds to establish the upstream connection
    read: float = 30.0  # seconds of silence allowed while waiting for/reading the upstream response


@dataclass(frozen=True, slots=True, kw_only=True)
class Retries:
    attempts: int = 1  # extra attempts after the first, each on another instance
    on: frozenset[str] = frozenset({"connect_failure"})


@dataclass(frozen=True, slots=True, kw_only=True)
class JwtAuth:
    algorithms: tuple[str, ...]
    secret: str | None = field(default=None, repr=False)  # HS*: shared secret
    public_key: str | None = None  # RS*/ES*/PS*/EdDSA: PEM
    jwks_url: str | None = None  # RS*/ES*/PS*/EdDSA: key set fetched, cached, refreshed on unknown kid
    discovery: str | None = None  # RS*/ES*/PS*/EdDSA: OIDC metadata URL giving jwks_uri and the issuer
    issuer: str | None = None
    audience: tuple[str, ...] = ()
    required_scopes: frozenset[str] = frozenset()
    leeway: float = 0.0
    header: str = "Authorization"  # "Bearer <token>"
    hide_credentials: bool = False  # strip the credential header before forwarding
    type: Literal["jwt"] = "jwt"


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiKeyAuth:
    header: str = "X-API-Key"
    required_scopes: frozenset[str] = frozenset()  # the consumer's scopes must include these (else 403)
    hide_credentials: bool = False
    type: Literal["api_key"] = "api_key"


@dataclass(frozen=True, slots=True, kw_only=True)
class BasicAuth:
    realm: str = "consulgw"
    required_scopes: frozenset[str] = frozenset()
    hide_credentials: bool = False
    type: Literal["basic"] = "basic"


# -- auth: OAuth2 token introspection (RFC 7662) ------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class IntrospectionAuth:
    """Bearer tokens checked by the authorization server's introspection endpoint (consulgw.auth.introspection)."""

    client_id: str
    client_secret: str = field(repr=False)
    endpoint: str | None = None  # exactly one of endpoint / discovery
    discovery: str | None = None  # metadata URL whose introspection_endpoint is used
    client_auth: Literal["basic", "post"] = "basic"  # client_secret_basic / client_secret_post
    token_type_hint: str | None = "access_token"
    timeout: float = 2.0
    cache_ttl: float = 60.0  # positive answers, capped by the token's exp; 0 = ask every time
    negative_cache_ttl: float = 10.0  # inactive answers; 0 = not cached
    cache: Literal["memory", "redis"] = "memory"  # redis: shared by gateways (memory stays in front of it)
    cache_max_entries: int = 10_000
    issuer: str | None = None
    audience: tuple[str, ...] = ()
    required_scopes: frozenset[str] = frozenset()
    leeway: float = 0.0
    claims_to_headers: tuple[tuple[str, str], ...] = ()  # (header, claim)
    header: str = "Authorization"
    hide_credentials: bool = False
    type: Literal["introspection"] = "introspection"


AuthPolicy = JwtAuth | ApiKeyAuth | BasicAuth | IntrospectionAuth


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitPolicy:
    requests: int  # admitted per window
    per: float  # window length, seconds
    key: str = "ip"  # "ip" | "consumer" | "header:<name>"
    backend: Literal["local", "redis"] = "local"
    on_backend_error: Literal["allow", "deny"] = "allow"
    burst: int = 0  # extra requests admitted at once on top of the steady rate (GCRA burst)


@dataclass(frozen=True, slots=True, kw_only=True)
class Fallback:
    """A canned response served when every instance's breaker is open."""

    status: int = 503
    body: str = ""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerPolicy:
    failure_threshold: int = 5  # consecutive failures that open one instance's breaker
    recovery_timeout: float = 30.0  # seconds open before one half-open probe is let through
    failure_statuses: frozenset[int] = frozenset({502, 503, 504})
    fallback: Fallback | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CorsPolicy:
    origins: tuple[str, ...]  # exact origins, or "*"
    methods: tuple[str, ...] = ("GET", "HEAD", "POST")
    headers: tuple[str, ...] = ()  # allowed request headers
    expose_headers: tuple[str, ...] = ()
    credentials: bool = False
    max_age: int | None = None  # seconds


@dataclass(frozen=True, slots=True, kw_only=True)
class HeaderRules:
    add: tuple[tuple[str, str], ...] = ()
    set: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class HeaderPolicy:
    request: HeaderRules = field(default_factory=HeaderRules)
    response: HeaderRules = field(default_factory=HeaderRules)


# -- openapi: where the gateway finds a service's OpenAPI document (consulgw.openapi) --------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenApiPolicy:
    """How the gateway fetches a service's OpenAPI document. Without this section, Service Meta ``gw-openapi``
    (the document's path on the instance) decides whether there is one, with these defaults."""

    path: str | None = None  # path on the instance; overrides Meta gw-openapi when set
    include: bool = True  # False leaves the service out of /-/openapi.json even when it advertises a document
    refresh: float = 300.0  # seconds between fetches of an unchanged service
    max_bytes: int = 2 * 1024 * 1024  # a larger document is refused (the last good one stays)
    timeout: float = 3.0  # seconds for the whole fetch


DEFAULT_OPENAPI = OpenApiPolicy()


# -- tracing: per-service sampling and captured headers (consulgw.tracing) ------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TracingPolicy:
    """How this service's requests are traced when tracing is on (``OTEL_*``); ignored when it is off."""

    sample_ratio: float | None = None  # root sampling probability; None: the process sampler's (OTEL_TRACES_SAMPLER)
    capture_request: tuple[str, ...] = ()  # request headers recorded as http.request.header.<name> (never credentials)
    capture_response: tuple[str, ...] = ()  # response headers recorded as http.response.header.<name>


DEFAULT_TRACING = TracingPolicy()
# -- cache: response caching (consulgw.cache, consulgw.pipeline.stages.cache) ------------------------------------

# RFC 9110 section 15.1: statuses cacheable by default (heuristically), without 206 (ranges are not cached).
HEURISTIC_STATUSES: frozenset[int] = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
DEFAULT_CACHE_STATUSES: frozenset[int] = frozenset({200, 203, 204, 300, 301, 404, 410})


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheKeyPolicy:
    """What a cache key is made of besides service, method, host, path and ``Accept-Encoding`` (always)."""

    query: Literal["all", "none"] | tuple[str, ...] = "all"  # every parameter (sorted), none, or these names
    headers: tuple[str, ...] = ()  # request headers whose values are part of the key (lower case)
    per_consumer: bool = True  # the verified consumer is part of the key (credentialed requests get own entries)


@dataclass(frozen=True, slots=True, kw_only=True)
class CachePolicy:
    backend: Literal["memory", "redis"] = "memory"
    mode: Literal["rfc9111", "override"] = "rfc9111"  # override: ``ttl`` whatever the upstream says
    ttl: float = 60.0  # seconds; rfc9111: only when the answer gives no freshness of its own
    methods: frozenset[str] = frozenset({"GET", "HEAD"})  # HEAD is answered from GET entries
    statuses: frozenset[int] = DEFAULT_CACHE_STATUSES
    key: CacheKeyPolicy = field(default_factory=CacheKeyPolicy)
    max_body_bytes: int = 1024 * 1024  # larger answers stream through uncached
    stale_while_revalidate: float = 0.0  # seconds a stale entry is served while one background fill refreshes it
    stale_if_error: float = 0.0  # seconds a stale entry is served when the upstream fails
    on_backend_error: Literal["bypass", "deny"] = "bypass"  # Redis unavailable: go to the upstream, or 503


# -- transform: request and response rewriting (consulgw.pipeline.stages.transform) -----------------------------

PlaceholderKind = Literal["sub", "consumer", "request_id", "query", "header"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Placeholder:
    """One value of the closed placeholder set: ``{sub}``, ``{consumer}``, ``{request_id}``, ``{query.<name>}``,
    ``{header.<name>}`` (consulgw.pipeline.stages.placeholders resolves them per request)."""

    kind: PlaceholderKind
    name: str = ""  # the query parameter or header name (header names lower case)

    @property
    def text(self) -> str:
        return "{" + (f"{self.kind}.{self.name}" if self.name else self.kind) + "}"


Text = str | Placeholder  # a constant string or a placeholder
JsonPath = tuple[str | None, ...]  # dotted path segments; None is ``[*]`` (every element of an array)


@dataclass(frozen=True, slots=True, kw_only=True)
class JsonValue:
    """A value of a JSON ``set``: a JSON constant (kept as its JSON text, so the model stays hashable) or a
    placeholder (a string that is exactly one placeholder)."""

    json: str | None = None
    placeholder: Placeholder | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FieldOps:
    """Edits of headers or query parameters, applied in the order remove, rename, set (replace), add (append)."""

    remove: tuple[str, ...] = ()
    rename: tuple[tuple[str, str], ...] = ()
    set: tuple[tuple[str, Text], ...] = ()
    add: tuple[tuple[str, Text], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.remove or self.rename or self.set or self.add)


@dataclass(frozen=True, slots=True, kw_only=True)
class JsonOps:
    """Edits of a JSON body, applied in the order remove, rename, set, then ``allow`` (keep only these paths)."""

    remove: tuple[JsonPath, ...] = ()
    rename: tuple[tuple[JsonPath, str], ...] = ()  # the last key of the path gets the new name, in place
    set: tuple[tuple[JsonPath, JsonValue], ...] = ()
    allow: tuple[JsonPath, ...] | None = None  # responses only

    def __bool__(self) -> bool:
        return bool(self.remove or self.rename or self.set or self.allow is not None)


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestTransform:
    headers: FieldOps = field(default_factory=FieldOps)
    query: FieldOps = field(default_factory=FieldOps)
    path_prefix: tuple[str, str] | None = None  # (from, to), on whole path segments
    json: JsonOps = field(default_factory=JsonOps)


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseTransform:
    json: JsonOps = field(default_factory=JsonOps)
    statuses: frozenset[int] | None = None  # None: every 2xx answer


@dataclass(frozen=True, slots=True, kw_only=True)
class TransformPolicy:
    request: RequestTransform = field(default_factory=RequestTransform)
    response: ResponseTransform = field(default_factory=ResponseTransform)
    max_body_bytes: int = 1024 * 1024  # larger bodies pass untouched (on_error pass) or are refused (fail)
    on_error: Literal["pass", "fail"] = "pass"  # a body that is not JSON or too large: untouched, or 502/413/400


# -- traffic management: subsets, split, sticky sessions, slow start, mirroring (issue 9) -----------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Subset:
    """A named slice of a service's instances, or another Consul service's whole pool (``service``)."""

    name: str
    meta: tuple[tuple[str, tuple[str, ...]], ...] = ()  # every key present with one of its values
    tags: tuple[str, ...] = ()  # every one of these tags
    without_tags: tuple[str, ...] = ()  # none of these (written "!tag")
    service: str | None = None  # another Consul service: its pool, as it is (health, Weights, lb, breakers)

    def selects(self, instance: Instance) -> bool:
        """Does this (selector) subset include ``instance``? (Always False for a ``service`` subset.)"""
        if self.service is not None:
            return False
        meta = instance.meta
        for key, values in self.meta:
            if meta.get(key) not in values:
                return False
        tags = instance.tags
        return all(tag in tags for tag in self.tags) and not any(tag in tags for tag in self.without_tags)


@dataclass(frozen=True, slots=True, kw_only=True)
class SplitMatch:
    """One ``split.match`` rule: every condition listed must hold (a header, cookie or query value among the listed
    ones; the verified consumer among ``consumers``); the request then goes to subset ``to``."""

    to: str
    headers: tuple[tuple[str, tuple[str, ...]], ...] = ()  # lower-case name -> accepted values
    cookies: tuple[tuple[str, tuple[str, ...]], ...] = ()
    query: tuple[tuple[str, tuple[str, ...]], ...] = ()
    consumers: frozenset[str] = frozenset()


SPLIT_COOKIE = "gw_split"  # the id cookie the gateway sets for ``"hash": "cookie"``


@dataclass(frozen=True, slots=True, kw_only=True)
class SplitPolicy:
    default: str
    weights: tuple[tuple[str, int], ...] = ()  # subset -> relative weight (0: only reachable by a match)
    match: tuple[SplitMatch, ...] = ()
    hash: HashKey | None = field(default_factory=lambda: HashKey("cookie", SPLIT_COOKIE))  # None: per request
    on_empty: Literal["default", "fail"] = "default"
    response_header: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class StickyPolicy:
    cookie: str = "gw_sticky"
    max_age: float | None = None  # None: a session cookie
    path: str = "/"
    secure: bool = True
    http_only: bool = True
    same_site: Literal["lax", "strict", "none"] | None = "lax"
    on_unavailable: Literal["repick", "fail"] = "repick"
    keep_draining: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class SlowStartPolicy:
    window: float  # seconds over which a joining instance ramps up to its full weight


@dataclass(frozen=True, slots=True, kw_only=True)
class MirrorTarget:
    service: str | None = None  # exactly one of service / subset
    subset: str | None = None
    percent: float = 100.0

    @property
    def label(self) -> str:
        """The target as metrics and /-/routes name it: ``service:<name>`` or ``subset:<name>``."""
        return f"service:{self.service}" if self.service is not None else f"subset:{self.subset}"


@dataclass(frozen=True, slots=True, kw_only=True)
class MirrorPolicy:
    to: tuple[MirrorTarget, ...]
    methods: frozenset[str] = frozenset({"GET", "HEAD"})
    max_body_bytes: int = 65536
    timeout: float = 2.0
    max_in_flight: int = 64
    headers: HeaderRules = field(default_factory=HeaderRules)  # applied to the mirrored request only


@dataclass(frozen=True, slots=True, kw_only=True)
class FailoverPolicy:
    """``failover``: other datacenters that serve the service while the local one has too few routable instances."""

    datacenters: tuple[str, ...]  # in order of preference
    min_healthy: int = 1  # routable (weight > 0) instances a datacenter needs to serve
    failback_after: float = 30.0  # seconds the local datacenter must stay healthy before traffic returns
    address: Literal["wan", "lan"] = "wan"  # remote instances: TaggedAddresses wan/wan_ipv4, else their address
    watch: Literal["warm"] = "warm"  # remote watches always run ("cold" is refused: not built)
    response_header: bool = False  # X-Gateway-Datacenter on every answer


@dataclass(frozen=True, slots=True, kw_only=True)
class ServicePolicy:
    """The effective policy of one service: ``consulgw/defaults`` merged under ``consulgw/services/<name>``."""

    lb: LbAlgorithm | None = None  # overrides the gw.lb tag when set
    timeouts: Timeouts = field(default_factory=Timeouts)
    retries: Retries = field(default_factory=Retries)
    auth: AuthPolicy | None = None
    rate_limit: RateLimitPolicy | None = None
    circuit_breaker: BreakerPolicy | None = None
    cors: CorsPolicy | None = None
    headers: HeaderPolicy = field(default_factory=HeaderPolicy)
    max_body_bytes: int | None = None
    buffer_request: bool = True  # buffering.request: receive the whole body before contacting the upstream
    max_in_flight: int | None = None  # requests on their way to the instances at once; beyond, 503 overloaded
    openapi: OpenApiPolicy = DEFAULT_OPENAPI
    tracing: TracingPolicy = DEFAULT_TRACING
    cache: CachePolicy | None = None
    transform: TransformPolicy | None = None
    # Traffic management (issue 9).
    lb_key: HashKey | None = None  # the hash balancer's key when the lb object names one other than the client IP
    subsets: tuple[Subset, ...] = ()
    split: SplitPolicy | None = None
    sticky: StickyPolicy | None = None
    slow_start: SlowStartPolicy | None = None
    mirror: MirrorPolicy | None = None
    failover: FailoverPolicy | None = None

    def subset(self, name: str) -> Subset | None:
        for subset in self.subsets:
            if subset.name == name:
                return subset
        return None

    def referenced_services(self) -> frozenset[str]:
        """Other Consul services this policy sends traffic to (subsets and mirror targets): watched by the gateway
        even when they have no route of their own."""
        names = {s.service for s in self.subsets if s.service is not None}
        if self.mirror is not None:
            names.update(t.service for t in self.mirror.to if t.service is not None)
        return frozenset(names)


DEFAULT_POLICY = ServicePolicy()


# -- composites: routes the gateway answers by calling several services (consulgw.composite) ---------------------

COMPOSITE_SECTIONS = ("auth", "rate_limit", "cors", "cache", "headers", "timeouts")  # policy sections a composite has


@dataclass(frozen=True, slots=True, kw_only=True)
class PathTemplate:
    """An upstream request-target with placeholders: constant parts and placeholders, in order."""

    text: str
    parts: tuple[Text, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class CompositeCall:
    name: str
    service: str
    path: PathTemplate
    required: bool = False
    timeout: float | None = None  # the call's own, else the composite's timeouts.read; None: the deadline only
    default: str | None = None  # JSON text used when an optional call fails; None: the call's key is left out


@dataclass(frozen=True, slots=True, kw_only=True)
class CompositePolicy:
    """``consulgw/composites/<name>``: a route answered by calling ``calls`` concurrently and merging their JSON."""

    name: str
    route: RouteSpec  # service "composite:<name>", tag: the KV key
    timeout: float = 5.0  # the whole answer's deadline, seconds
    calls: tuple[CompositeCall, ...] = ()  # in declaration order
    merge: Literal["nest", "shallow"] = "nest"
    forward_headers: tuple[str, ...] = ()
    partial_status: int = 200
    max_body_bytes: int = 1024 * 1024  # per call: larger answers count as failed calls
    policy: ServicePolicy = DEFAULT_POLICY  # auth, rate_limit, cors, cache, headers, timeouts

    @property
    def label(self) -> str:
        """The name the route table, metrics and logs use (never clashes with a Consul service of that name)."""
        return self.route.service


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsumerRateLimit:
    """A consumer's own limit, replacing the service's requests/per when the limit is keyed by consumer."""

    requests: int
    per: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Consumer:
    """An API client, from ``consulgw/consumers/<name>``. Secrets are stored only as hashes."""

    name: str
    api_key_sha256: frozenset[str] = frozenset()  # lower-case hex digests
    password_hash: str | None = field(default=None, repr=False)  # see consulgw.policy.consumers for the format
    scopes: frozenset[str] = frozenset()
    rate_limit: ConsumerRateLimit | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyBook:
    """Everything KV says, validated. Built whole and swapped; a rejected document keeps its previous good value."""

    defaults: ServicePolicy = DEFAULT_POLICY
    services: Mapping[str, ServicePolicy] = field(default_factory=lambda: MappingProxyType({}))
    consumers: Mapping[str, Consumer] = field(default_factory=lambda: MappingProxyType({}))
    consumers_by_key: Mapping[str, Consumer] = field(default_factory=lambda: MappingProxyType({}))  # sha256 -> consumer
    errors: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # KV key -> why it was rejected
    composites: Mapping[str, CompositePolicy] = field(default_factory=lambda: MappingProxyType({}))  # by name
    # The last good ``defaults`` JSON object: what every service document is merged onto (consulgw.policy.book).
    defaults_document: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}), repr=False)
    # The raw KV values this book was built from (relative key -> bytes), so the next build re-parses only changes.
    sources: Mapping[str, bytes | None] = field(default_factory=lambda: MappingProxyType({}), repr=False, compare=False)

    def for_service(self, name: str) -> ServicePolicy:
        return self.services.get(name, self.defaults)
