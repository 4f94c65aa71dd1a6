"""API keys (``ApiKeyAuth``): the key from the configured header, looked up by its SHA-256 digest.

Consumers store only ``sha256(key)`` (``consulgw.policy.consumers.api_key_digest``) and the live book indexes them
(``PolicyBook.consumers_by_key``). A constant-time comparison is not needed here: we never compare the secret with a
stored secret byte by byte; we hash the presented key and look the digest up in a hash map. The time a dict lookup
takes depends on the digest's hash, not on how many leading bytes of a real key the guess got right, and learning
anything about a SHA-256 digest does not help forge its preimage.

The challenge is ``WWW-Authenticate: ApiKey header="<header>"``: there is no registered scheme for API keys, and
this tells a client which header to send (the same shape several gateways use). A consumer whose ``scopes`` lack
one of the policy's ``required_scopes`` gets 403 ``forbidden`` without a challenge (there is no registered way to
say "insufficient scope" for API keys, and another key would not be the fix).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from consulgw.auth.outcome import (
    CONSUMER_ID_HEADER,
    Identity,
    Rejection,
    insufficient_scope,
    is_safe_header_value,
    quoted,
)
from consulgw.policy.consumers import api_key_digest
from consulgw.policy.model import ApiKeyAuth, PolicyBook


class ApiKeyAuthenticator:
    def __init__(self, policy: ApiKeyAuth, *, consumers: Callable[[], PolicyBook]) -> None:
        self._header = policy.header
        self._required_scopes = policy.required_scopes
        self._consumers = consumers
        self._challenge = f"ApiKey header={quoted(policy.header)}"

    @property
    def header(self) -> str:
        return self._header

    def check(self, headers: Mapping[str, str]) -> Identity | Rejection:
        key = headers.get(self._header)
        if not key:
            return Rejection(
                reason="missing_credentials",
                message=f"an API key is required in {self._header}",
                challenge=self._challenge,
            )
        consumer = self._consumers().consumers_by_key.get(api_key_digest(key))
        if consumer is None or not is_safe_header_value(consumer.name):
            return Rejection(reason="unknown_consumer", message="invalid API key", challenge=self._challenge)
        refused = insufficient_scope(self._required_scopes, consumer.scopes, challenge="")
        if refused is not None:
            return refused
        return Identity(header=CONSUMER_ID_HEADER, name=consumer.name, scopes=consumer.scopes)
