"""An in-memory agent that speaks Consul's HTTP API like ``consul agent -dev`` (see consul-api.md).

::

    async with DevAgent(node="test-node", port=0) as agent:
        agent.url   # "http://127.0.0.1:54321"
"""

from consulgw.devagent.server import DevAgent

__all__ = ["DevAgent"]
