"""CPU per `request_completed` line: the gateway's access-log chain against cheaper renderings.

    .venv/bin/python bench/micro/access_log.py

The fields are those ProxyHandler logs; output goes to /dev/null. The first row is this checkout's own chain, set up
exactly as ``consulgw run --log-format json`` sets it up (``configure_logging(..., buffered=True)`` then
``access_logger()``; with the sink's own writer thread, if it has one, writing the batches); the other rows are
hand-built chains for comparison. The orjson rows appear when orjson is importable.
"""

from __future__ import annotations

import json
import time
import timeit
from typing import Any

import structlog

FIELDS: dict[str, Any] = {
    "request_id": "0123456789abcdef0123456789abcdef",
    "method": "GET",
    "path": "/",
    "route": "/",
    "service": "bench",
    "instance": "vm/bench-1",
    "status": 200,
    "duration_ms": 1.234,
    "bytes": 29,
    "client_ip": "127.0.0.1",
    "attempts": 1,
    "error": None,
}


def logger(processors: list[Any], factory: Any) -> Any:
    return structlog.wrap_logger(
        factory("bench"),
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(20),
        cache_logger_on_first_use=True,
    ).bind()


def gateway_chain(sink: Any) -> tuple[Any, Any]:
    """(logger, sink) as `consulgw run --log-format json` builds them, writing to ``sink``."""
    from consulgw.logs import access_logger, configure_logging

    buffered = configure_logging("json", "info", sink, buffered=True)
    return access_logger(), buffered


def main() -> None:
    with open("/dev/null", "w") as text_sink, open("/dev/null", "wb") as bytes_sink:
        n = 50000
        log, buffered = gateway_chain(text_sink)
        best = min(timeit.repeat(lambda: log.info("request_completed", **FIELDS), number=n, repeat=5))
        dropped = getattr(buffered, "dropped", 0)  # a sink that cannot keep up drops lines (none expected here)
        print(
            f"{'consulgw access_logger (checkout)':32s} {best / n * 1e6:5.1f} us/line"
            + (f", {dropped} dropped" if dropped else "")
        )
        text = structlog.WriteLoggerFactory(file=text_sink)
        stamp_iso = structlog.processors.TimeStamper(fmt="iso", utc=True)
        variants = {
            "iso + stdlib json (pre-orjson)": logger(
                [structlog.processors.add_log_level, stamp_iso, structlog.processors.JSONRenderer()], text
            ),
            "epoch + json": logger(
                [
                    structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt=None),
                    structlog.processors.JSONRenderer(),
                ],
                text,
            ),
        }
        try:
            import orjson
        except ImportError:
            orjson = None
        if orjson is not None:
            variants["iso + orjson, bytes logger"] = logger(
                [
                    structlog.processors.add_log_level,
                    stamp_iso,
                    structlog.processors.JSONRenderer(serializer=orjson.dumps),
                ],
                structlog.BytesLoggerFactory(file=bytes_sink),
            )
        for name, log in variants.items():
            best = min(timeit.repeat(lambda log=log: log.info("request_completed", **FIELDS), number=n, repeat=5))
            print(f"{name:32s} {best / n * 1e6:5.1f} us/line")

        def direct() -> None:
            line = {"event": "request_completed", **FIELDS, "level": "info", "timestamp": time.time()}
            text_sink.write(json.dumps(line) + "\n")

        best = min(timeit.repeat(direct, number=n, repeat=5))
        print(f"{'json.dumps + write, no structlog':32s} {best / n * 1e6:5.1f} us/line")


if __name__ == "__main__":
    main()
