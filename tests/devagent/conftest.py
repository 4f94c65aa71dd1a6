from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from consulgw.devagent import DevAgent
from tests.devagent.support import Api


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:
        yield client


@pytest.fixture
async def api(dev_agent: DevAgent, session: aiohttp.ClientSession) -> Api:
    return Api(dev_agent.url, session)
