"""GCRA arithmetic shared by the local and the Redis store, in integer microseconds.

State per key is one integer, the theoretical arrival time ``tat`` (µs). A request at ``now`` is admitted when
``max(tat, now) + interval - now <= tolerance``; admitting moves ``tat`` to ``max(tat, now) + interval``. A key whose
``tat`` is in the past is indistinguishable from a key never seen, which is what makes idle keys free to forget.

Everything is an integer number of microseconds so the Lua script (doubles, exact below 2**53, epoch µs is ~2**51)
and Python compute the same thing. The emission interval is rounded to a whole microsecond (at most 0.5 µs per
request of error) and never below 1 µs, so rates above 1,000,000 requests per second are clamped.
"""

from __future__ import annotations

from dataclasses import dataclass

US = 1_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Quota:
    """What one store enforces for one key: a capacity refilled at one unit per ``interval_us``."""

    capacity: int  # requests admitted at once from a full bucket (>= 1)
    interval_us: int  # microseconds per request of steady rate (>= 1)

    @classmethod
    def of(cls, *, requests: int, per: float, burst: int = 0) -> Quota:
        requests = max(1, requests)
        return cls(capacity=requests + max(0, burst), interval_us=max(1, round(per * US / requests)))

    @property
    def tolerance_us(self) -> int:
        return self.capacity * self.interval_us

    def for_worker(self, index: int, count: int) -> Quota:
        """This worker's share when ``count`` processes each keep their own in-process state.

        The steady rate is divided evenly (each worker refills ``count`` times slower) and the capacity is split so
        the shares add up to the whole: worker ``i`` gets ``capacity // count``, plus one for the first
        ``capacity % count`` workers. A share is never below 1 (a worker that could never admit anything would
        reject every client the kernel happens to hand it), so when ``capacity < count`` up to ``count`` requests
        can be admitted at once in total. The long-run rate is exact either way.
        """
        if count <= 1:
            return self
        share = self.capacity // count + (1 if index < self.capacity % count else 0)
        return Quota(capacity=max(1, share), interval_us=self.interval_us * count)


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """The outcome of one request against one key, with the IETF draft ``RateLimit-*`` header values."""

    allowed: bool
    limit: int  # the quota (capacity) that decided
    remaining: int  # requests that would be admitted right now, after this one
    reset: int  # whole seconds until the bucket is full again (Remaining == Limit)
    retry_after: int  # whole seconds until one more request would be admitted (0 when something remains)

    def headers(self) -> tuple[tuple[str, str], ...]:
        values = [
            ("RateLimit-Limit", str(self.limit)),
            ("RateLimit-Remaining", str(self.remaining)),
            ("RateLimit-Reset", str(self.reset)),
        ]
        if not self.allowed:
            values.append(("Retry-After", str(max(1, self.retry_after))))
        return tuple(values)


def _ceil_seconds(us: int) -> int:
    return max(0, -(-us // US))


def step(tat: int | None, now: int, quota: Quota) -> tuple[bool, int]:
    """One GCRA decision: (admitted, the key's new tat). ``tat is None`` means a key never seen (or forgotten)."""
    base = now if tat is None or tat < now else tat
    new_tat = base + quota.interval_us
    if new_tat - now <= quota.tolerance_us:
        return True, new_tat
    return False, base


def decide(allowed: bool, ahead_us: int, quota: Quota) -> Decision:
    """The decision for a key whose tat is ``ahead_us`` past now after the step (what both stores report)."""
    ahead_us = max(0, ahead_us)
    spare = quota.tolerance_us - ahead_us
    remaining = min(quota.capacity, max(0, spare // quota.interval_us))
    # The next request is admitted once tat + interval - t <= tolerance.
    wait = ahead_us + quota.interval_us - quota.tolerance_us
    return Decision(
        allowed=allowed,
        limit=quota.capacity,
        remaining=remaining,
        reset=_ceil_seconds(ahead_us),
        retry_after=_ceil_seconds(wait) if remaining == 0 else 0,
    )
