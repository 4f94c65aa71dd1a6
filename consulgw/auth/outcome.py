"""What an authenticator answers: a verified ``Identity`` or a ``Rejection`` that becomes a 401/403.

A rejection's message and challenge are shown to clients: they are fixed phrases chosen here, never the token, key,
password or anything else the client sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from consulgw.errors import AuthUnavailable, Forbidden, GatewayError, Unauthorized
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
    "inactive_token",  # introspection: the authorization server says the token is not active
    "auth_unavailable",  # the identity provider could not answer (503, not a 401)
]

__all__ = ["CONSUMER_ID_HEADER", "IDENTITY_HEADERS", "SCOPES_HEADER", "USER_ID_HEADER", "Identity", "Rejection"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    """A verified caller: a JWT subject (``X-User-ID``) or a consumer name (``X-Consumer-ID``).

    ``extra`` are further trusted headers for the upstream (introspection: ``X-Consumer-ID`` next to ``X-User-ID``,
    and the policy's ``claims_to_headers``); their values are already checked with ``is_safe_header_value``.
    """

    header: str
    name: str
    scopes: frozenset[str] = frozenset()
    extra: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejection:
    reason: RejectReason
    message: str  # safe to show
    challenge: str  # the WWW-Authenticate value ("" for none)
    forbidden: bool = False  # 403 (authenticated, not allowed) rather than 401
    unavailable: bool = False  # 503: the identity provider could not answer; says nothing about the credential

    def error(self) -> GatewayError:
        if self.unavailable:
            return AuthUnavailable(self.message, headers={"Retry-After": "1"})
        headers = {"WWW-Authenticate": self.challenge} if self.challenge else {}
        if self.forbidden:
            return Forbidden(self.message, headers=headers)
        return Unauthorized(self.message, headers=headers)


def insufficient_scope(
    required: frozenset[str], granted: frozenset[str], *, challenge: str, noun: str = "credential"
) -> Rejection | None:
    """A 403 when ``granted`` lacks any of ``required`` (None when nothing is missing).

    ``challenge`` is the ``WWW-Authenticate`` value to send ("" for none: API keys and Basic have no registered
    way to say "insufficient scope", and a Basic challenge on a 403 would only make browsers prompt again).
    """
    if required <= granted:
        return None
    needed = " ".join(sorted(required))
    return Rejection(
        reason="insufficient_scope",
        message=f"the {noun} lacks a required scope (needs: {needed})",
        challenge=challenge,
        forbidden=True,
    )


def quoted(value: str) -> str:
    """An RFC 9110 quoted-string (for realms and header names inside a challenge)."""
    cleaned = "".join(ch for ch in value if ch == "\t" or (" " <= ch <= "~"))
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'


def is_safe_header_value(value: str) -> bool:
    """Printable ASCII only: an identity copied into an upstream header must not smuggle CR/LF or control bytes."""
    return bool(value) and all(" " <= ch <= "~" for ch in value)
