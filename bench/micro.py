"""Micro-measurements behind docs/decisions.md: per-operation costs on the validation path.

Run: .venv/bin/python bench/micro.py   (CPU only, no network; prints one line per measurement)
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jwt as pyjwt

from ostiary import keys
from ostiary.tokens import opaque
from ostiary.tokens.jwt import JwtPolicy, sign_jwt, verify_jwt


def per_op(fn: Callable[[], object], seconds: float = 1.0) -> float:
    """Microseconds per call, best of three runs of about ``seconds`` / 3 each."""
    best = float("inf")
    for _ in range(3):
        n = 0
        start = time.perf_counter()
        deadline = start + seconds / 3
        while time.perf_counter() < deadline:
            for _ in range(50):
                fn()
            n += 50
        best = min(best, (time.perf_counter() - start) / n * 1e6)
    return best


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    policy = JwtPolicy(issuer="https://i", audience=frozenset({"api"}), clock_skew=60)
    now = int(time.time())
    claims = {"iss": "https://i", "sub": "alice", "aud": "api", "exp": now + 3600, "nbf": now, "iat": now,
              "jti": "j", "sid": "s"}  # fmt: skip
    print("| operation | µs/op |")
    print("|---|---:|")
    for alg in ("ES256", "RS256", "EdDSA", "HS256"):
        keys.generate(tmp / alg, alg)
        ring = keys.load_keyring(tmp / alg)
        token = sign_jwt(claims, ring.active)
        key = ring.active.verify_key
        ours = per_op(lambda: verify_jwt(token, ring, policy))  # noqa: B023
        theirs = per_op(lambda: pyjwt.decode(token, key, algorithms=[alg], audience="api", issuer="https://i"))  # noqa: B023
        print(f"| {alg} verify: ostiary strict path (parse + PyJWT algorithm verify + claims) | {ours:.1f} |")
        print(f"| {alg} verify: PyJWT jwt.decode (for comparison) | {theirs:.1f} |")
    token = opaque.new_token()
    raw = opaque.token_bytes(token)
    blob = opaque.seal(raw, {"sub": "alice", "sid": "s", "claims": {}, "created_at": now})
    lookup = per_op(lambda: opaque.record_key(opaque.token_bytes(token)))
    print(f"| opaque: parse + record key (SHA-256) | {lookup:.1f} |")
    print(f"| opaque: unseal (HKDF + AES-256-GCM) | {per_op(lambda: opaque.unseal(raw, blob)):.1f} |")
    print(f"| opaque: seal (HKDF + AES-256-GCM) | {per_op(lambda: opaque.seal(raw, {'sub': 'a'})):.1f} |")


if __name__ == "__main__":
    main()
