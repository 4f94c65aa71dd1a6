"""Credential hashing: API-key digests and scrypt password hashes."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consulgw.policy.consumers import (
    api_key_digest,
    digest_hint,
    hash_password,
    is_api_key_digest,
    parse_password_hash,
    verify_password,
)


def test_api_key_digest_is_sha256_hex() -> None:
    digest = api_key_digest("k-123")
    assert digest == hashlib.sha256(b"k-123").hexdigest()
    assert is_api_key_digest(digest)
    assert digest_hint(digest) == f"sha256:{digest[:8]}…"


def test_password_hash_format_and_verify() -> None:
    stored = hash_password("correct horse")
    scheme, n, r, p, salt, digest = stored.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    assert len(base64.b64decode(salt)) == 16
    assert len(base64.b64decode(digest)) == 32
    assert "correct horse" not in stored
    assert verify_password(stored, "correct horse")
    assert not verify_password(stored, "correct horse ")
    assert not verify_password(stored, "")


def test_salts_differ() -> None:
    assert hash_password("same") != hash_password("same")


def test_verify_accepts_other_cost_parameters() -> None:
    salt = b"0123456789abcdef"
    derived = hashlib.scrypt(b"pw", salt=salt, n=1024, r=4, p=2, dklen=24)
    stored = f"scrypt$1024$4$2${base64.b64encode(salt).decode()}${base64.b64encode(derived).decode()}"
    assert verify_password(stored, "pw")


VALID = hash_password("pw")


@pytest.mark.parametrize(
    "stored",
    [
        pytest.param("", id="empty"),
        pytest.param("pw", id="plaintext"),
        pytest.param(None, id="none"),
        pytest.param(VALID.replace("scrypt", "bcrypt", 1), id="other-scheme"),
        pytest.param(VALID + "$x", id="extra-field"),
        pytest.param(VALID.replace("$16384$", "$1000$"), id="n-not-power-of-two"),
        pytest.param(VALID.replace("$16384$", "$1073741824$"), id="n-too-large"),
        pytest.param(VALID.replace("$16384$", "$-16384$"), id="n-negative"),
        pytest.param(VALID.replace("$8$", "$999$", 1), id="r-too-large"),
        pytest.param(VALID.replace("$1$", "$0$", 1), id="p-zero"),
        pytest.param(VALID[:-4] + "!!!!", id="bad-base64"),
        pytest.param("scrypt$16384$8$1$$", id="empty-salt"),
        pytest.param("scrypt$١٦٣٨٤$8$1$AAAA$AAAA", id="unicode-digits"),
    ],
)
def test_malformed_hashes_verify_false(stored: str | None) -> None:
    assert verify_password(stored, "pw") is False


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80), st.text(max_size=20))
def test_verify_never_raises(stored: str, given_password: str) -> None:
    assert verify_password(stored, given_password) in (True, False)
    if parse_password_hash(stored) is None:
        assert verify_password(stored, given_password) is False
