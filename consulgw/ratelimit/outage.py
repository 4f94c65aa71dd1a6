"""Health of the shared rate-limit backend as seen by this process: log once per outage, back off briefly.

While Redis fails, every request would otherwise pay a connect attempt (or a full socket timeout when the host is
black-holed) and log a line. ``BackendOutage`` turns that into one ``rate_limit_backend_down`` event when the
outage starts, a ``rate_limit_backend_still_down`` reminder at most every ``remind_interval`` seconds, one
``rate_limit_backend_recovered`` event when a call succeeds again, and a ``retry_interval`` during which callers
skip the backend (one caller per interval tries it, so recovery is noticed within ``retry_interval``).
"""

from __future__ import annotations

import structlog

from consulgw.clock import Clock

log = structlog.get_logger("consulgw.ratelimit")


class BackendOutage:
    """Shared by every stage of a process that talks to the same backend (``StageDeps.redis_outage``)."""

    def __init__(self, *, retry_interval: float = 0.5, remind_interval: float = 60.0) -> None:
        self._retry_interval = retry_interval
        self._remind_interval = remind_interval
        self._down_since: float | None = None
        self._next_try = 0.0
        self._last_log = 0.0
        self._failures = 0

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def should_try(self, clock: Clock) -> bool:
        """False while the backend is known down and the retry interval has not elapsed (then fail fast)."""
        if self._down_since is None:
            return True
        now = clock.monotonic()
        if now >= self._next_try:
            self._next_try = now + self._retry_interval  # this caller probes; the others keep failing fast
            return True
        return False

    def failed(self, clock: Clock, *, service: str, error: str) -> None:
        now = clock.monotonic()
        self._failures += 1
        self._next_try = now + self._retry_interval
        if self._down_since is None:
            self._down_since = now
            self._last_log = now
            self._failures = 0
            log.warning("rate_limit_backend_down", service=service, error=error)
        elif now - self._last_log >= self._remind_interval:
            log.warning(
                "rate_limit_backend_still_down",
                service=service,
                error=error,
                down_seconds=round(now - self._down_since, 1),
                failures=self._failures,
            )
            self._last_log = now
            self._failures = 0

    def succeeded(self, clock: Clock, *, service: str) -> None:
        if self._down_since is None:
            return
        log.info(
            "rate_limit_backend_recovered", service=service, down_seconds=round(clock.monotonic() - self._down_since, 1)
        )
        self._down_since = None
        self._failures = 0
