"""HTTP vocabulary shared by the policy parser, the pipeline and the transport (one list each, kept here)."""

from __future__ import annotations

from typing import Final

# RFC 9110 section 7.6.1 connection-specific fields, plus the legacy ones every proxy also treats as such.
HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Fields the transport frames itself: never copied from a client or a policy onto an upstream request.
FRAMING: Final = frozenset({"content-length", "transfer-encoding", "host"})
# Identity fields only the gateway may set (after authentication); whatever a client sends is dropped.
USER_ID_HEADER: Final = "X-User-ID"
CONSUMER_ID_HEADER: Final = "X-Consumer-ID"
SCOPES_HEADER: Final = "X-User-Scopes"
IDENTITY_HEADERS: Final = (CONSUMER_ID_HEADER, USER_ID_HEADER, SCOPES_HEADER)
# Fields that name the client or the way it came: believed only from a trusted proxy. The three X-Forwarded-* the
# gateway composes are set on every request; any other X-Forwarded-* name counts too (FORWARDING_PREFIX).
FORWARDING_HEADERS: Final = ("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "Forwarded", "X-Real-IP")
FORWARDING_PREFIX: Final = "x-forwarded-"
# The one credential field the gateway and most applications read; a request carries at most one.
CREDENTIAL_HEADER: Final = "Authorization"
REQUEST_ID_HEADER: Final = "X-Request-ID"
# Methods a request may be sent again for (RFC 9110 section 9.2.2).
IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
