"""JWT attack cases (RFC 8725) against real daemons: every forged token is refused, never a 500."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from ostiary_craft import (
    KeyFiles,
    active_key,
    b64url,
    claims_like,
    compact,
    forge,
    jdump,
    sign_raw,
    thumbprint_of,
)

from ostiary.localstack import Daemon, LocalStack

REFUSAL_FAULTS = {"MALFORMED", "UNKNOWN_KID", "ALG_NOT_ALLOWED", "SIG_MISMATCH"}


def assert_forgery_refused(response: httpx.Response, *faults: str) -> None:
    fault = response.headers.get("X-Session-Fault")
    assert response.status_code in (401, 403), f"{response.status_code} {fault}: {response.text[:200]}"
    allowed = set(faults) if faults else REFUSAL_FAULTS
    assert fault in allowed, f"fault {fault!r} not in {sorted(allowed)}"


@pytest.fixture(scope="module")
def rs256(stack: LocalStack) -> Iterator[tuple[Daemon, Path]]:
    """A daemon signing with RS256 from its own key dir (sharing the stores)."""
    keys_dir, _ = stack.new_keys_dir("RS256")
    d = stack.daemon(keys={"dir": str(keys_dir)}, tokens={"algorithm": "RS256"})
    yield d, keys_dir
    d.stop()


@pytest.fixture
def es_token(daemon: Daemon, subject: str) -> str:
    token: str = daemon.issue(subject)["token"]
    return token


@pytest.fixture
def es_key(stack: LocalStack) -> KeyFiles:
    return active_key(stack.keys_dir)


def test_alg_none(daemon: Daemon, es_token: str, es_key: KeyFiles) -> None:
    claims = jdump(claims_like(es_token))
    for alg in ("none", "None", "NONE", "nOnE"):
        header = jdump({"alg": alg, "kid": es_key.kid, "typ": "at+jwt"})
        for token in (compact(header, claims), compact(header, claims) + "e30"):
            response = daemon.validate(token)
            assert_forgery_refused(response, "ALG_NOT_ALLOWED", "MALFORMED", "SIG_MISMATCH")


@pytest.mark.parametrize("fmt", ["pem", "der-ish"])
def test_hs256_with_es256_public_key(daemon: Daemon, es_token: str, es_key: KeyFiles, fmt: str) -> None:
    assert es_key.public_pem is not None
    secret = es_key.public_pem if fmt == "pem" else es_key.public_pem.strip()
    header = {"alg": "HS256", "kid": es_key.kid, "typ": "at+jwt"}
    token = compact(jdump(header), jdump(claims_like(es_token)), lambda d: sign_raw("HS256", secret, d))
    assert_forgery_refused(daemon.validate(token), "ALG_NOT_ALLOWED")


def test_hs256_with_rs256_public_key(rs256: tuple[Daemon, Path], subject: str) -> None:
    d, keys_dir = rs256
    key = active_key(keys_dir)
    assert key.alg == "RS256" and key.public_pem is not None
    token = d.issue(subject)["token"]
    assert d.validate(token).status_code == 200
    pem = key.public_pem
    header = {"alg": "HS256", "kid": key.kid, "typ": "at+jwt"}
    forged = compact(jdump(header), jdump(claims_like(token)), lambda data: sign_raw("HS256", pem, data))
    assert_forgery_refused(d.validate(forged), "ALG_NOT_ALLOWED")


def test_es256_token_to_rs256_daemon_unknown_kid(rs256: tuple[Daemon, Path], es_token: str) -> None:
    """A token signed by another deployment's key: its kid is not loaded here."""
    d, _ = rs256
    assert_forgery_refused(d.validate(es_token), "UNKNOWN_KID")


