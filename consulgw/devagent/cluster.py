"""Single-node cluster views: network coordinates, the Raft configuration, and user events.

A dev agent is a one-server cluster, so these are small: one coordinate, one voter that is the leader, and an
in-memory ring of the last 256 user events (``/v1/event/fire`` and ``/v1/event/list``, whose index is derived from
the last event's ID exactly as Consul does).
"""

from __future__ import annotations

import base64
from collections import deque
from typing import Any

from consulgw.devagent.authorizer import Authz
from consulgw.devagent.blocking import Answer, query_timeout, wait_for_topics
from consulgw.devagent.core import LEADER_ADDR, Core, Tally
from consulgw.devagent.errors import bad_request
from consulgw.devagent.http import Call, Reply, Router

EVENT_RING = 256
EVENTS_TOPIC = "events"


def coordinate() -> dict[str, Any]:
    # Go prints float64 zeros as 0; ints keep the bytes identical
    return {"Vec": [0] * 8, "Error": 1.5, "Adjustment": 0, "Height": 1e-05}


def uuid_to_uint64(uuid: str) -> int:
    """Consul's event index: XOR of the two halves of the event UUID."""
    lower = uuid[0:8] + uuid[9:13] + uuid[14:18]
    upper = uuid[19:23] + uuid[24:36]
    return int(lower, 16) ^ int(upper, 16)


class ClusterEndpoints:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENT_RING)
        self.ltime = 0

    def register(self, router: Router) -> None:
        get = ("GET",)
        router.add("/v1/coordinate/datacenters", get, self.coordinate_datacenters)
        router.add("/v1/coordinate/nodes", get, self.coordinate_nodes)
        router.add("/v1/coordinate/node/", get, self.coordinate_node)
        router.add("/v1/operator/raft/configuration", get, self.raft_configuration)
        router.add("/v1/event/fire/", ("PUT",), self.event_fire)
        router.add("/v1/event/list", get, self.event_list)

    async def coordinate_datacenters(self, call: Call) -> Reply:
        ident = self.core.identity
        return call.reply(
            [
                {
                    "Datacenter": ident.datacenter,
                    "AreaID": "wan",
                    "Coordinates": [{"Node": f"{ident.node}.{ident.datacenter}", "Coord": coordinate()}],
                }
            ]
        )

    def _coordinates(self, only: str | None, authz: Authz, tally: Tally) -> Answer:
        store = self.core.store

        def render() -> list[dict[str, Any]]:
            nodes = [name for name in sorted(store.nodes) if only is None or name == only]
            nodes = [name for name in nodes if tally.keep(authz.allows("node", "read", name))]
            return [{"Node": name, "Segment": "", "Partition": "", "Coord": coordinate()} for name in nodes]

        return Answer(index=store.max_index("nodes"), topics=("nodes",), render=render)

    async def coordinate_nodes(self, call: Call) -> Reply:
        opts = self.core.read_options(call)
        authz, tally = call.authz(), Tally()
        answer = await self.core.blocking(opts, lambda: self._coordinates(None, authz, tally))
        value = answer.value
        return call.reply_meta(value, answer.index, opts, filtered=tally.removed)

    async def coordinate_node(self, call: Call) -> Reply:
        if not call.suffix:
            raise bad_request("Missing node name")
        opts = self.core.read_options(call)
        authz, tally = call.authz(), Tally()
        answer = await self.core.blocking(opts, lambda: self._coordinates(call.suffix, authz, tally))
        value = answer.value
        if not value:
            reply = call.reply_meta(None, answer.index, opts, status=404, filtered=tally.removed)
            reply.body, reply.content_type = b"", None
            return reply
        return call.reply_meta(value, answer.index, opts, filtered=tally.removed)

    async def raft_configuration(self, call: Call) -> Reply:
        self.core.check_dc(call)
        call.authz().require("operator", "read")
        ident = self.core.identity
        server = {
            "ID": ident.node_id,
            "Node": ident.node,
            "Address": LEADER_ADDR,
            "Leader": True,
            "ProtocolVersion": "3",
            "Voter": True,
            "LastIndex": self.core.store.index,
        }
        return call.reply({"Servers": [server], "Index": 0})

    async def event_fire(self, call: Call) -> Reply:
        self.core.check_dc(call)
        name = call.suffix
        if not name:
            raise bad_request("Missing name")
        call.authz().require("event", "write", name)
        payload = await call.body(100 * 1024, lambda n: bad_request("User event payload exceeds the limit"))
        self.ltime += 1
        event = {
            "ID": self.core.new_uuid(),
            "Name": name,
            "Payload": base64.b64encode(payload).decode("ascii") if payload else None,
            "NodeFilter": call.param("node"),
            "ServiceFilter": call.param("service"),
            "TagFilter": call.param("tag"),
            "Version": 1,
            "LTime": self.ltime,
        }
        self.events.append(event)
        self.core.store.watch.notify([EVENTS_TOPIC])
        return call.reply({**event, "LTime": 0})

    async def event_list(self, call: Call) -> Reply:
        opts = self.core.read_options(call)
        name = call.param("name")
        authz = call.authz()

        def query() -> Answer:
            found = [
                e for e in self.events if (not name or e["Name"] == name) and authz.allows("event", "read", e["Name"])
            ]
            index = uuid_to_uint64(found[-1]["ID"]) if found else 1
            return Answer(index=index, topics=(EVENTS_TOPIC,), render=lambda: found)

        # The index is not monotonic, so Consul blocks only while it equals the client's (no ordering).
        answer = query()
        if opts.min_index and answer.index == opts.min_index:
            deadline = self.core.clock.monotonic() + query_timeout(opts.wait, self.core.rng)
            while answer.index == opts.min_index and not self.core.closing:
                remaining = deadline - self.core.clock.monotonic()
                if remaining <= 0:
                    break
                await wait_for_topics(self.core.store.watch, (EVENTS_TOPIC,), remaining, self.core.clock)
                answer = query()
        return call.reply_meta(answer.value, answer.index, opts)
