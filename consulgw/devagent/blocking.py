"""Blocking queries (consul-api.md section 2): parameters, the wait loop, and the query-meta headers.

A read endpoint hands :func:`block` a function that runs its query and returns an :class:`Answer` (value, index,
and the watch topics the answer depends on). ``index`` absent or 0 answers at once; otherwise the loop answers as
soon as the reported index exceeds the client's, or when ``wait`` (default 5m, clamped to 10m, plus up to wait/16
of jitter) runs out. There is no early return when the client's index is ahead of ours: that is how clients notice
a restarted agent. Waiting costs one timer and one shared future per topic; nothing polls.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from consulgw.clock import Clock, SystemClock
from consulgw.devagent.errors import ApiError, bad_request
from consulgw.devagent.watch import Watch
from consulgw.duration import parse_go_duration

DEFAULT_QUERY_TIME = 300.0
MAX_QUERY_TIME = 600.0
JITTER_FRACTION = 16
SHUTDOWN_TOPIC = "agent:shutdown"
_UINT = re.compile(r"[0-9]+")
_ATOI = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryOptions:
    min_index: int = 0
    wait: float = 0.0
    consistency: str = "leader"
    cached: bool = False


@dataclass(slots=True, kw_only=True)
class Answer:
    """A query's index and watch topics; the body is rendered only when the answer is returned, so a parked
    query holds no copy of its result and a spurious wake-up costs an index lookup, not a render."""

    index: int
    topics: tuple[str, ...]
    render: Callable[[], Any] | None = None
    found: bool = True
    # KV single-key reads: while the key stays missing, wake-ups do not end the wait (section 2.2)
    block_while_missing: bool = False

    @property
    def value(self) -> Any:
        return self.render() if self.render is not None else None


def parse_uint64(text: str) -> int | None:
    if not _UINT.fullmatch(text):
        return None
    value = int(text)
    return value if value < 1 << 64 else None


def parse_query_options(params: Any, headers: Any) -> QueryOptions:
    """Parse ``index``, ``wait`` and the consistency parameters; 400 with Consul's texts when they are wrong."""
    allow_stale = "stale" in params
    require_consistent = "consistent" in params
    max_stale = params.get("max_stale", "")
    if max_stale:
        try:
            if parse_go_duration(max_stale) > 0:
                allow_stale = True
        except ValueError as exc:
            raise bad_request(f'Invalid max_stale value "{max_stale}"') from exc
    if "leader" in params:
        allow_stale = require_consistent = False
    cached = "cached" in params
    if allow_stale and require_consistent:
        raise bad_request("Cannot specify ?stale with ?consistent, conflicting semantics.")
    if cached and require_consistent:
        raise bad_request("Cannot specify ?cached with ?consistent, conflicting semantics.")
    for part in headers.get("Cache-Control", "").lower().split(","):
        directive = part.strip()
        for prefix in ("max-age=", "stale-if-error="):
            if directive.startswith(prefix) and not _ATOI.fullmatch(directive[len(prefix) :]):
                raise bad_request("Invalid Cache-Control header.")
    wait = 0.0
    wait_text = params.get("wait", "")
    if wait_text:
        try:
            wait = parse_go_duration(wait_text) / 1e9
        except ValueError as exc:
            raise bad_request("Invalid wait time") from exc
    min_index = 0
    index_text = params.get("index", "")
    if index_text:
        parsed = parse_uint64(index_text)
        if parsed is None:
            raise bad_request("Invalid index")
        min_index = parsed
    consistency = "stale" if allow_stale else "consistent" if require_consistent else "leader"
    return QueryOptions(min_index=min_index, wait=wait, consistency=consistency, cached=cached)


def query_timeout(wait: float, rng: random.Random) -> float:
    """Consul's RPCQueryTimeout: default 5m, clamp 10m, then jitter in [0, timeout/16)."""
    timeout = DEFAULT_QUERY_TIME if wait <= 0 else min(wait, MAX_QUERY_TIME)
    return timeout + rng.random() * (timeout / JITTER_FRACTION)


async def wait_for_topics(watch: Watch, topics: tuple[str, ...], timeout: float, clock: Clock) -> None:
    """Return when any topic is notified or ``timeout`` seconds (of ``clock``) pass.

    With the real clock the timeout is a plain loop timer; an injected clock gets one ``clock.sleep`` task, so
    simulated time drives the wait too.
    """
    all_topics = (*topics, SHUTDOWN_TOPIC)
    futures: list[asyncio.Future[None]] = [watch.acquire(t) for t in all_topics]
    sleeper: asyncio.Task[None] | None = None
    try:
        if isinstance(clock, SystemClock):
            await asyncio.wait(futures, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        else:
            sleeper = asyncio.ensure_future(clock.sleep(timeout))
            await asyncio.wait([*futures, sleeper], return_when=asyncio.FIRST_COMPLETED)
    finally:
        if sleeper is not None:
            sleeper.cancel()
        for topic, fut in zip(all_topics, futures, strict=True):
            watch.release(topic, fut)


async def block(
    query: Callable[[], Answer],
    opts: QueryOptions,
    *,
    watch: Watch,
    clock: Clock,
    rng: random.Random,
    is_closing: Callable[[], bool],
) -> Answer:
    answer = query()
    answer.index = max(answer.index, 1)
    if opts.min_index == 0:
        return answer
    deadline = clock.monotonic() + query_timeout(opts.wait, rng)
    baseline = opts.min_index
    was_missing = False
    while True:
        missing = answer.block_while_missing and not answer.found
        if answer.index > baseline:
            # still missing after a wake-up: Consul treats it as "no change" and moves its baseline
            if not (missing and was_missing):
                return answer
            baseline = answer.index
        was_missing = missing
        remaining = deadline - clock.monotonic()
        if remaining <= 0 or is_closing():
            return answer
        await wait_for_topics(watch, answer.topics, remaining, clock)
        answer = query()
        answer.index = max(answer.index, 1)


def meta_headers(index: int, opts: QueryOptions, *, known_leader: bool = True) -> dict[str, str]:
    headers = {
        "X-Consul-Index": str(max(index, 1)),
        "X-Consul-KnownLeader": "true" if known_leader else "false",
        "X-Consul-LastContact": "0",
        "X-Consul-Effective-Consistency": opts.consistency,
        "X-Consul-Query-Backend": "blocking-query",
    }
    if opts.cached:
        headers["X-Cache"] = "MISS"
    return headers


__all__ = [
    "Answer",
    "ApiError",
    "QueryOptions",
    "block",
    "meta_headers",
    "parse_query_options",
    "query_timeout",
]
