"""What an authenticator answers: a verified ``Identity`` or a ``Rejection`` that becomes a 401/403.

A rejection's message and challenge are shown to clients: they are fixed phrases chosen here, never the token, key,
password or anything else the client sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from consulgw.errors import Forbidden, GatewayError, Unauthorized
from consulgw.model.http import CONSUMER_ID_HEADER, IDENTITY_HEADERS, SCOPES_HEADER, USER_ID_HEADER

# The ``reason`` label of consulgw_auth_rejected_total: a small fixed vocabulary.
RejectReason = Literal[
    "missing_credentials",
    "malformed_credentials",
    "disallowed_algorithm",
    "unknown_key",
    "invalid_signature",
    "expired",
    "not_yet_valid",
    "invalid_claims",
    "unknown_consumer",
    "wrong_password",
    "insufficient_scope",
]

__all__ = ["CONSUMER_ID_HEADER", "IDENTITY_HEADERS", "SCOPES_HEADER", "USER_ID_HEADER", "Identity", "Rejection"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    """A verified caller: a JWT subject (``X-User-ID``) or a consumer name (``X-Consumer-ID``)."""

    header: str
    name: str
    scopes: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejection:
    reason: RejectReason
    message: str  # safe to show
    challenge: str  # the WWW-Authenticate value
    forbidden: bool = False  # 403 (authenticated, not allowed) rather than 401

    def error(self) -> GatewayError:
        headers = {"WWW-Authenticate": self.challenge}
        if self.forbidden:
            return Forbidden(self.message, headers=headers)
        return Unauthorized(self.message, headers=headers)


def quoted(value: str) -> str:
    """An RFC 9110 quoted-string (for realms and header names inside a challenge)."""
    cleaned = "".join(ch for ch in value if ch == "\t" or (" " <= ch <= "~"))
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'


def is_safe_header_value(value: str) -> bool:
    """Printable ASCII only: an identity copied into an upstream header must not smuggle CR/LF or control bytes."""
    return bool(value) and all(" " <= ch <= "~" for ch in value)
