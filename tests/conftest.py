"""Fixtures shared by every test folder.

``dev_agent`` is a started ``consulgw.devagent.DevAgent`` (node ``test-node``, ephemeral port on 127.0.0.1), fresh
for each test: it behaves like ``consul agent -dev`` and loses all state when the test ends. ``dev_agent_factory``
starts more (or differently configured) agents, e.g. a second incarnation on the same port to simulate a Consul
restart; ``free_port`` returns a TCP port that was free a moment ago.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from consulgw.devagent import DevAgent


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def free_port() -> Callable[..., int]:
    """``free_port()`` -> a port on 127.0.0.1 that nothing listened on when it was picked."""
    return _free_port


@pytest.fixture
async def dev_agent_factory() -> AsyncIterator[Callable[..., Awaitable[DevAgent]]]:
    """``await dev_agent_factory(**kwargs)`` starts a DevAgent (defaults: node test-node, port 0); all are stopped
    at teardown. ``await agent.stop()`` yourself to simulate a restart, then start a new one on ``agent.port``."""
    agents: list[DevAgent] = []

    async def start(**kwargs: Any) -> DevAgent:
        kwargs.setdefault("node", "test-node")
        kwargs.setdefault("port", 0)
        agent = DevAgent(**kwargs)
        await agent.start()
        agents.append(agent)
        return agent

    yield start
    for agent in reversed(agents):
        await agent.stop()


@pytest.fixture
async def dev_agent() -> AsyncIterator[DevAgent]:
    """A started dev agent: ``dev_agent.url``, ``dev_agent.port``, ``dev_agent.node == "test-node"``."""
    async with DevAgent(node="test-node", port=0) as agent:
        yield agent
