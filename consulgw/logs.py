"""structlog configuration and the processors that keep secrets out of every log line.

``configure_logging`` is called once, by the composition root of a command; nothing here runs at import time.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, Final, TextIO

import structlog

REDACTED: Final = "[redacted]"

# Keys (lower-cased, '-' and '_' folded) whose values are never written to a log line.
_SECRET_KEYS: Final = frozenset(
    {
        "authorization",
        "proxyauthorization",
        "cookie",
        "setcookie",
        "token",
        "xconsultoken",
        "apikey",
        "xapikey",
        "password",
        "secret",
        "clientsecret",
        "accesstoken",
        "refreshtoken",
        "jwt",
    }
)


def _fold(key: str) -> str:
    return key.lower().replace("-", "").replace("_", "")


def is_secret_key(key: str) -> bool:
    """True when a field or header of this name carries a credential."""
    folded = _fold(key)
    return folded in _SECRET_KEYS or folded.endswith(("token", "password", "secret", "apikey"))


def _scrub(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: (REDACTED if isinstance(k, str) and is_secret_key(k) else _scrub(v)) for k, v in value.items()}
    return value


def redact_secrets(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask credential fields, including inside nested header mappings."""
    for key in list(event_dict):
        if is_secret_key(key):
            event_dict[key] = REDACTED
        elif isinstance(event_dict[key], Mapping):
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


def configure_logging(fmt: str = "console", level: str = "info", stream: TextIO | None = None) -> None:
    """Configure structlog for a process. ``fmt`` is ``json`` or ``console``."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    renderer: Any
    renderer = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
