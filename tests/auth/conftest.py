from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.auth.idp import oauth_idp  # noqa: F401 - the local identity provider, for this folder's tests
from tests.auth.keys import Keys


@pytest.fixture(scope="session")
def keys() -> Keys:
    return Keys()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
