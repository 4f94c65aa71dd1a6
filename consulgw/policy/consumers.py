"""Hashing of consumer credentials: API keys as SHA-256 digests, passwords as salted scrypt hashes.

Nothing here stores or logs a plaintext secret. Formats:

- API key: ``sha256(key.encode("utf-8")).hexdigest()`` -- 64 lower-case hex characters. API keys are long random
  tokens, so an unsalted fast hash is enough to make a leaked KV dump useless, and it lets the gateway look a key
  up by digest in O(1) (``PolicyBook.consumers_by_key``).
- Password: ``scrypt$<n>$<r>$<p>$<salt, base64>$<hash, base64>`` (standard base64 with padding), made by the
  standard library's ``hashlib.scrypt`` with a random 16-byte salt and a 32-byte derived key. The parameters travel
  with the hash, so they can be raised later without invalidating stored passwords.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from dataclasses import dataclass

SCRYPT_N = 2**14  # CPU/memory cost: 16 MiB and ~50 ms per hash with r=8
SCRYPT_R = 8
SCRYPT_P = 1
_SALT_BYTES = 16
_HASH_BYTES = 32
# Bounds accepted when verifying, so that a hostile stored value cannot make one check burn a GiB or a minute.
_MAX_N = 2**20
_MAX_R = 32
_MAX_P = 16
_MAX_MEM = 256 * 1024 * 1024
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


def api_key_digest(key: str) -> str:
    """The SHA-256 hex digest under which an API key is stored and looked up."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def is_api_key_digest(value: str) -> bool:
    """True for 64 lower-case hex characters."""
    return _HEX_DIGEST.fullmatch(value) is not None


def digest_hint(digest: str) -> str:
    """A short, safe way to name a stored key in output: ``sha256:1a2b3c4d…``."""
    return f"sha256:{digest[:8]}…"


@dataclass(frozen=True, slots=True, kw_only=True)
class ScryptHash:
    """A parsed ``scrypt$n$r$p$salt$hash`` string."""

    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes


def parse_password_hash(stored: str) -> ScryptHash | None:
    """Parse a stored password hash; None when it is not a well-formed hash within the accepted bounds."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return None
    n_text, r_text, p_text, salt_text, hash_text = parts[1:]
    if not (n_text.isascii() and n_text.isdigit() and r_text.isascii() and r_text.isdigit()):
        return None
    if not (p_text.isascii() and p_text.isdigit()) or max(len(n_text), len(r_text), len(p_text)) > 8:
        return None
    n, r, p = int(n_text), int(r_text), int(p_text)
    if n < 2 or n > _MAX_N or n & (n - 1) or not 1 <= r <= _MAX_R or not 1 <= p <= _MAX_P:
        return None
    if 128 * r * n + 128 * r * p > _MAX_MEM:
        return None
    try:
        salt = base64.b64decode(salt_text.encode("ascii"), validate=True)
        digest = base64.b64decode(hash_text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return None
    if not salt or not 16 <= len(digest) <= 128:
        return None
    return ScryptHash(n=n, r=r, p=p, salt=salt, digest=digest)


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """Hash a password for ``consulgw/consumers/<name>``'s ``password_hash``."""
    salt = os.urandom(_SALT_BYTES) if salt is None else salt
    digest = _scrypt(password.encode("utf-8", "surrogatepass"), salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, _HASH_BYTES)
    return "$".join(
        (
            "scrypt",
            str(SCRYPT_N),
            str(SCRYPT_R),
            str(SCRYPT_P),
            base64.b64encode(salt).decode("ascii"),
            base64.b64encode(digest).decode("ascii"),
        )
    )


def verify_password(stored: str | None, given: str) -> bool:
    """Constant-time check of ``given`` against a stored hash. Never raises: a missing or malformed hash gives False."""
    if not isinstance(stored, str) or not isinstance(given, str):
        return False
    parsed = parse_password_hash(stored)
    if parsed is None:
        return False
    try:
        candidate = _scrypt(
            given.encode("utf-8", "surrogatepass"), parsed.salt, parsed.n, parsed.r, parsed.p, len(parsed.digest)
        )
    except (ValueError, MemoryError, OverflowError):
        return False
    return hmac.compare_digest(candidate, parsed.digest)


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    maxmem = 128 * r * n + 128 * r * p + 1024 * 1024
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=length)
