"""Pure state of one blocking-query loop: the next index, error backoff with jitter, and the loop's rate limit.

Consul's client obligations for blocking queries (consul-api.md section 2.3):

1. reset the index to 0 when the returned index goes backwards (snapshot restore, tombstone reaping, a restart);
2. never block on index 0 (it does not block and would busy-loop): a returned 0 is treated as 1;
3. rate-limit the loop with a small token bucket (burst 2) instead of sleeping unconditionally. The watcher takes a
   token only before a request that follows an answer without new data (a blocking query that returned at once with
   nothing new is what spins): an answer that carried a change is followed at once, so a burst of real changes is
   read as fast as Consul makes them;
4. never assume that a return means a change (that is the watcher's job: it compares data).

Nothing here does I/O or sleeps: callers ask how long to wait and sleep on the injected clock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from consulgw.clock import Clock


@dataclass(frozen=True, slots=True, kw_only=True)
class IndexStep:
    """What one successful response did to the index."""

    index: int  # the index to send with the next request (0 = non-blocking re-read)
    reset: bool  # the returned index went backwards: Consul restarted, restored or reaped tombstones
    previous: int  # the last index seen before this response (0 if none)
    returned: int  # the index Consul returned, as sent (may be 0)


class BlockingIndex:
    """The index side of one watch.

    ``index`` is what the next request sends. After a failed request the next one is non-blocking (``index`` 0),
    so a Consul that restarted while we were disconnected is re-read at once instead of after a full ``wait``;
    the last seen index is kept, so a restart is still recognised (and reported) when the index comes back lower.
    """

    __slots__ = ("_index", "_last")

    def __init__(self, start: int = 0) -> None:
        """``start``: an index already read (a watch taking over a service read elsewhere blocks on it at once)."""
        if start < 0:
            raise ValueError(f"start index must be >= 0, got {start!r}")
        self._index = start
        self._last = start

    @property
    def index(self) -> int:
        return self._index

    @property
    def last(self) -> int:
        """The last index Consul returned (after the 0 -> 1 rule), 0 before the first response."""
        return self._last

    def advance(self, returned: int) -> IndexStep:
        """Record a successful response carrying ``X-Consul-Index: returned``."""
        sane = max(returned, 1)
        previous = self._last
        went_back = previous > 0 and sane < previous
        blocking = self._index > 0
        self._last = sane
        # A lower index after a blocking request means the state we blocked on is gone: start over with a full,
        # non-blocking read. After a non-blocking read the data is already fresh, so we can block on it directly.
        self._index = 0 if went_back and blocking else sane
        return IndexStep(index=self._index, reset=went_back, previous=previous, returned=returned)

    def fail(self) -> None:
        """Record a failed request: the next one re-reads without blocking."""
        self._index = 0


class Backoff:
    """Exponential backoff with jitter: ``uniform(d/2, d)`` where ``d = min(cap, base * 2**(failures-1))``."""

    __slots__ = ("_base", "_cap", "_failures", "_rng")

    def __init__(self, rng: random.Random, *, base: float = 0.5, cap: float = 30.0) -> None:
        if base <= 0 or cap < base:
            raise ValueError(f"backoff needs 0 < base <= cap, got base={base!r} cap={cap!r}")
        self._rng = rng
        self._base = base
        self._cap = cap
        self._failures = 0

    @property
    def failures(self) -> int:
        """Consecutive failures since the last success."""
        return self._failures

    def failure(self) -> float:
        """Record a failure and return how long to wait before the next attempt (seconds)."""
        self._failures += 1
        exponent = min(self._failures - 1, 62)
        ceiling = min(self._cap, self._base * 2.0**exponent)
        return self._rng.uniform(ceiling / 2, ceiling)

    def success(self) -> None:
        self._failures = 0


class TokenBucket:
    """A token bucket on the injected clock; ``reserve()`` takes a token and returns how long to wait for it.

    Tokens may go negative (reservations queue up), so a caller that sleeps the returned delay never exceeds
    ``burst`` requests at once nor ``rate`` requests per second on average.
    """

    __slots__ = ("_burst", "_clock", "_rate", "_stamp", "_tokens")

    def __init__(self, clock: Clock, *, rate: float, burst: int = 2) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"token bucket needs rate > 0 and burst >= 1, got rate={rate!r} burst={burst!r}")
        self._clock = clock
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp = clock.monotonic()

    def reserve(self) -> float:
        """Take one token; return 0.0 if it was available, else the seconds until it will be."""
        now = self._clock.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        self._tokens -= 1.0
        if self._tokens >= 0:
            return 0.0
        return -self._tokens / self._rate
