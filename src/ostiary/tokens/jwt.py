"""JWS/JWT verification per RFC 7515, RFC 8725 and RFC 9068, strict by construction.

Parsing is our own because it must be stricter than general-purpose libraries: duplicate JSON
members are refused (PyJWT keeps the last one), sizes are bounded, and the header never selects a
key or an algorithm by itself. The signature arithmetic is PyJWT's algorithm objects over
``cryptography``: no hand-written crypto.
"""

from __future__ import annotations

import binascii
import json
import re
import time
from dataclasses import dataclass
from typing import Any

import jwt as pyjwt
from jwt.algorithms import get_default_algorithms

from ..faults import TokenFault
from ..keys import KeyRing, LoadedKey, b64url, b64url_decode

MAX_TOKEN_LENGTH = 8192
MAX_HEADER_LENGTH = 1024
ACCEPTED_TYP = frozenset({"at+jwt", "application/at+jwt"})
# Header members that would let the token choose its own key or change processing rules.
FORBIDDEN_HEADER_MEMBERS = frozenset({"jwk", "jku", "x5u", "x5c", "x5t", "x5t#S256", "crit", "b64", "zip"})
_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")
_KID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_ALGS = get_default_algorithms()


@dataclass(frozen=True)
class VerifyKey:
    """A key bound to exactly one algorithm."""

    alg: str
    key: Any

    @classmethod
    def from_jwk(cls, jwk: dict[str, Any]) -> VerifyKey:
        alg = jwk.get("alg")
        if alg not in ("ES256", "RS256", "EdDSA", "HS256"):
            raise ValueError(f"unsupported key algorithm {alg!r}")
        return cls(alg=alg, key=_ALGS[alg].from_jwk(json.dumps(jwk)))


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for name, value in pairs:
        if name in obj:
            raise ValueError(f"duplicate member {name!r}")
        obj[name] = value
    return obj


