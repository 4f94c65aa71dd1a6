"""How a bounded number of connections covers any number of routed services: pure state, no I/O.

Every routed service is either **live** (it has its own blocking watch of ``/v1/health/service/<name>``: a change is
read the moment Consul makes it) or **parked** (no connection of its own: its last answer and index are kept, and
it is read again when something says it may have changed). At most ``capacity`` services are live. Which ones:

- while there is room, every service that needs reading becomes live;
- when the live set is full, a service that shows a change takes the slot of the live service that has been quiet the
  longest, but only if that one has been quiet for ``residency`` seconds (no churn: a slot changes hands at most once
  per ``residency`` per slot).

Parked services are read by the watcher's readers, which ask :meth:`Coverage.next_job` what to do:

- ``read``: a full read of a parked service that needs one (never read yet, or named by a change signal). First.
- ``probe``: an index-only request for a parked service (its body is filtered to ``[]``); when the index moved, the
  service is read. Probes go round the parked services in cycles: slowly while nothing suggests a change (every
  parked service once per ``idle_period``), and at ``burst_rate`` for one full cycle after :meth:`boost`, most recently
  active services first.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

JobKind = Literal["read", "probe"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    kind: JobKind
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Claim:
    """The answer of :meth:`Coverage.claim`: whether the service got a live slot, and whose slot it took."""

    live: bool
    evicted: str | None = None


_NO_CLAIM = Claim(live=False)


class Coverage:
    """Live slots, the queue of full reads and the probe cycle over parked services. Single-threaded, clock-free:
    every method takes ``now`` (seconds on the caller's monotonic clock)."""

    def __init__(self, *, capacity: int, residency: float, idle_period: float, burst_rate: float) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity!r}")
        if residency < 0 or idle_period <= 0 or burst_rate <= 0:
            raise ValueError(
                f"need residency >= 0, idle_period > 0 and burst_rate > 0, got {residency!r}, {idle_period!r}, "
                f"{burst_rate!r}"
            )
        self.capacity = capacity
        self._residency = residency
        self._idle_period = idle_period
        self._burst_rate = burst_rate
        self._activity: dict[str, float] = {}  # every routed service -> when a change was last seen
        self._read: set[str] = set()  # services read at least once (they have an index to compare with)
        self.live: set[str] = set()
        self._quiet: list[tuple[float, str]] = []  # heap over live services by activity (stale entries skipped)
        self._pending: dict[str, None] = {}  # parked services waiting for a full read, in order
        self._cycle: deque[str] = deque()
        self._boosting = False
        self._boost_again = False
        self._next_probe = 0.0

    # -- membership ------------------------------------------------------------------------------------------------

    def __contains__(self, name: str) -> bool:
        return name in self._activity

    def __len__(self) -> int:
        return len(self._activity)

    @property
    def parked(self) -> int:
        return len(self._activity) - len(self.live)

    @property
    def boosting(self) -> bool:
        return self._boosting

    def add(self, name: str, now: float) -> None:
        """A service became routed: it needs a first read."""
        self._activity[name] = now

    def remove(self, name: str) -> None:
        """A service is no longer routed (its live watch, if any, is the caller's to stop)."""
        self._activity.pop(name, None)
        self._read.discard(name)
        self.live.discard(name)
        self._pending.pop(name, None)

    def touch(self, name: str, now: float) -> None:
        """A change of ``name`` was seen (or is suspected)."""
        if name not in self._activity:
            return
        self._activity[name] = now
        if name in self.live:
            heapq.heappush(self._quiet, (now, name))
            if len(self._quiet) > 4 * len(self.live) + 64:  # stale entries pile up while no slot is claimed
                self._quiet = [(self._activity[n], n) for n in self.live]
                heapq.heapify(self._quiet)

    def mark_read(self, name: str) -> None:
        """``name`` has been read: it has an index, so it can be probed while parked."""
        if name in self._activity:
            self._read.add(name)
        self._pending.pop(name, None)

    # -- live slots ------------------------------------------------------------------------------------------------

    def claim(self, name: str, now: float, *, evict: bool = True) -> Claim:
        """Give ``name`` a live slot if there is room, or (``evict``) if the quietest live service has been quiet
        long enough."""
        if name not in self._activity or name in self.live or self.capacity == 0:
            return _NO_CLAIM
        if len(self.live) < self.capacity:
            self._make_live(name)
            return Claim(live=True)
        if not evict:
            return _NO_CLAIM
        quietest = self._quietest()
        if quietest is None:
            return _NO_CLAIM
        since, victim = quietest
        if now - since < self._residency or since >= self._activity[name]:
            return _NO_CLAIM
        self.release(victim)
        self._make_live(name)
        return Claim(live=True, evicted=victim)

    def release(self, name: str) -> None:
        """``name`` loses its live slot and is parked (it keeps its last answer and index)."""
        self.live.discard(name)

    def _make_live(self, name: str) -> None:
        self.live.add(name)
        self._pending.pop(name, None)
        heapq.heappush(self._quiet, (self._activity[name], name))

    def _quietest(self) -> tuple[float, str] | None:
        heap = self._quiet
        while heap:
            since, name = heap[0]
            if name in self.live and self._activity.get(name) == since:
                return since, name
            heapq.heappop(heap)  # stale: the service changed since, left the live set, or left
        return None

    # -- reads and probes ------------------------------------------------------------------------------------------

    def need_read(self, name: str) -> None:
        """Queue a full read of a parked service."""
        if name in self._activity and name not in self.live:
            self._pending[name] = None

    def boost(self, now: float) -> None:
        """Something changed that no live watch explains: probe every parked service once, soon."""
        if self._boosting:
            self._boost_again = True  # the change may be in a service this cycle has already probed
            return
        self._start_cycle(now, boosting=True)

    def end_boost(self) -> None:
        """What the boost was looking for has been found: go back to the idle pace."""
        if self._boosting and not self._boost_again:
            self._boosting = False

    def next_job(self, now: float) -> tuple[Job | None, float]:
        """The next job, or None and how many seconds until one may be due (``inf``: nothing to do)."""
        if self._pending:
            pending = next(iter(self._pending))
            del self._pending[pending]
            return Job(kind="read", name=pending), 0.0
        candidates = self._read - self.live
        if not candidates:
            self._boosting = self._boost_again = False
            return None, math.inf
        if now < self._next_probe:
            return None, self._next_probe - now
        probe = self._next_in_cycle(candidates, now)
        if probe is None:
            return None, math.inf
        rate = self._burst_rate if self._boosting else max(1.0, len(candidates)) / self._idle_period
        self._next_probe = max(self._next_probe, now) + 1.0 / rate
        return Job(kind="probe", name=probe), 0.0

    def _next_in_cycle(self, candidates: set[str], now: float) -> str | None:
        for _attempt in range(2):
            if not self._cycle:
                self._start_cycle(now, boosting=self._boosting, candidates=candidates)
            while self._cycle:
                name = self._cycle.popleft()
                if name in candidates:
                    if not self._cycle:
                        self._cycle_done()
                    return name
            self._cycle_done()  # only services that left or went live were left in it
        return None

    def _cycle_done(self) -> None:
        """A cycle handed out its last probe: a boost ends, unless another was asked for meanwhile."""
        if self._boosting and not self._boost_again:
            self._boosting = False
        elif self._boosting:
            self._boost_again = False

    def _start_cycle(self, now: float, *, boosting: bool, candidates: set[str] | None = None) -> None:
        names = candidates if candidates is not None else self._read - self.live
        # Most recently active first: a service that just changed is the likeliest to change again.
        self._cycle = deque(sorted(names, key=lambda n: (-self._activity.get(n, 0.0), n)))
        self._boosting = boosting
        if boosting:
            self._next_probe = min(self._next_probe, now)
