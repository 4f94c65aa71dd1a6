"""What the policy stages need from the server, injected once per (service, policy) build.

Long-lived, shared objects (``jwks``, ``local_limits``, ``redis_outage``, ``verified_passwords``) are created by the
server for the life of the process and passed to every build, so a policy edit neither drops cached keys nor
resets rate-limit counters. ``consumers`` returns the current ``PolicyBook`` on every call, so consumer edits apply
to the next request without rebuilding stages.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

from consulgw.auth.basic import VerifiedPasswords
from consulgw.auth.jwks import JwksCache
from consulgw.cache.owner import CacheOwner
from consulgw.clock import Clock
from consulgw.metrics import GatewayMetrics
from consulgw.pipeline.context import Inbound
from consulgw.pipeline.stages.inflight import InFlight
from consulgw.policy.model import PolicyBook
from consulgw.ratelimit.local import LocalLimiter
from consulgw.ratelimit.outage import BackendOutage
from consulgw.ratelimit.redisstore import RedisLimiter
from consulgw.redisclient import RedisClient
from consulgw.tracing.api import NO_TRACER, Tracer


@dataclass(frozen=True, slots=True, kw_only=True)
class StageDeps:
    service: str
    clock: Clock
    rng: random.Random
    metrics: GatewayMetrics
    http: aiohttp.ClientSession  # owned by the server (JWKS fetches)
    redis: RedisClient | None  # owned by the server (consulgw.redisclient); None when no Redis is configured
    consumers: Callable[[], PolicyBook]  # the CURRENT book
    jwks: JwksCache  # shared across rebuilds, keyed by URL
    local_limits: LocalLimiter  # shared across rebuilds
    # Shared across rebuilds and services when the server passes one; a fresh one per build is correct but logs a
    # Redis outage once per service instead of once per process.
    redis_outage: BackendOutage = field(default_factory=BackendOutage)
    in_flight: InFlight = field(default_factory=InFlight)  # shared by the server across rebuilds (max_in_flight)
    # One per Redis client, owned by the server: concurrent decisions of every service share its batches.
    redis_limiter: RedisLimiter | None = None
    verified_passwords: VerifiedPasswords = field(default_factory=VerifiedPasswords)
    redis_timeout: float = 0.25  # seconds per rate-limit decision before on_backend_error applies
    worker_index: int = 0  # this process's index among `consulgw serve --workers N` (0-based)
    worker_count: int = 1  # N: the local backend enforces 1/N of each limit per worker (consulgw.ratelimit.local)
    tracer: Tracer = NO_TRACER  # CLIENT spans of identity-provider and Redis calls (consulgw.tracing)
    # The process's cache (stores, fills in flight, background refreshes); None outside a gateway: no cache step.
    cache: CacheOwner | None = None
    # Invites a client that sent ``Expect: 100-continue`` to send its body (a step that reads the body itself).
    send_continue: Callable[[Inbound], Awaitable[None]] | None = None
    # How long a client may take to send its body, for a step that reads it itself (as the forwarder does: 408).
    body_timeout: float = 30.0
    body_min_rate: int = 500
