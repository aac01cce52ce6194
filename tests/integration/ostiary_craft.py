"""Build tokens by hand for the tests: sign with the key files the daemon uses, or forge them.

Everything is done from the key directory on disk (the files `ostiary keys generate` writes), so
the tests depend on the documented file format, not on the daemon's code.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, HMACAlgorithm, OKPAlgorithm, RSAAlgorithm


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jdump(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


@dataclass(frozen=True)
class KeyFiles:
    """One key of a key directory as files: metadata, private key (or secret), public PEM."""

    kid: str
    alg: str
    state: str
    private: Any  # cryptography private key, or bytes (HS256 secret)
    public_pem: bytes | None

    @property
    def public(self) -> Any:
        return self.private if isinstance(self.private, bytes) else self.private.public_key()


def load_key(keys_dir: Path, kid: str) -> KeyFiles:
    meta = json.loads((keys_dir / f"{kid}.json").read_text())
    raw = (keys_dir / f"{kid}.key").read_bytes()
    private: Any
    if meta["alg"] == "HS256":
        private = b64url_decode(raw.decode().strip())
        public_pem = None
    else:
        private = serialization.load_pem_private_key(raw, password=None)
        public_pem = (keys_dir / f"{kid}.pub").read_bytes()
    return KeyFiles(kid=kid, alg=meta["alg"], state=meta["state"], private=private, public_pem=public_pem)


def active_key(keys_dir: Path) -> KeyFiles:
    for path in keys_dir.glob("*.json"):
        meta = json.loads(path.read_text())
        if meta.get("state") == "active":
            return load_key(keys_dir, meta["kid"])
    raise AssertionError(f"no active key in {keys_dir}")


def sign_raw(alg: str, key: Any, signing_input: bytes) -> bytes:
    """A JWS signature (raw r||s for ECDSA, as JWS wants) over ``signing_input``."""
    if alg == "ES256":
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return ECAlgorithm(ECAlgorithm.SHA256).sign(signing_input, key)
    if alg == "RS256":
        assert isinstance(key, rsa.RSAPrivateKey)
        return RSAAlgorithm(RSAAlgorithm.SHA256).sign(signing_input, key)
    if alg == "EdDSA":
        assert isinstance(key, ed25519.Ed25519PrivateKey)
        return OKPAlgorithm().sign(signing_input, key)
    if alg == "HS256":
        assert isinstance(key, bytes)
        return HMACAlgorithm(HMACAlgorithm.SHA256).sign(signing_input, key)
    raise ValueError(alg)


def compact(header_bytes: bytes, payload_bytes: bytes, sign: Any = None) -> str:
    """``b64(header).b64(payload).b64(sig)`` from raw JSON bytes (so duplicate keys survive);
    ``sign`` maps the signing input to signature bytes, or is None for an empty signature."""
    signing_input = f"{b64url(header_bytes)}.{b64url(payload_bytes)}".encode()
    signature = sign(signing_input) if sign is not None else b""
    return f"{signing_input.decode()}.{b64url(signature)}"


def forge(key: KeyFiles, claims: dict[str, Any], header: dict[str, Any] | None = None) -> str:
    """A token signed with ``key``'s private key file; ``header`` replaces the default header."""
    hdr = header if header is not None else {"alg": key.alg, "kid": key.kid, "typ": "at+jwt"}
    return compact(jdump(hdr), jdump(claims), lambda data: sign_raw(key.alg, key.private, data))


def unverified_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a JWT, without any verification (to copy a real token's claims)."""
    header_b64, payload_b64, _ = token.split(".")
    return json.loads(b64url_decode(header_b64)), json.loads(b64url_decode(payload_b64))


def claims_like(token: str, **changes: Any) -> dict[str, Any]:
    """The claims of a real issued token with some changed (``None`` removes a claim)."""
    _, claims = unverified_parts(token)
    for name, value in changes.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def shifted_claims(token: str, *, offset: int) -> dict[str, Any]:
    """Claims of ``token`` whose whole validity window is moved by ``offset`` seconds:
    ``offset > 0`` -> nbf/iat in the future; ``offset < 0`` -> exp in the past."""
    now = int(time.time())
    _, claims = unverified_parts(token)
    if offset > 0:
        claims.update(iat=now + offset, nbf=now + offset, exp=now + offset + 600)
    else:
        claims.update(iat=now + offset - 600, nbf=now + offset - 600, exp=now + offset)
    return claims


def flip_signature_byte(token: str) -> str:
    """Same length, one bit of the signature changed: a well-formed token that must not verify."""
    head, payload, sig = token.split(".")
    raw = bytearray(b64url_decode(sig))
    raw[len(raw) // 2] ^= 0x01
    return f"{head}.{payload}.{b64url(bytes(raw))}"


def ec_jwk_thumbprint(public: ec.EllipticCurvePublicKey) -> str:
    """RFC 7638 thumbprint of a P-256 public key, computed from its coordinates (independent of
    any JWK library): required members crv, kty, x, y in lexicographic order, no whitespace."""
    numbers = public.public_numbers()
    size = (public.curve.key_size + 7) // 8
    canonical = (
        '{"crv":"P-256","kty":"EC","x":"'
        + b64url(numbers.x.to_bytes(size, "big"))
        + '","y":"'
        + b64url(numbers.y.to_bytes(size, "big"))
        + '"}'
    )
    return b64url(hashlib.sha256(canonical.encode()).digest())


def rsa_jwk_thumbprint(public: rsa.RSAPublicKey) -> str:
    numbers = public.public_numbers()
    n = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
    e = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
    canonical = '{"e":"' + b64url(e) + '","kty":"RSA","n":"' + b64url(n) + '"}'
    return b64url(hashlib.sha256(canonical.encode()).digest())


def okp_jwk_thumbprint(public: ed25519.Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    canonical = '{"crv":"Ed25519","kty":"OKP","x":"' + b64url(raw) + '"}'
    return b64url(hashlib.sha256(canonical.encode()).digest())


def thumbprint_of(public: Any) -> str:
    if isinstance(public, ec.EllipticCurvePublicKey):
        return ec_jwk_thumbprint(public)
    if isinstance(public, rsa.RSAPublicKey):
        return rsa_jwk_thumbprint(public)
    if isinstance(public, ed25519.Ed25519PublicKey):
        return okp_jwk_thumbprint(public)
    raise TypeError(type(public).__name__)
