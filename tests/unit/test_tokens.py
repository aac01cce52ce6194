"""Token verification at the function level: strict JWS parsing, key-bound algorithms, claims, opaque sealing."""

import base64
import json
import time
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization

from ostiary import keys
from ostiary.faults import FAULTS, TokenFault
from ostiary.sessiond.service import new_session_id
from ostiary.tokens import opaque
from ostiary.tokens.jwt import JwtPolicy, parse_compact, sign_jwt, verify_jwt

POLICY = JwtPolicy(issuer="https://issuer.test", audience=frozenset({"api"}), clock_skew=60)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def ring(tmp_path_factory: pytest.TempPathFactory) -> keys.KeyRing:
    directory = tmp_path_factory.mktemp("keys")
    keys.generate(directory, "ES256")
    return keys.load_keyring(directory)


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": "https://issuer.test", "sub": "alice", "aud": "api", "exp": now + 300, "nbf": now, "iat": now,
            "jti": "j1", "sid": "s1"}  # fmt: skip
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def fault_of(token: str, ring: keys.KeyRing, now: float | None = None) -> str:
    with pytest.raises(TokenFault) as info:
        verify_jwt(token, ring, POLICY, now=now)
    return info.value.code


def test_a_good_token_verifies(ring: keys.KeyRing) -> None:
    assert verify_jwt(sign_jwt(claims(), ring.active), ring, POLICY)["sub"] == "alice"


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"iss": "https://other"}, "INVALID_ISSUER"),
        ({"iss": None}, "INVALID_ISSUER"),
        ({"aud": "other"}, "INVALID_AUDIENCE"),
        ({"aud": ["x", "y"]}, "INVALID_AUDIENCE"),
        ({"aud": None}, "INVALID_AUDIENCE"),
        ({"exp": None}, "MALFORMED"),
        ({"exp": "tomorrow"}, "MALFORMED"),
        ({"exp": True}, "MALFORMED"),
        ({"sid": None}, "MALFORMED"),
        ({"sub": 42}, "MALFORMED"),
    ],
)
def test_claim_checks(ring: keys.KeyRing, overrides: dict[str, Any], code: str) -> None:
    assert fault_of(sign_jwt(claims(**overrides), ring.active), ring) == code


def test_audience_list_membership(ring: keys.KeyRing) -> None:
    assert verify_jwt(sign_jwt(claims(aud=["other", "api"]), ring.active), ring, POLICY)


def test_time_claims_with_skew(ring: keys.KeyRing) -> None:
    now = time.time()
    expired = sign_jwt(claims(exp=int(now) - 61, iat=int(now) - 400, nbf=int(now) - 400), ring.active)
    assert fault_of(expired, ring, now) == "JWT_EXPIRED"
    within = sign_jwt(claims(exp=int(now) - 59, iat=int(now) - 400, nbf=int(now) - 400), ring.active)
    assert verify_jwt(within, ring, POLICY, now=now)
    future = sign_jwt(claims(nbf=int(now) + 61, iat=int(now)), ring.active)
    assert fault_of(future, ring, now) == "NOT_YET_VALID"
    future_iat = sign_jwt(claims(iat=int(now) + 61, nbf=None), ring.active)
    assert fault_of(future_iat, ring, now) == "NOT_YET_VALID"


def raw_token(header: dict[str, Any], payload: dict[str, Any], sig: bytes = b"x" * 64) -> str:
    return ".".join([b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()), b64(sig)])


def test_header_cannot_choose_key_or_algorithm(ring: keys.KeyRing) -> None:
    kid = ring.active.kid
    assert fault_of(raw_token({"alg": "none", "kid": kid, "typ": "at+jwt"}, claims()), ring) == "ALG_NOT_ALLOWED"
    assert fault_of(raw_token({"alg": "HS256", "kid": kid, "typ": "at+jwt"}, claims()), ring) == "ALG_NOT_ALLOWED"
    assert fault_of(raw_token({"alg": "ES256", "kid": "nope", "typ": "at+jwt"}, claims()), ring) == "UNKNOWN_KID"
    assert fault_of(raw_token({"alg": "ES256", "kid": "../../etc/passwd", "typ": "at+jwt"}, claims()),
                    ring) == "UNKNOWN_KID"  # fmt: skip
    assert fault_of(raw_token({"alg": "ES256", "kid": kid, "typ": "JWT"}, claims()), ring) == "MALFORMED"
    for member in ("jwk", "jku", "x5u", "x5c", "crit"):
        header = {"alg": "ES256", "kid": kid, "typ": "at+jwt", member: "x"}
        assert fault_of(raw_token(header, claims()), ring) == "MALFORMED", member