@pytest.mark.parametrize(
    "kid",
    [
        "../../../../../../etc/passwd",
        "../keys/{kid}",
        "./{kid}",
        "{kid}/../{kid}",
        "{kid}.key",
        "{kid}\x00",
        "' OR '1'='1",
        "x'; DROP TABLE keys; --",
        "*",
        "ost:*",
        "",
    ],
)
def test_kid_path_and_sql_characters(daemon: Daemon, es_token: str, es_key: KeyFiles, kid: str) -> None:
    header = {"alg": "ES256", "kid": kid.format(kid=es_key.kid), "typ": "at+jwt"}
    token = forge(es_key, claims_like(es_token), header)
    assert_forgery_refused(daemon.validate(token), "UNKNOWN_KID", "MALFORMED")


def test_kid_not_a_string(daemon: Daemon, es_token: str, es_key: KeyFiles) -> None:
    for kid in (None, 1, [es_key.kid], {"kid": es_key.kid}):
        header = {"alg": "ES256", "kid": kid, "typ": "at+jwt"}
        assert_forgery_refused(daemon.validate(forge(es_key, claims_like(es_token), header)))


def _attacker_jwk() -> tuple[ec.EllipticCurvePrivateKey, dict[str, str]]:
    attacker = ec.generate_private_key(ec.SECP256R1())
    numbers = attacker.public_key().public_numbers()
    jwk = {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url(numbers.x.to_bytes(32, "big")),
        "y": b64url(numbers.y.to_bytes(32, "big")),
    }
    return attacker, jwk


@pytest.mark.parametrize("member", ["jwk", "jku", "x5u", "x5c"])
@pytest.mark.parametrize("kid_choice", ["real", "attacker", "absent"])
def test_embedded_key_material(daemon: Daemon, es_token: str, es_key: KeyFiles, member: str, kid_choice: str) -> None:
    attacker, jwk = _attacker_jwk()
    header: dict[str, object] = {"alg": "ES256", "typ": "at+jwt"}
    if kid_choice == "real":
        header["kid"] = es_key.kid
    elif kid_choice == "attacker":
        header["kid"] = thumbprint_of(attacker.public_key())
    if member == "jwk":
        header["jwk"] = jwk
    elif member == "x5c":
        header["x5c"] = ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"]
    else:
        # Loopback port 9 (discard): even if the daemon tried to fetch it, nothing leaves the host.
        header[member] = "http://127.0.0.1:9/jwks.json"
    token = compact(jdump(header), jdump(claims_like(es_token)), lambda d: sign_raw("ES256", attacker, d))
    assert_forgery_refused(daemon.validate(token))


def test_stripped_and_truncated_signatures(daemon: Daemon, es_token: str) -> None:
    head, payload, sig = es_token.split(".")
    candidates = [
        f"{head}.{payload}.",
        f"{head}.{payload}",
        f"{head}.{payload}.{sig[: len(sig) // 2]}",
        f"{head}.{payload}.{sig[:-2]}",
        f"{head}.{payload}.{sig}{sig}",
        f"{head}.{payload}.AAAA",
        f"{head}.{payload}.{b64url(bytes(64))}",
    ]
    for token in candidates:
        assert_forgery_refused(daemon.validate(token), "MALFORMED", "SIG_MISMATCH")


@pytest.mark.parametrize("typ", ["JWT", "jwt", "", "at+jwt2", "JOSE", None, 1])
def test_wrong_typ(daemon: Daemon, es_token: str, es_key: KeyFiles, typ: object) -> None:
    header: dict[str, object] = {"alg": "ES256", "kid": es_key.kid}
    if typ is not None:
        header["typ"] = typ
    token = forge(es_key, claims_like(es_token), header)
    assert_forgery_refused(daemon.validate(token), "MALFORMED")


def _raw_members(obj: dict[str, object]) -> str:
    return ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in obj.items())


