"""The log sink of ``consulgw run`` (``consulgw.logs.BufferedLines``) and the orjson JSON renderer.

The sink batches lines and writes them from its own thread; it never blocks the caller, and when the stream cannot
keep up it drops (and counts) lines instead of growing memory. Real threads and real streams; every wait polls with
a generous deadline.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Callable, Iterator

import pytest
import structlog

from consulgw.logs import REDACTED, BufferedLines, access_logger, configure_logging
from consulgw.settings import Secret


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


class RecordingStream(io.StringIO):
    """A text stream that counts write calls and can be made to block (a stuck pipe) or fail (a closed one)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.entered = threading.Event()  # a write call has started
        self.release = threading.Event()
        self.release.set()
        self.fail: OSError | None = None
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        self.entered.set()
        self.release.wait()
        if self.fail is not None:
            raise self.fail
        with self._lock:
            self.writes += 1
            return super().write(text)

    def lines(self) -> list[str]:
        with self._lock:
            return self.getvalue().splitlines()


@pytest.fixture
def sinks() -> Iterator[list[BufferedLines]]:
    """Sinks made by a test are closed after it (their writer threads stop); structlog's configuration is reset."""
    made: list[BufferedLines] = []
    try:
        yield made
    finally:
        for sink in made:
            sink.close()
        structlog.reset_defaults()


def test_lines_reach_the_stream_in_order_in_few_writes(sinks: list[BufferedLines]) -> None:
    stream = RecordingStream()
    sink = BufferedLines(stream, 4096, interval=60)
    sinks.append(sink)
    for i in range(2000):
        sink.msg(f"line {i:05d}")
    sink.drain()
    assert stream.lines() == [f"line {i:05d}" for i in range(2000)]
    assert stream.writes <= 2000 * 11 // 4096 + 2  # one write per batch of 4 KiB, not one per line
    assert sink.dropped == 0


def test_the_writer_thread_writes_without_being_asked(sinks: list[BufferedLines]) -> None:
    stream = RecordingStream()
    sink = BufferedLines(stream, interval=0.05)
    sinks.append(sink)
    sink.msg("hello")
    wait_until(lambda: stream.lines() == ["hello"])


def test_a_stuck_stream_bounds_memory_drops_and_counts_and_never_blocks_the_caller(
    sinks: list[BufferedLines],
) -> None:
    stream = RecordingStream()
    stream.release.clear()  # the reader of our pipe is stuck
    sink = BufferedLines(stream, 1000, max_pending=10_000, interval=0.05)
    sinks.append(sink)
    line = "x" * 99  # 100 characters with its newline
    for i in range(50):  # fills a 1000-character batch: the writer takes it and blocks in write()
        sink.msg(f"{i:04d}{line[4:]}")
    assert stream.entered.wait(15)
    for i in range(50, 1000):  # returns at once although nothing can be written
        sink.msg(f"{i:04d}{line[4:]}")
    accepted = 1000 - sink.dropped
    assert accepted * 100 <= 10_000  # the batch being written counts against the bound
    assert sink.dropped >= 1000 - 10_000 // 100
    stream.release.set()
    sink.drain()
    written = [int(x[:4]) for x in stream.lines()]
    assert written == sorted(written)  # order kept, nothing twice
    assert len(written) == accepted
    sink.msg("after")  # once the stream moves again, lines flow again
    sink.drain()
    assert stream.lines()[-1] == "after"


def test_a_failing_stream_counts_its_lines_as_dropped(sinks: list[BufferedLines]) -> None:
    stream = RecordingStream()
    stream.fail = BrokenPipeError(32, "Broken pipe")
    sink = BufferedLines(stream, interval=60)
    sinks.append(sink)
    for i in range(3):
        sink.msg(f"line {i}")
    sink.drain()  # must not raise: logs never take the process down
    assert sink.dropped == 3
    stream.fail = None
    sink.msg("back")
    sink.drain()
    assert stream.lines() == ["back"]


def test_close_stops_the_writer_thread_after_writing_everything(sinks: list[BufferedLines]) -> None:
    stream = RecordingStream()
    sink = BufferedLines(stream, interval=60)
    sink.msg("last words")
    assert "consulgw-log-writer" in {t.name for t in threading.enumerate()}
    sink.close()
    assert stream.lines() == ["last words"]
    wait_until(lambda: all(t.name != "consulgw-log-writer" for t in threading.enumerate()))


@pytest.mark.parametrize(
    ("limit", "max_pending", "interval"),
    [
        pytest.param(0, 10, 0.2, id="empty-batch"),
        pytest.param(100, 10, 0.2, id="bound-below-batch"),
        pytest.param(10, 100, 0.0, id="no-interval"),
    ],
)
def test_bad_sink_settings_are_refused(limit: int, max_pending: int, interval: float) -> None:
    with pytest.raises(ValueError, match="limit <= max_pending"):
        BufferedLines(io.StringIO(), limit, max_pending=max_pending, interval=interval)


