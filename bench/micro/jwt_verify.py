"""CPU per HS256 verification, the way JwtVerifier.check does it today, against the alternatives.

    .venv/bin/python bench/micro/jwt_verify.py

Rows: header parse + decode with the secret (today), the same with a PyJWK (does it skip prepare_key?),
decode_complete alone (one parse), and a dict hit for an already verified token (a verification cache).
"""

from __future__ import annotations

import base64
import time
import timeit

import jwt

SECRET = "consulgw-bench-hs256-secret-0123456789"
OPTIONS = {"verify_exp": False, "verify_nbf": False, "verify_iat": False, "require": ["exp", "sub"]}


def main() -> None:
    now = int(time.time())
    token = jwt.encode({"sub": "bench", "iat": now, "exp": now + 3600}, SECRET, algorithm="HS256")
    jwk = jwt.PyJWK(
        {"kty": "oct", "k": base64.urlsafe_b64encode(SECRET.encode()).rstrip(b"=").decode()}, algorithm="HS256"
    )
    cache: dict[str, dict[str, object]] = {}

    def today() -> None:
        jwt.get_unverified_header(token)
        jwt.decode(token, SECRET, algorithms=["HS256"], options=OPTIONS)

    def with_pyjwk() -> None:
        jwt.get_unverified_header(token)
        jwt.decode(token, jwk, algorithms=["HS256"], options=OPTIONS)

    def one_parse() -> None:
        jwt.decode_complete(token, jwk, algorithms=["HS256"], options=OPTIONS)

    def cached() -> None:
        claims = cache.get(token)
        if claims is None:
            claims = cache[token] = jwt.decode(token, SECRET, algorithms=["HS256"], options=OPTIONS)

    for name, fn in (
        ("header + decode (today)", today),
        ("same with a PyJWK", with_pyjwk),
        ("decode_complete only", one_parse),
        ("verification cache hit", cached),
    ):
        n = 20000
        best = min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6
        print(f"{name:26s} {best:6.1f} us/call")


if __name__ == "__main__":
    main()