def _json_object(segment: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(segment.decode("utf-8"), object_pairs_hook=_reject_duplicates,
                           parse_constant=_no_constants)  # fmt: skip
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise TokenFault("MALFORMED", f"{what} is not a JSON object: {exc}") from exc
    if not isinstance(value, dict):
        raise TokenFault("MALFORMED", f"{what} is not a JSON object")
    return value


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _b64(segment: str, what: str) -> bytes:
    if not _B64URL.match(segment):
        raise TokenFault("MALFORMED", f"{what} is not base64url")
    if len(segment) % 4 == 1:
        raise TokenFault("MALFORMED", f"{what} has an impossible base64url length")
    try:
        decoded = b64url_decode(segment)
    except (binascii.Error, ValueError) as exc:
        raise TokenFault("MALFORMED", f"{what} is not base64url") from exc
    if b64url(decoded) != segment:  # non-zero unused bits: two encodings of one value
        raise TokenFault("MALFORMED", f"{what} is not canonical base64url")
    return decoded


# Parsed headers by their encoded form: every token of one key carries the same header, so this
# skips a strict JSON parse per request. Bounded; entries are never mutated (callers only read).
_HEADERS: dict[str, dict[str, Any]] = {}
_HEADER_CACHE_SIZE = 256


@dataclass(frozen=True)
class ParsedJws:
    header: dict[str, Any]
    payload: bytes
    signing_input: bytes
    signature: bytes


def parse_compact(token: str) -> ParsedJws:
    """Split and decode a compact JWS; refuse anything malformed before any key is looked at."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise TokenFault("MALFORMED", "token too long")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenFault("MALFORMED", "a compact JWS has exactly three segments")
    header_b64, payload_b64, sig_b64 = parts
    if len(header_b64) > MAX_HEADER_LENGTH:
        raise TokenFault("MALFORMED", "header too long")
    if not header_b64 or not payload_b64 or not sig_b64:
        raise TokenFault("MALFORMED", "empty segment")
    header = _HEADERS.get(header_b64)
    if header is None:
        header = _json_object(_b64(header_b64, "header"), "header")
        if len(_HEADERS) < _HEADER_CACHE_SIZE:
            _HEADERS[header_b64] = header
    payload = _b64(payload_b64, "payload")
    signature = _b64(sig_b64, "signature")
    return ParsedJws(header, payload, f"{header_b64}.{payload_b64}".encode("ascii"), signature)


def check_header(header: dict[str, Any], key_alg: str) -> None:
    forbidden = FORBIDDEN_HEADER_MEMBERS.intersection(header)
    if forbidden:
        raise TokenFault("MALFORMED", f"header member(s) not accepted: {', '.join(sorted(forbidden))}")
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise TokenFault("MALFORMED", "header has no alg")
    if alg != key_alg:
        raise TokenFault("ALG_NOT_ALLOWED", f"alg {alg[:20]!r} is not the key's algorithm")


def verify_signature(parsed: ParsedJws, key: VerifyKey) -> None:
    check_header(parsed.header, key.alg)
    try:
        ok = _ALGS[key.alg].verify(parsed.signing_input, key.key, parsed.signature)
    except (ValueError, TypeError, pyjwt.InvalidKeyError):
        ok = False
    if not ok:
        raise TokenFault("SIG_MISMATCH", "signature does not verify")


def verify_compact(token: str, key: VerifyKey) -> bytes:
    """Verify a compact JWS against one key; return the payload bytes or raise TokenFault."""
    parsed = parse_compact(token)
    verify_signature(parsed, key)
    return parsed.payload


def _number(claims: dict[str, Any], name: str, required: bool) -> float | None:
    if name not in claims:
        if required:
            raise TokenFault("MALFORMED", f"claim {name} missing")
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenFault("MALFORMED", f"claim {name} is not a number")
    return float(value)


@dataclass(frozen=True)
class JwtPolicy:
    issuer: str
    audience: frozenset[str]
    clock_skew: int


def verify_jwt(token: str, keyring: KeyRing, policy: JwtPolicy, now: float | None = None) -> dict[str, Any]:
    """Validate an access token; return its claims or raise TokenFault with the fault code."""
    parsed = parse_compact(token)
    header = parsed.header
    typ = header.get("typ")
    if not isinstance(typ, str) or typ.lower() not in ACCEPTED_TYP:
        raise TokenFault("MALFORMED", "typ must be at+jwt")
    if header.get("alg") == "none":
        raise TokenFault("ALG_NOT_ALLOWED", "alg none")
    kid = header.get("kid")
    if not isinstance(kid, str) or not _KID.match(kid):
        raise TokenFault("UNKNOWN_KID", "kid absent or not a key id")
    loaded: LoadedKey | None = keyring.by_kid.get(kid)
    if loaded is None:
        raise TokenFault("UNKNOWN_KID", "no such kid")
    verify_signature(parsed, VerifyKey(loaded.alg, loaded.verify_key))
    claims = _json_object(parsed.payload, "claims")
    now = time.time() if now is None else now
    skew = policy.clock_skew
    if claims.get("iss") != policy.issuer:
        raise TokenFault("INVALID_ISSUER", "iss does not match")
    aud = claims.get("aud")
    auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if not any(isinstance(a, str) and a in policy.audience for a in auds):
        raise TokenFault("INVALID_AUDIENCE", "aud does not match")
    exp = _number(claims, "exp", True)
    nbf = _number(claims, "nbf", False)
    iat = _number(claims, "iat", True)
    assert exp is not None and iat is not None
    if now > exp + skew:
        raise TokenFault("JWT_EXPIRED", "expired")
    if nbf is not None and now + skew < nbf:
        raise TokenFault("NOT_YET_VALID", "nbf in the future")
    if now + skew < iat:
        raise TokenFault("NOT_YET_VALID", "iat in the future")
    for name in ("sub", "jti", "sid"):
        value = claims.get(name)
        if not isinstance(value, str) or not value or len(value) > 256:
            raise TokenFault("MALFORMED", f"claim {name} missing or not a string")
    return claims


def sign_jwt(claims: dict[str, Any], key: LoadedKey) -> str:
    """Sign an access token with ``key`` (header alg, kid and typ at+jwt)."""
    return pyjwt.encode(claims, key.signing_key, algorithm=key.alg, headers={"kid": key.kid, "typ": "at+jwt"})
