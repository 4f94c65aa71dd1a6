"""Fixtures of the rate-limit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.ratelimit.support import PrivateRedis, free_port


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A started private redis-server, stopped after the test."""
    server = PrivateRedis(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
