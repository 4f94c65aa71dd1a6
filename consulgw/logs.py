"""structlog configuration and the processors that keep secrets out of every log line.

``configure_logging`` is called once, by the composition root of a command; nothing here runs at import time.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog

from consulgw.redaction import REDACTED, is_secret_name, redact_urls


def _scrub(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: (REDACTED if isinstance(k, str) and is_secret_name(k) else _scrub(v)) for k, v in value.items()}
    if isinstance(value, str):
        return redact_urls(value)
    return value


def redact_secrets(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask credential fields, including inside nested header mappings, and show every URL
    in a field (a ``url``, an ``error`` message, a traceback) without its userinfo and query."""
    for key in list(event_dict):
        if is_secret_name(key):
            event_dict[key] = REDACTED
        else:
            value = event_dict[key]
            if isinstance(value, Mapping | str):
                event_dict[key] = _scrub(value)
    return event_dict


class BufferedLines:
    """A line sink that batches writes: one ``write`` syscall per flush instead of one per log line.

    Lines reach the stream when 64 KiB are pending or when ``drain()`` is called (the owner calls it on a short
    timer, every 200 ms in ``consulgw run``, and at shutdown). It is nginx's
    ``access_log ... buffer=`` idea: the access log costs one syscall per batch, not per request.
    """

    __slots__ = ("__weakref__", "_limit", "_pending", "_size", "_stream")  # structlog keeps a weakref per sink

    def __init__(self, stream: TextIO, limit: int = 64 * 1024) -> None:
        self._stream = stream
        self._limit = limit
        self._pending: list[str] = []
        self._size = 0

    def write(self, text: str) -> None:
        self._pending.append(text)
        self._size += len(text)

    def flush(self) -> None:
        """Called by structlog after every line: only flush when the batch is full."""
        if self._size >= self._limit:
            self.drain()

    def drain(self) -> None:
        if not self._pending:
            return
        data = "".join(self._pending)
        self._pending.clear()
        self._size = 0
        try:
            self._stream.write(data)
            self._stream.flush()
        except (OSError, ValueError):  # stderr closed or gone: logs must never take the process down
            pass


def configure_logging(
    fmt: str = "console", level: str = "info", stream: TextIO | None = None, *, buffered: bool = False
) -> BufferedLines | None:
    """Configure structlog for a process. ``fmt`` is ``json`` or ``console``.

    With ``buffered=True`` lines are batched (see BufferedLines) and the returned sink must be drained by the
    caller on a timer and at exit; otherwise every line is written and flushed at once and None is returned.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    target = stream or sys.stderr
    sink = BufferedLines(target) if buffered else None
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,  # after format_exc_info: a traceback's messages are scrubbed too
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(file=sink if sink is not None else target),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    return sink


def access_logger(name: str = "consulgw.access") -> Any:
    """A logger for the one-line-per-request ``request_completed`` event, with a lean processor chain.

    It writes to the same sink in the same format as the configured pipeline, but skips contextvars merging and
    secret redaction: the access event's fields are fixed by ``ProxyHandler`` and never carry headers, query
    strings or credentials. Call it after ``configure_logging`` (it reads the active configuration once).
    """
    config = structlog.get_config()
    processors = list(config["processors"])
    renderer = processors[-1]
    lean = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        renderer,
    ]
    return structlog.wrap_logger(
        config["logger_factory"](name),
        processors=lean,
        wrapper_class=config["wrapper_class"],
        cache_logger_on_first_use=True,
    ).bind()
