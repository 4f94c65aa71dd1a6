"""Signing material for the auth tests: one key of each family, tokens signed with them, JWK forms."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

NOW = 1_700_000_000.0  # FakeClock's wall time
HS_SECRET = "correct horse battery staple, 32+ bytes long"


class Keys:
    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.rsa2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.ec384 = ec.generate_private_key(ec.SECP384R1())
        self.ed = ed25519.Ed25519PrivateKey.generate()

    @staticmethod
    def pem(private: Any) -> str:
        return str(
            private.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    @staticmethod
    def jwk(private: Any, kid: str, **extra: str) -> dict[str, Any]:
        public = private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            data = RSAAlgorithm.to_jwk(public, as_dict=True)
        elif isinstance(public, ec.EllipticCurvePublicKey):
            data = ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            data = OKPAlgorithm.to_jwk(public, as_dict=True)
        return {**data, "kid": kid, **extra}


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"sub": "user-42", "exp": NOW + 300, "iat": NOW - 10, "scope": "read write"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(key: Any, alg: str, payload: dict[str, Any], **headers: Any) -> str:
    return jwt.encode(payload, key, algorithm=alg, headers=headers or None)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge_hs256(secret: bytes, payload: dict[str, Any], header: dict[str, Any] | None = None) -> str:
    """An HS256 token made by hand (PyJWT refuses to use a PEM public key as an HMAC secret; attackers do not)."""
    head = b64url(json.dumps(header or {"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(payload).encode())
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(mac)}"


def unsigned(payload: dict[str, Any]) -> str:
    head = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{head}.{b64url(json.dumps(payload).encode())}."
