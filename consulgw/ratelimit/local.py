"""The in-process GCRA store (``backend: local``).

Memory is bounded two ways. A key whose theoretical arrival time has passed carries no information (GCRA treats it
exactly like a key never seen), so such keys are dropped as they reach the old end of the least-recently-updated
order, a few per decision. And the number of keys is capped (``max_keys``): when the cap is reached the
least-recently-updated key is forgotten even if it is still in debt, which lets that one key start afresh; a
warning is logged once per ``eviction_log_interval`` seconds while that happens, since it means the cap is too small
for the traffic (or someone is spraying keys, e.g. random header values).

Several worker processes (``consulgw serve --workers N``): each process has its own store, so an undivided local
limit would admit N times the configured rate. The stage therefore enforces ``Quota.for_worker(index, count)``:
the steady rate is divided by N and the capacity split so the shares add up to the configured one. That makes the
configured limit an honest upper bound over all workers (exact in the long run), at a price: a client whose
requests all land on one worker (one keep-alive connection, say) gets only that worker's share. When the limit must
be exact per client across workers or hosts, use ``backend: redis``. Shared memory across workers was rejected:
it needs a cross-process lock on every request and couples the store to how the server forks its workers.

This store lives for the life of the process and is shared across policy rebuilds (``StageDeps.local_limits``), so
editing a service's policy does not reset anyone's counters. It is touched only from the event loop thread.
"""

from __future__ import annotations

from collections import OrderedDict

import structlog

from consulgw.clock import Clock
from consulgw.ratelimit.gcra import US, Decision, Quota, decide, step

_SWEEP_PER_CALL = 4

log = structlog.get_logger("consulgw.ratelimit")


class LocalLimiter:
    """GCRA state of this process, keyed by namespaced key strings (see ``consulgw.ratelimit.keys``)."""

    def __init__(self, *, clock: Clock, max_keys: int = 100_000, eviction_log_interval: float = 60.0) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys!r}")
        self._clock = clock
        self._max_keys = max_keys
        self._tats: OrderedDict[str, int] = OrderedDict()
        self._eviction_log_interval = eviction_log_interval
        self._last_eviction_log: float | None = None
        self._evicted = 0

    def __len__(self) -> int:
        return len(self._tats)

    def acquire(self, key: str, quota: Quota) -> Decision:
        now = int(self._clock.monotonic() * US)
        self._sweep(now)
        tat = self._tats.get(key)
        allowed, new_tat = step(tat, now, quota)
        if allowed:
            if tat is None and len(self._tats) >= self._max_keys:
                self._evict()
            self._tats[key] = new_tat
            self._tats.move_to_end(key)
        return decide(allowed, new_tat - now, quota)

    def _sweep(self, now: int) -> None:
        for _ in range(_SWEEP_PER_CALL):
            if not self._tats:
                return
            key, tat = next(iter(self._tats.items()))
            if tat > now:
                return
            del self._tats[key]

    def _evict(self) -> None:
        self._tats.popitem(last=False)
        self._evicted += 1
        now = self._clock.monotonic()
        if self._last_eviction_log is None or now - self._last_eviction_log >= self._eviction_log_interval:
            log.warning("rate_limit_keys_evicted", evicted=self._evicted, max_keys=self._max_keys)
            self._last_eviction_log = now
            self._evicted = 0
