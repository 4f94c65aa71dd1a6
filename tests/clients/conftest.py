"""py-consul (module ``consul``) against the in-process DevAgent.

The agent runs on the test's event loop. The sync client blocks, so its calls run in a worker thread
(``asyncio.to_thread``) while the loop keeps serving; the aio client is constructed inside the running loop and closed
with ``await c.close()``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from yarl import URL


@dataclass(frozen=True, slots=True, kw_only=True)
class Agent:
    url: str
    host: str
    port: int


@pytest.fixture
async def agent() -> AsyncIterator[Agent]:
    from consulgw.devagent import DevAgent

    async with DevAgent(node="test-node", port=0) as running:
        url = URL(running.url)
        assert url.host is not None
        assert url.port is not None
        yield Agent(url=running.url, host=url.host, port=url.port)
