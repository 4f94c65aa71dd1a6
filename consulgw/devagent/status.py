"""``/v1/status/leader`` and ``/v1/status/peers`` (consul-api.md section 8): the dev agent is its own leader."""

from __future__ import annotations

from consulgw.devagent.core import LEADER_ADDR, Core
from consulgw.devagent.http import Call, Reply, Router


class StatusEndpoints:
    def __init__(self, core: Core) -> None:
        self.core = core

    def register(self, router: Router) -> None:
        router.add("/v1/status/leader", ("GET",), self.leader)
        router.add("/v1/status/peers", ("GET",), self.peers)
        router.add("/ui/", ("GET", "HEAD"), self.ui)

    async def leader(self, call: Call) -> Reply:
        self.core.check_dc(call)
        return call.reply(LEADER_ADDR)

    async def peers(self, call: Call) -> Reply:
        self.core.check_dc(call)
        return call.reply([LEADER_ADDR])

    async def ui(self, call: Call) -> Reply:
        """The dev agent serves its web UI at /ui/; this page stands in for it (checks often probe it)."""
        return Reply(body=UI_PAGE, content_type="text/html; charset=utf-8")


UI_PAGE = (
    b'<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8"><title>Consul by HashiCorp</title></head>\n'
    b"<body><p>consulgw dev agent: the Consul web UI is not bundled; the HTTP API is at /v1/.</p></body>\n</html>\n"
)
