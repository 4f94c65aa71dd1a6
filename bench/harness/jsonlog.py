"""Reading the gateway's JSON log (one structlog event per line) from a remembered offset."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


class JsonLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0

    def mark(self) -> None:
        """Forget everything logged so far."""
        self._offset = os.path.getsize(self.path)

    def read(self, event: str | None = None) -> list[dict[str, Any]]:
        """Events logged since the mark (complete lines only), optionally only those named ``event``."""
        with open(self.path, "rb") as fh:
            fh.seek(self._offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1
        out: list[dict[str, Any]] = []
        for line in data[:end].splitlines():
            if not line.startswith(b"{"):
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if event is None or doc.get("event") == event:
                out.append(doc)
        return out

    def wait_for(
        self, event: str, until: Callable[[dict[str, Any]], bool], *, timeout: float, interval: float = 0.01
    ) -> dict[str, Any] | None:
        """The first event since the mark that satisfies ``until``, or None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            for doc in self.read(event):
                if until(doc):
                    return doc
            if time.monotonic() > deadline:
                return None
            time.sleep(interval)


def epoch(doc: dict[str, Any]) -> float | None:
    """The event's own timestamp (structlog TimeStamper, ISO 8601 UTC) as seconds since the epoch."""
    value = doc.get("timestamp")
    if not isinstance(value, str):
        return None
    try:
        stamp = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.timestamp()
