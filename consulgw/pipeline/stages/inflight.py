"""The ``max_in_flight`` step: at most N requests of a service on their way to its instances at once.

A request counts from the moment this step lets it through until its instance has finished answering (the answer's
body has fully arrived in the gateway's spool, or there was no upstream answer at all). A slow client therefore does
not count: its answer waits in the spool, not at the instance. Beyond the limit the answer is ``503 overloaded`` at
once; nothing queues. The counts live in :class:`InFlight`, outside the view, so a policy edit keeps them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from consulgw.errors import Overloaded
from consulgw.pipeline.answer import Answer
from consulgw.pipeline.chain import Next
from consulgw.pipeline.context import Inbound, RequestContext
from consulgw.upstream.spool import Spool


@dataclass(slots=True)
class InFlight:
    """Requests in flight per service (one per gateway process, shared by every rebuild of every service's steps)."""

    counts: dict[str, int] = field(default_factory=dict)

    def enter(self, service: str, limit: int) -> bool:
        current = self.counts.get(service, 0)
        if current >= limit:
            return False
        self.counts[service] = current + 1
        return True

    def leave(self, service: str) -> None:
        current = self.counts.get(service, 0) - 1
        if current > 0:
            self.counts[service] = current
        else:
            self.counts.pop(service, None)


@dataclass(frozen=True, slots=True)
class InFlightLimitStage:
    limit: int
    in_flight: InFlight

    async def __call__(self, ctx: RequestContext, request: Inbound, call_next: Next) -> Answer:
        service = ctx.service
        in_flight = self.in_flight
        if not in_flight.enter(service, self.limit):
            raise Overloaded(f"{service} already has {self.limit} requests in flight", headers={"Retry-After": "1"})
        try:
            answer = await call_next(ctx)
        except BaseException:
            in_flight.leave(service)
            raise
        body = answer.body
        if isinstance(body, Spool) and not body.at_eof:
            body.add_done_callback(lambda: in_flight.leave(service))
        else:
            in_flight.leave(service)
        return answer
