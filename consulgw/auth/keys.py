"""Which verification key may check which JWS algorithm.

A key is chosen by the token's (already allow-listed) ``alg`` *family* first and only then looked up, and every
asymmetric key is checked to be a public key of the family's type (and curve) before PyJWT sees it. So a public key
can never reach an HMAC verifier (the classic RS256 -> HS256 confusion, where the attacker signs with the public key
as the HMAC secret), an RSA key never checks an ES256 token, and a P-384 key never checks an ES256 token.
"""

from __future__ import annotations

from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

Family = Literal["hmac", "rsa", "ec", "okp"]
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1", "ES256K": "secp256k1"}
OKP_ALGORITHMS = frozenset({"EdDSA"})
SUPPORTED_ALGORITHMS = HMAC_ALGORITHMS | RSA_ALGORITHMS | frozenset(EC_CURVES) | OKP_ALGORITHMS


def family(alg: str) -> Family | None:
    """The key family of a JWS algorithm; None for ``none`` and anything unknown."""
    if alg in HMAC_ALGORITHMS:
        return "hmac"
    if alg in RSA_ALGORITHMS:
        return "rsa"
    if alg in EC_CURVES:
        return "ec"
    if alg in OKP_ALGORITHMS:
        return "okp"
    return None


def key_fits(key: object, alg: str) -> bool:
    """True when ``key`` is a public key that may verify ``alg`` signatures."""
    if alg in RSA_ALGORITHMS:
        return isinstance(key, rsa.RSAPublicKey)
    if alg in EC_CURVES:
        return isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == EC_CURVES[alg]
    if alg == "EdDSA":
        return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
    return False


def load_public_key(pem: str) -> PublicKey:
    """A PEM public key (SubjectPublicKeyInfo or PKCS#1 RSA). Raises ValueError for anything else."""
    try:
        key = serialization.load_pem_public_key(pem.encode("utf-8"))
    except (ValueError, TypeError, UnicodeError) as exc:
        raise ValueError("not a PEM public key") from exc
    if not isinstance(
        key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
    ):
        raise ValueError(f"unsupported public key type {type(key).__name__}")
    return key
