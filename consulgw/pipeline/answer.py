"""What the pipeline gives back for one request, whoever produced it: an upstream, a stage, or the gateway itself.

Every answer leaves through the same response phase (:func:`finish`): the response edits of the context that made
it (CORS, rate-limit headers, header transforms), then ``X-Request-ID``. So an upstream answer, a gateway error, a
breaker fallback and (later) a cached or composed answer all get the same headers by the same rule.

An ``Answer`` belongs to one request and is finished in place; its body is bytes or a
:class:`~consulgw.upstream.spool.Spool` still being filled by an upstream connection.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from multidict import CIMultiDict

from consulgw.errors import GatewayError, UpstreamError
from consulgw.pipeline.context import NO_EDITS, HeaderEdits
from consulgw.upstream.http1 import Http1Connection
from consulgw.upstream.spool import Spool

REQUEST_ID = "X-Request-ID"


@dataclass(slots=True, kw_only=True)
class Answer:
    status: int
    reason: str = ""
    headers: CIMultiDict[str] = field(default_factory=CIMultiDict)
    body: bytes | Spool = b""
    length: int | None = None  # declared length of a Spool body (None: unknown, sent chunked)
    tunnel: Http1Connection | None = None  # after a 101: the upstream end of a byte tunnel
    edits: HeaderEdits = NO_EDITS  # response edits of the context that produced the answer
    # Facts for the access log and metrics.
    instance: str | None = None
    attempts: int = 0
    error: str | None = None  # the gateway's error code when the gateway answered with an error
    failures: tuple[str, ...] = ()  # kinds of failed upstream attempts (retried or final)
    sent: int = 0  # body bytes written to the client

    def discard(self) -> None:
        """The answer will not be sent (the client went away): release its body and tunnel."""
        if isinstance(self.body, Spool):
            self.body.close()
        if self.tunnel is not None:
            self.tunnel.close()


def error_answer(exc: GatewayError, request_id: str, edits: HeaderEdits = NO_EDITS) -> Answer:
    """A gateway error as JSON ``{"error", "message", "request_id"}``, with the error's own headers."""
    headers: CIMultiDict[str] = CIMultiDict(exc.headers)
    headers["Content-Type"] = "application/json"
    headers["Cache-Control"] = "no-store"
    body = json.dumps({"error": exc.code, "message": exc.message, "request_id": request_id}).encode()
    answer = Answer(status=exc.status, headers=headers, body=body, edits=edits, error=exc.code)
    if isinstance(exc, UpstreamError):  # the attempts made before giving up (request_completed's ``attempts``)
        answer.attempts = exc.attempts
        answer.failures = exc.failures
    return answer


def finish(answer: Answer, request_id: str) -> None:
    """The response phase: one rule for every answer."""
    if answer.edits:
        answer.edits.apply(answer.headers)
    answer.headers[REQUEST_ID] = request_id
