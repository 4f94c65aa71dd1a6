"""HTTP Basic authentication (``BasicAuth``, RFC 7617) against consumers' scrypt password hashes.

The header is decoded strictly: scheme ``Basic`` (case-insensitive), one token68 of standard base64 with valid
padding and no other characters, UTF-8 ``user-id:password`` with a non-empty user id. Anything else is a malformed
credential. Unknown users and wrong passwords get the same message, and an unknown user still pays one scrypt run
(against a fixed dummy hash) so response times do not reveal which consumer names exist.

scrypt is deliberately slow (~50 ms), so it runs in a worker thread (``hashlib.scrypt`` releases the GIL), never on
the event loop, and at most two at a time per process (``VerifiedPasswords``). Successful checks are remembered in
``VerifiedPasswords`` (bounded, process-wide), keyed by an HMAC under a random per-process key of the user id, the
stored hash and the password: an entry is useless outside this process, never holds a password, and dies by itself
when the consumer's password hash changes. Only successes are cached, so guessing cannot fill it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping

from consulgw.auth.outcome import (
    CONSUMER_ID_HEADER,
    Identity,
    Rejection,
    RejectReason,
    insufficient_scope,
    is_safe_header_value,
    quoted,
)
from consulgw.policy.consumers import verify_password
from consulgw.policy.model import BasicAuth, PolicyBook

# A well-formed hash with the default cost whose digest matches no password (for unknown users).
_DUMMY_HASH = (
    "scrypt$16384$8$1$" + base64.b64encode(b"consulgw-dummy!!").decode() + "$" + base64.b64encode(bytes(32)).decode()
)
_MAX_HEADER = 4096


class VerifiedPasswords:
    """Password checks of this process: scrypt off the event loop, bounded concurrency, a cache of successes.

    At most ``max_concurrent`` scrypt runs at a time (in the loop's default executor): a flood of bad passwords
    queues here instead of occupying every thread of that executor, which aiohttp also uses for DNS lookups.
    Successes are remembered in a bounded LRU as HMAC digests (see the module docstring).
    """

    def __init__(self, *, max_entries: int = 10_000, max_concurrent: int = 2) -> None:
        self._key = os.urandom(32)
        self._max_entries = max_entries
        self._entries: OrderedDict[bytes, None] = OrderedDict()
        self._slots = asyncio.Semaphore(max_concurrent)

    def _digest(self, user: str, stored: str, password: str) -> bytes:
        message = "\0".join((user, stored, password)).encode("utf-8", "surrogatepass")
        return hmac.new(self._key, message, hashlib.sha256).digest()

    async def check(self, user: str, stored: str, password: str) -> bool:
        """True when ``password`` matches ``stored`` (scrypt ``verify_password``, cached on success)."""
        digest = self._digest(user, stored, password)
        if digest in self._entries:
            self._entries.move_to_end(digest)
            return True
        async with self._slots:
            ok = await asyncio.to_thread(verify_password, stored, password)
        if ok:
            self._entries[digest] = None
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return ok

    async def burn(self, password: str) -> None:
        """Spend one scrypt run on a dummy hash, so an unknown user costs what a known one does."""
        async with self._slots:
            await asyncio.to_thread(verify_password, _DUMMY_HASH, password)


def parse_basic(value: str) -> tuple[str, str] | None:
    """``(user, password)`` from an ``Authorization: Basic`` value; None when it is not one, strictly."""
    if len(value) > _MAX_HEADER:
        return None
    scheme, sep, token = value.strip().partition(" ")
    token = token.strip(" ")
    if not sep or scheme.lower() != "basic" or not token or " " in token:
        return None
    try:
        raw = base64.b64decode(token.encode("ascii"), validate=True)
        decoded = raw.decode("utf-8")
    except (binascii.Error, ValueError, UnicodeError):
        return None
    user, colon, password = decoded.partition(":")
    if not colon or not user:
        return None
    return user, password


class BasicAuthenticator:
    def __init__(self, policy: BasicAuth, *, consumers: Callable[[], PolicyBook], verified: VerifiedPasswords) -> None:
        self._consumers = consumers
        self._verified = verified
        self._required_scopes = policy.required_scopes
        self._challenge = f'Basic realm={quoted(policy.realm)}, charset="UTF-8"'

    @property
    def header(self) -> str:
        return "Authorization"

    def _reject(self, reason: RejectReason) -> Rejection:
        messages = {
            "missing_credentials": "credentials are required",
            "malformed_credentials": "malformed Basic credentials",
        }
        message = messages.get(reason, "invalid username or password")  # same words for unknown user and bad password
        return Rejection(reason=reason, message=message, challenge=self._challenge)

    async def check(self, headers: Mapping[str, str]) -> Identity | Rejection:
        value = headers.get("Authorization")
        if not value:
            return self._reject("missing_credentials")
        parsed = parse_basic(value)
        if parsed is None:
            return self._reject("malformed_credentials")
        user, password = parsed
        consumer = self._consumers().consumers.get(user)
        if consumer is None or consumer.password_hash is None or not is_safe_header_value(consumer.name):
            await self._verified.burn(password)
            return self._reject("unknown_consumer")
        if not await self._verified.check(user, consumer.password_hash, password):
            return self._reject("wrong_password")
        refused = insufficient_scope(self._required_scopes, consumer.scopes, challenge="")
        if refused is not None:
            return refused  # 403 without a challenge: a Basic challenge would only make browsers prompt again
        return Identity(header=CONSUMER_ID_HEADER, name=consumer.name, scopes=consumer.scopes)
