"""structlog configuration and the processors that keep secrets out of every log line.

``configure_logging`` is called once, by the composition root of a command; nothing here runs at import time.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, TextIO

import orjson
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


# orjson serializes dataclasses field by field and datetimes natively; the stdlib hands both to structlog's
# ``default`` (their repr). Passing them through keeps the stdlib's output, and with it the redaction that lives in a
# repr: a ``settings.Secret`` is a dataclass whose repr hides its value, which orjson would otherwise print.
_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME


def _dumps(obj: Any, **kw: Any) -> str:
    """structlog ``JSONRenderer`` serializer: orjson (about 10x the stdlib's speed on an access line), with the
    stdlib as the fallback for what orjson refuses (a ``str`` holding lone surrogates, an int beyond 64 bits), so a
    line is never lost to the serializer. ``kw`` carries structlog's ``default`` (``repr`` for unknown objects)."""
    try:
        return orjson.dumps(obj, default=kw.get("default"), option=_ORJSON_OPTIONS).decode()
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(obj, **kw)


class UtcTimestamp:
    """structlog processor: ``timestamp`` in ISO 8601 UTC with microseconds, ``2026-12-05T22:03:12.568057Z``.

    The format of ``TimeStamper(fmt="iso", utc=True)`` (except that a whole second keeps its ``.000000``), at a
    fraction of its cost: the date and time of day are formatted once per second and only the microseconds per
    line (a ``datetime`` built and formatted per access line was 7 us of the ~220 us a proxied request costs).
    ``now`` is the wall clock (injected for tests).
    """

    __slots__ = ("_cached", "_now")

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self._cached = (-1, "")  # (whole second, its "YYYY-MM-DDTHH:MM:SS"), replaced whole: threads may log too

    def __call__(self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        second, micros = divmod(round(self._now() * 1_000_000), 1_000_000)  # rounded as datetime rounds
        cached = self._cached
        if cached[0] != second:
            cached = self._cached = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        event_dict["timestamp"] = f"{cached[1]}.{micros:06d}Z"
        return event_dict


class BufferedLines:
    """The log sink of ``consulgw run``: batched, bounded, and never blocking the caller. Also the structlog logger
    that writes into it (``structlog.configure(logger_factory=sink)``).

    Logging a line (``msg``) does no I/O: the rendered line joins a pending batch. A writer thread owned by the sink
    writes the batch with one ``write`` call when 64 KiB are pending, every ``interval`` seconds otherwise (nginx's
    ``access_log ... buffer= flush=``). When the stream cannot keep up (a full pipe whose reader is stuck, a stalled
    disk), at most ``max_pending`` characters wait, counting the batch being written, and further lines are dropped
    and counted (``dropped``; meant to be exported as ``consulgw_log_lines_dropped_total``) instead of growing
    memory or stalling the event loop. Lines that a failing stream refuses (``OSError``) are counted there too.

    ``drain()`` writes everything pending from the calling thread and returns when it is written: for shutdown and
    before ``fork()``. ``close()`` stops the writer thread after a last drain. A forked child starts with an empty
    batch (the parent writes what was pending at the fork) and starts its own writer thread on its first line.
    """

    __slots__ = (
        "__weakref__",
        "_batch",
        "_dropped",
        "_interval",
        "_lock",
        "_max_pending",
        "_pending",
        "_size",
        "_stopping",
        "_stream",
        "_thread",
        "_wake",
        "_write_lock",
        "_writing",
    )

    def __init__(
        self,
        stream: TextIO,
        limit: int = 64 * 1024,
        *,
        max_pending: int = 4 * 1024 * 1024,
        interval: float = 0.2,
    ) -> None:
        if limit < 1 or max_pending < limit or interval <= 0:
            raise ValueError(f"need 1 <= limit <= max_pending and interval > 0, got {limit}, {max_pending}, {interval}")
        self._stream = stream
        self._batch = limit
        self._max_pending = max_pending
        self._interval = interval
        self._stopping = False
        self._reset()
        ref = weakref.ref(self)

        def forked() -> None:
            sink = ref()
            if sink is not None:
                sink._reset()

        def exiting() -> None:  # the writer must not be inside a write while the interpreter finalizes
            sink = ref()
            if sink is not None:
                sink.close()

        os.register_at_fork(after_in_child=forked)
        atexit.register(exiting)

    def _reset(self) -> None:
        """A fresh state (at start, and in a forked child: locks held by the parent's threads are not inherited)."""
        self._lock = threading.Lock()  # guards _pending, _size, _writing, _dropped
        self._write_lock = threading.Lock()  # one writer of the stream at a time
        self._wake = threading.Event()
        self._pending: list[str] = []
        self._size = 0  # characters pending
        self._writing = 0  # characters of the batch being written
        self._dropped = 0
        self._thread: threading.Thread | None = None

    @property
    def dropped(self) -> int:
        """Lines dropped since start because the stream could not keep up or failed."""
        return self._dropped

    def __call__(self, *_args: Any) -> BufferedLines:
        """structlog logger factory: every logger writes into this sink."""
        return self

    def msg(self, message: str) -> None:
        line = message + "\n"
        size = len(line)
        with self._lock:
            if self._size + self._writing + size > self._max_pending:
                self._dropped += 1
                return
            self._pending.append(line)
            self._size += size
            full = self._size >= self._batch
            if self._thread is None and not self._stopping:
                self._thread = threading.Thread(target=self._run, name="consulgw-log-writer", daemon=True)
                self._thread.start()
        if full:
            self._wake.set()

    debug = info = warn = warning = error = err = critical = fatal = exception = failure = log = msg

    def _run(self) -> None:
        wake = self._wake
        while not self._stopping:
            wake.wait(self._interval)
            wake.clear()
            self._write_pending()

    def _write_pending(self, timeout: float = -1) -> None:
        if not self._write_lock.acquire(timeout=timeout):
            return  # close(): a write is stuck in the stream; give up rather than hang the exit
        try:
            with self._lock:
                if not self._pending:
                    return
                batch, self._pending = self._pending, []
                self._writing, self._size = self._size, 0
            try:
                self._stream.write("".join(batch))
                self._stream.flush()
            except (OSError, ValueError):  # stderr closed or gone: logs must never take the process down
                with self._lock:
                    self._dropped += len(batch)
            finally:
                with self._lock:
                    self._writing = 0
        finally:
            self._write_lock.release()

    def drain(self) -> None:
        """Write every pending line now, from this thread."""
        self._write_pending()

    def close(self, timeout: float = 2.0) -> None:
        """Stop the writer thread and write what is pending; a stream stuck for ``timeout`` s is given up on."""
        self._stopping = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._write_pending(timeout)


_LEVEL_METHODS = frozenset({"debug", "info", "warning", "error", "critical"})


class _StdlibBridge(logging.Handler):
    """Records of the standard ``logging`` module (aiohttp, asyncio, redis-py, the OpenTelemetry SDK, ``warnings``)
    re-logged through structlog: the same format, redaction and sink as the gateway's own lines.

    Without it they reach ``logging.lastResort``, which writes to stderr synchronously: a pipe nobody reads then
    blocks the event loop (aiohttp logs a traceback for every malformed request), and the line is neither JSON nor
    redacted."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            name = record.levelname.lower()
            if name not in _LEVEL_METHODS:  # a custom level
                name = "error" if record.levelno >= logging.ERROR else "info"
            fields: dict[str, Any] = {"logger": record.name}
            if record.exc_info:
                fields["exc_info"] = record.exc_info
            getattr(structlog.get_logger(), name)(record.getMessage(), **fields)
        except Exception:  # noqa: BLE001 - a log record must never raise into the code that logged it
            self.handleError(record)

    def handleError(self, record: logging.LogRecord) -> None:
        """Never the stdlib's default (a traceback written to stderr, the very stream that may be stuck)."""


def _bridge_stdlib_logging(level: int) -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StdlibBridge)]:
        root.removeHandler(handler)
    root.addHandler(_StdlibBridge())
    root.setLevel(level)
    # warnings.warn() too: it would write to stderr directly. Off first: a capture left over from an earlier
    # configuration may no longer be the one in force (warnings.catch_warnings restores showwarning on exit).
    logging.captureWarnings(False)
    logging.captureWarnings(True)


def configure_logging(
    fmt: str = "console", level: str = "info", stream: TextIO | None = None, *, buffered: bool = False
) -> BufferedLines | None:
    """Configure structlog for a process. ``fmt`` is ``json`` or ``console``.

    With ``buffered=True`` lines are batched (see BufferedLines: its own thread writes them) and the returned sink
    must be drained (or closed) by the caller at exit and before forking; otherwise every line is written and flushed
    at once and None is returned. JSON lines are serialized with orjson (see ``_dumps``).
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_dumps)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    target = stream or sys.stderr
    sink = BufferedLines(target) if buffered else None
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            UtcTimestamp(),
            structlog.processors.format_exc_info,
            redact_secrets,  # after format_exc_info: a traceback's messages are scrubbed too
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=sink if sink is not None else structlog.WriteLoggerFactory(file=target),
        cache_logger_on_first_use=False,
    )
    _bridge_stdlib_logging(numeric)
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
        UtcTimestamp(),
        renderer,
    ]
    return structlog.wrap_logger(
        config["logger_factory"](name),
        processors=lean,
        wrapper_class=config["wrapper_class"],
        cache_logger_on_first_use=True,
    ).bind()