def test_duplicate_header_members(daemon: Daemon, es_token: str, es_key: KeyFiles) -> None:
    claims = jdump(claims_like(es_token))
    base = {"alg": "ES256", "kid": es_key.kid, "typ": "at+jwt"}
    variants = [
        "{" + _raw_members(base) + ',"alg":"none"}',
        "{" + _raw_members(base) + ',"alg":"ES256"}',
        '{"kid":"unknown",' + _raw_members(base) + "}",
        "{" + _raw_members(base) + ',"typ":"at+jwt"}',
    ]
    for raw in variants:
        token = compact(raw.encode(), claims, lambda d: sign_raw("ES256", es_key.private, d))
        assert_forgery_refused(daemon.validate(token), "MALFORMED", "ALG_NOT_ALLOWED", "UNKNOWN_KID")


def test_duplicate_claims(daemon: Daemon, es_token: str, es_key: KeyFiles) -> None:
    claims = claims_like(es_token)
    header = jdump({"alg": "ES256", "kid": es_key.kid, "typ": "at+jwt"})
    variants = [
        "{" + _raw_members(claims) + ',"sub":"admin"}',
        "{" + _raw_members(claims) + ',"sid":"someone-elses-session"}',
        "{" + _raw_members(claims) + f',"exp":{int(claims["exp"]) + 86400}' + "}",
        '{"aud":"other",' + _raw_members(claims) + "}",
    ]
    for raw in variants:
        token = compact(header, raw.encode(), lambda d: sign_raw("ES256", es_key.private, d))
        response = daemon.validate(token)
        assert response.status_code == 401, f"{response.status_code} {response.headers.get('X-Session-Fault')}"
        assert response.headers.get("X-Session-Fault") == "MALFORMED"


def test_huge_jwt_header_is_401(daemon: Daemon, es_token: str, es_key: KeyFiles) -> None:
    header = {"alg": "ES256", "kid": es_key.kid, "typ": "at+jwt", "pad": "A" * 6000}
    token = forge(es_key, claims_like(es_token), header)
    response = daemon.validate(token)
    assert response.status_code == 401, response.text
    assert response.headers.get("X-Session-Fault") == "MALFORMED"


def test_huge_token_is_401(daemon: Daemon, es_token: str, es_key: KeyFiles) -> None:
    claims = claims_like(es_token, blob="B" * 12000)
    response = daemon.validate(forge(es_key, claims))
    assert response.status_code == 401
    assert response.headers.get("X-Session-Fault") == "MALFORMED"


@pytest.mark.parametrize("size", [16_000, 70_000, 300_000])
def test_huge_http_headers_never_5xx(daemon: Daemon, size: int) -> None:
    """Oversized Authorization / other headers: a 4xx (or a closed connection), never 5xx or 200."""
    headers = {"Authorization": "Bearer " + "A" * size, "X-Filler": "f" * min(size, 8000)}
    try:
        with httpx.Client(base_url=daemon.base_url, timeout=10) as client:
            response = client.get("/v1/validate", headers=headers)
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
        return  # the server hung up on an oversized request: refused, not served
    assert 400 <= response.status_code < 500, response.status_code


def test_deeply_nested_json_is_refused(daemon: Daemon, es_token: str, es_key: KeyFiles) -> None:
    header = jdump({"alg": "ES256", "kid": es_key.kid, "typ": "at+jwt"})
    nested = ("[" * 2000 + "]" * 2000).encode()
    payload = b'{"x":' + nested + b"}"
    token = compact(header, payload, lambda d: sign_raw("ES256", es_key.private, d))
    response = daemon.validate(token)
    assert response.status_code in (401, 403), response.status_code


def test_non_json_payload(daemon: Daemon, es_key: KeyFiles) -> None:
    header = jdump({"alg": "ES256", "kid": es_key.kid, "typ": "at+jwt"})
    for payload in (b"[]", b"null", b'"string"', b"\xff\xfe", b"{", b'{"exp": NaN}'):
        token = compact(header, payload, lambda d: sign_raw("ES256", es_key.private, d))
        assert_forgery_refused(daemon.validate(token), "MALFORMED")