def test_hs256_signed_with_the_public_key_is_refused(ring: keys.KeyRing) -> None:
    public_pem = ring.active.verify_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header_b64 = b64(json.dumps({"alg": "HS256", "kid": ring.active.kid, "typ": "at+jwt"}).encode())
    payload_b64 = b64(json.dumps(claims()).encode())
    import hashlib
    import hmac

    sig = hmac.new(public_pem, f"{header_b64}.{payload_b64}".encode(), hashlib.sha256).digest()
    assert fault_of(f"{header_b64}.{payload_b64}.{b64(sig)}", ring) == "ALG_NOT_ALLOWED"


def test_tampering_and_truncation(ring: keys.KeyRing) -> None:
    token = sign_jwt(claims(), ring.active)
    h, p, s = token.split(".")
    other = b64(json.dumps(claims(sub="mallory")).encode())
    assert fault_of(f"{h}.{other}.{s}", ring) == "SIG_MISMATCH"
    assert fault_of(f"{h}.{p}.{s[:-4]}", ring) in ("SIG_MISMATCH", "MALFORMED")
    assert fault_of(f"{h}.{p}.", ring) == "MALFORMED"
    assert fault_of(f"{h}.{p}", ring) == "MALFORMED"
    assert fault_of(f"{h}.{p}.{s}.{s}", ring) == "MALFORMED"
    assert fault_of(f"{h}.{p}.{s}=", ring) == "MALFORMED"


def test_duplicate_json_members_are_refused(ring: keys.KeyRing) -> None:
    kid = ring.active.kid
    header = f'{{"alg":"ES256","kid":"{kid}","typ":"at+jwt","alg":"none"}}'.encode()
    with pytest.raises(TokenFault) as info:
        parse_compact(f"{b64(header)}.{b64(b'{}')}.{b64(b'x')}")
    assert info.value.code == "MALFORMED"
    # A duplicate sub in a correctly signed payload: refused, not "last one wins".
    payload = json.dumps(claims())[:-1] + ', "sub": "admin"}'
    signed = pyjwt.api_jws.encode(payload.encode(), ring.active.signing_key, algorithm="ES256",
                                  headers={"kid": kid, "typ": "at+jwt"})  # fmt: skip
    assert fault_of(signed, ring) == "MALFORMED"


def test_huge_and_non_json_inputs(ring: keys.KeyRing) -> None:
    assert fault_of("a" * 20000, ring) == "MALFORMED"
    assert fault_of(b64(b"[1,2]") + "." + b64(b"{}") + "." + b64(b"x"), ring) == "MALFORMED"
    assert fault_of(b64(b"\xff\xfe") + "." + b64(b"{}") + "." + b64(b"x"), ring) == "MALFORMED"
    nested = b"[" * 100000 + b"]" * 100000
    assert fault_of(b64(nested)[:1000] + "." + b64(b"{}") + "." + b64(b"x"), ring) == "MALFORMED"
    assert fault_of(b64(json.dumps({"alg": "ES256", "kid": "k", "typ": "at+jwt", "pad": "x" * 2000}).encode())
                    + ".e30.eA", ring) == "MALFORMED"  # fmt: skip


def test_opaque_record_is_sealed_under_the_token(tmp_path: Path) -> None:
    token = opaque.new_token()
    raw = opaque.token_bytes(token)
    assert len(raw) == 32 and len(token) == 43
    record = {"sub": "alice", "sid": "s1", "claims": {"role": "admin"}}
    blob = opaque.seal(raw, record)
    assert b"alice" not in blob and b"admin" not in blob and token.encode() not in blob
    key = opaque.record_key(raw)
    assert token not in key and key.startswith("ost:s:")
    assert opaque.unseal(raw, blob) == record
    other = opaque.token_bytes(opaque.new_token())
    with pytest.raises(TokenFault):
        opaque.unseal(other, blob)
    with pytest.raises(TokenFault):
        opaque.unseal(raw, blob[:-1] + bytes([blob[-1] ^ 1]))


@pytest.mark.parametrize("bad", ["", "short", "x" * 44, "+" * 43, "A" * 42 + "B"])
def test_opaque_tokens_must_be_canonical(bad: str) -> None:
    with pytest.raises(TokenFault):
        opaque.token_bytes(bad)


def test_fault_table_statuses() -> None:
    assert {c for c, f in FAULTS.items() if f.status == 403} == {"SIG_MISMATCH", "REVOKED"}
    assert {c for c, f in FAULTS.items() if f.status == 503} == {"REDIS_CONN_REFUSED", "SESSION_STORE_LATENCY"}
    assert all(f.remedy and f.meaning for f in FAULTS.values())


def test_session_ids_never_start_with_a_dash() -> None:
    """A leading '-' would read as an option on a command line (`ostiary sessions revoke ID`)."""
    ids = [new_session_id() for _ in range(5000)]  # one in 64 would start with '-' if drawn plainly
    assert [i for i in ids if i.startswith("-")] == []
    assert all(len(i) == 22 and len(keys.b64url_decode(i)) == 16 for i in ids)
    assert len(set(ids)) == len(ids)
    assert len({i[0] for i in ids}) == 63, "every other first character still occurs"