def test_json_lines_are_valid_redacted_and_survive_what_orjson_refuses(sinks: list[BufferedLines]) -> None:
    stream = RecordingStream()
    sink = configure_logging("json", "info", stream, buffered=True)
    assert sink is not None
    sinks.append(sink)
    log = structlog.get_logger("test")
    log.info("with_secrets", authorization="Bearer abc.def", headers={"Cookie": "sid=1", "Accept": "*/*"})
    log.info("odd_values", path="/caf\udce9", counts={404: 2}, big=2**70, obj=object())
    access_logger().info("request_completed", status=200, path="/")
    sink.drain()
    lines = [json.loads(x) for x in stream.lines()]
    assert [x["event"] for x in lines] == ["with_secrets", "odd_values", "request_completed"]
    secrets, odd, access = lines
    assert secrets["authorization"] == REDACTED
    assert secrets["headers"] == {"Cookie": REDACTED, "Accept": "*/*"}
    assert "abc.def" not in stream.getvalue()
    assert "sid=1" not in stream.getvalue()
    assert odd["path"] == "/caf\udce9"  # lone surrogate: the stdlib fallback escapes it
    assert odd["counts"] == {"404": 2}
    assert odd["big"] == 2**70
    assert odd["obj"].startswith("<object object at")
    assert access["level"] == "info"
    assert access["status"] == 200
    assert all(x["timestamp"].endswith("Z") for x in lines)


def test_records_of_libraries_go_through_the_sink_as_redacted_json(sinks: list[BufferedLines]) -> None:
    """Python ``logging`` records (aiohttp, asyncio, redis-py, the OTel SDK) and warnings reach the same bounded sink,
    never stderr behind its back (tests/faults/test_log_faults.py: a stuck stderr pipe used to block the loop)."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    stream = RecordingStream()
    try:
        sink = configure_logging("json", "info", stream, buffered=True)
        assert sink is not None
        sinks.append(sink)
        library = logging.getLogger("aiohttp.server")
        library.debug("below the level")
        library.warning("fetching %s", "https://user:pw@idp.example/jwks?key=abc")
        try:
            raise ValueError("boom")
        except ValueError:
            library.exception("Error handling request from %s", "127.0.0.1")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("a deprecated thing", DeprecationWarning, stacklevel=1)
        sink.drain()
        lines = [json.loads(x) for x in stream.lines()]
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
        root.setLevel(level)
        logging.captureWarnings(False)
    assert len(lines) == 3, lines
    fetched, failed, warned = lines
    assert fetched["logger"] == "aiohttp.server"
    assert fetched["level"] == "warning"
    assert "pw" not in fetched["event"]
    assert "key=abc" not in fetched["event"]
    assert failed["level"] == "error"
    assert failed["event"] == "Error handling request from 127.0.0.1"
    assert "ValueError: boom" in failed["exception"]
    assert warned["logger"] == "py.warnings"
    assert "a deprecated thing" in warned["event"]


def test_dataclasses_and_datetimes_render_as_their_repr_so_a_secret_stays_hidden(sinks: list[BufferedLines]) -> None:
    stream = RecordingStream()
    sink = configure_logging("json", "info", stream, buffered=True)
    assert sink is not None
    sinks.append(sink)
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    structlog.get_logger("test").info("settings_loaded", redis=Secret(value="redis-password-1"), at=when)
    sink.drain()
    (line,) = [json.loads(x) for x in stream.lines()]
    assert line["redis"] == "Secret('**')"
    assert line["at"] == repr(when)  # what the stdlib serializer wrote (structlog's default: repr)
    assert "redis-password-1" not in stream.getvalue()


def test_unbuffered_console_lines_are_written_at_once() -> None:
    stream = io.StringIO()
    try:
        assert configure_logging("console", "info", stream) is None
        structlog.get_logger("test").info("hello", token="t0ps3cret")
        assert "hello" in stream.getvalue()
        assert "t0ps3cret" not in stream.getvalue()
    finally:
        structlog.reset_defaults()


def test_a_forked_child_does_not_write_the_parents_pending_lines() -> None:
    # In a fresh interpreter: pytest's own process is not forked.
    script = textwrap.dedent(
        """
        import os, sys
        from consulgw.logs import BufferedLines
        sink = BufferedLines(sys.stdout, interval=60)
        sink.msg("parent before fork")
        pid = os.fork()
        if pid == 0:
            sink.msg("child")
            sink.drain()
            os._exit(0)
        os.waitpid(pid, 0)
        sink.msg("parent after fork")
        sink.drain()
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.splitlines()) == ["child", "parent after fork", "parent before fork"]
