"""The agent's own log lines, fanned out to ``/v1/agent/monitor`` streams in Consul's (hclog) formats.

Every line goes to structlog as usual and to the subscribers whose level admits it. A subscriber holds at most
512 pending lines (Consul's monitor buffer); when a slow reader falls behind, the oldest lines are dropped and
counted, and the agent logs how many were dropped when the stream ends, as Consul does.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections import deque
from dataclasses import dataclass

import structlog

BUFFER = 512
# Consul's accepted monitor levels (logging.ValidateLogLevel), mapped to hclog's ordering
LEVELS = {"TRACE": 0, "DEBUG": 1, "INFO": 2, "WARN": 3, "ERR": 4, "ERROR": 4}
_LEVEL_NAMES = {"trace": 0, "debug": 1, "info": 2, "warn": 3, "error": 4}
_STRUCTLOG = {"trace": "debug", "debug": "debug", "info": "info", "warn": "warning", "error": "error"}

log = structlog.get_logger("consulgw.devagent")


@dataclass(frozen=True, slots=True)
class LogLine:
    time: float
    level: str  # trace, debug, info, warn, error
    module: str  # hclog logger name, e.g. "agent.http"
    message: str
    fields: tuple[tuple[str, str], ...] = ()

    def text(self) -> str:
        """hclog's text format: ``2006-01-02T15:04:05.000Z [INFO]  agent: message: key=value``."""
        stamp = dt.datetime.fromtimestamp(self.time, dt.UTC)
        when = stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"
        level = f"[{self.level.upper()}]".ljust(7)
        tail = "".join(f" {k}={_quote(v)}" for k, v in self.fields)
        colon = ":" if tail else ""
        return f"{when} {level} {self.module}: {self.message}{colon}{tail}\n"

    def json(self) -> str:
        stamp = dt.datetime.fromtimestamp(self.time, dt.UTC)
        record: dict[str, str] = {
            "@level": self.level,
            "@message": self.message,
            "@module": self.module,
            "@timestamp": stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }
        record.update(self.fields)
        return json.dumps(record, separators=(",", ":")) + "\n"


def _quote(value: str) -> str:
    return json.dumps(value) if (not value or any(c.isspace() or c == '"' for c in value)) else value


class Subscription:
    """One monitor stream's queue of pending lines."""

    __slots__ = ("_lines", "_wake", "dropped", "min_level")

    def __init__(self, min_level: int) -> None:
        self.min_level = min_level
        self.dropped = 0
        self._lines: deque[LogLine] = deque()
        self._wake = asyncio.Event()

    def offer(self, line: LogLine) -> None:
        if len(self._lines) >= BUFFER:
            self._lines.popleft()
            self.dropped += 1
        self._lines.append(line)
        self._wake.set()

    def drain(self) -> list[LogLine]:
        lines = list(self._lines)
        self._lines.clear()
        self._wake.clear()
        return lines

    async def wait(self, timeout: float) -> None:
        if self._lines:
            return
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            return


class LogHub:
    """Publishes the agent's log lines to structlog and to every live monitor subscription."""

    __slots__ = ("_subscribers",)

    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()

    def publish(self, line: LogLine) -> None:
        getattr(log, _STRUCTLOG[line.level])(
            line.message.replace(" ", "_").lower(), module=line.module, **dict(line.fields)
        )
        self.offer(line)

    def offer(self, line: LogLine) -> None:
        """To the monitor streams only (the per-request lines: structlog has its own, cheaper one)."""
        rank = _LEVEL_NAMES[line.level]
        for sub in self._subscribers:
            if rank >= sub.min_level:
                sub.offer(line)

    def wants(self, level: str) -> bool:
        """Whether any monitor stream takes lines of ``level`` (so a caller can skip building them)."""
        rank = _LEVEL_NAMES[level]
        return any(rank >= sub.min_level for sub in self._subscribers)

    def subscribe(self, level: str) -> Subscription:
        sub = Subscription(LEVELS[level.upper()])
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)
