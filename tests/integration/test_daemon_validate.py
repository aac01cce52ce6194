"""GET /v1/validate through real HTTP: the 200 headers and every 401/403 fault code of the contract."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from ostiary_craft import (
    active_key,
    b64url,
    claims_like,
    compact,
    flip_signature_byte,
    forge,
    jdump,
    shifted_claims,
    sign_raw,
    thumbprint_of,
    unverified_parts,
)

from ostiary.localstack import Daemon, LocalStack


def assert_refused(response: httpx.Response, status: int, fault: str) -> None:
    got = (response.status_code, response.headers.get("X-Session-Fault"))
    assert got == (status, fault), f"expected {status} {fault}, got {got}: {response.text[:300]}"
    if status == 401:
        challenge = response.headers.get("WWW-Authenticate", "")
        assert challenge.startswith("Bearer"), challenge
        assert 'error="invalid_token"' in challenge, challenge
    # A refusal never carries the session headers nginx would forward upstream.
    assert "X-Session-Subject" not in response.headers


def test_jwt_valid_has_session_headers(daemon: Daemon, subject: str) -> None:
    issued = daemon.issue(subject)
    response = daemon.validate(issued["token"])
    assert response.status_code == 200, response.text
    assert response.headers["X-Session-Subject"] == subject
    assert response.headers["X-Session-Id"] == issued["session_id"]
    expires = int(response.headers["X-Session-Expires"])
    assert expires == int(issued["expires_at"])
    assert time.time() < expires <= time.time() + 900 + 5
    assert "X-Session-Fault" not in response.headers


def test_opaque_valid_has_session_headers(opaque_daemon: Daemon, subject: str) -> None:
    issued = opaque_daemon.issue(subject)
    token = issued["token"]
    # 256 bits of CSPRNG output, base64url: 43 characters, no JWT structure.
    assert "." not in token and len(token) >= 43
    response = opaque_daemon.validate(token)
    assert response.status_code == 200, response.text
    assert response.headers["X-Session-Subject"] == subject
    assert response.headers["X-Session-Id"] == issued["session_id"]
    assert int(response.headers["X-Session-Expires"]) == int(issued["expires_at"])


def test_missing_token(daemon: Daemon) -> None:
    assert_refused(daemon.validate(None), 401, "MISSING_TOKEN")


@pytest.mark.parametrize(
    "token",
    ["not-a-token!", "a.b", "a.b.c.d", "....", "eyJhbGciOiJFUzI1NiJ9.eyJ.", "%%%.%%%.%%%"],
)
def test_malformed(daemon: Daemon, token: str) -> None:
    assert_refused(daemon.validate(token), 401, "MALFORMED")


def test_expired(daemon: Daemon, stack: LocalStack, subject: str) -> None:
    token = daemon.issue(subject)["token"]
    forged = forge(active_key(stack.keys_dir), shifted_claims(token, offset=-120))
    assert_refused(daemon.validate(forged), 401, "JWT_EXPIRED")


def test_not_yet_valid(daemon: Daemon, stack: LocalStack, subject: str) -> None:
    token = daemon.issue(subject)["token"]
    forged = forge(active_key(stack.keys_dir), shifted_claims(token, offset=120))
    assert_refused(daemon.validate(forged), 401, "NOT_YET_VALID")


def test_resigned_copy_is_accepted(daemon: Daemon, stack: LocalStack, subject: str) -> None:
    """Control for the forged-claims tests: re-signing unchanged claims with the key file works,
    so the refusals above are caused by the claim changed, not by how the tests sign."""
    token = daemon.issue(subject)["token"]
    forged = forge(active_key(stack.keys_dir), claims_like(token))
    response = daemon.validate(forged)
    assert response.status_code == 200, response.text


def test_invalid_issuer(daemon: Daemon, stack: LocalStack, subject: str) -> None:
    token = daemon.issue(subject)["token"]
    forged = forge(active_key(stack.keys_dir), claims_like(token, iss="https://sessions.evil.example"))
    assert_refused(daemon.validate(forged), 401, "INVALID_ISSUER")


def test_invalid_audience(daemon: Daemon, stack: LocalStack, subject: str) -> None:
    token = daemon.issue(subject)["token"]
    forged = forge(active_key(stack.keys_dir), claims_like(token, aud=["billing"]))
    assert_refused(daemon.validate(forged), 401, "INVALID_AUDIENCE")


def test_unknown_kid(daemon: Daemon, subject: str) -> None:
    token = daemon.issue(subject)["token"]
    stranger = ec.generate_private_key(ec.SECP256R1())
    kid = thumbprint_of(stranger.public_key())
    header = {"alg": "ES256", "kid": kid, "typ": "at+jwt"}
    forged = compact(jdump(header), jdump(claims_like(token)), lambda d: sign_raw("ES256", stranger, d))
    assert_refused(daemon.validate(forged), 401, "UNKNOWN_KID")


def test_alg_not_allowed_hs256_with_public_key(daemon: Daemon, stack: LocalStack, subject: str) -> None:
    key = active_key(stack.keys_dir)
    assert key.public_pem is not None
    token = daemon.issue(subject)["token"]
    header = {"alg": "HS256", "kid": key.kid, "typ": "at+jwt"}
    secret = key.public_pem
    forged = compact(jdump(header), jdump(claims_like(token)), lambda d: sign_raw("HS256", secret, d))
    assert_refused(daemon.validate(forged), 401, "ALG_NOT_ALLOWED")


def test_sig_mismatch_flipped_bit(daemon: Daemon, subject: str) -> None:
    token = daemon.issue(subject)["token"]
    assert_refused(daemon.validate(flip_signature_byte(token)), 403, "SIG_MISMATCH")


def test_sig_mismatch_changed_payload(daemon: Daemon, subject: str) -> None:
    token = daemon.issue(subject)["token"]
    head, _, sig = token.split(".")
    payload = b64url(jdump(claims_like(token, sub="someone-else")))
    assert_refused(daemon.validate(f"{head}.{payload}.{sig}"), 403, "SIG_MISMATCH")


def test_revoked_jwt(daemon: Daemon, subject: str) -> None:
    issued = daemon.issue(subject)
    assert daemon.validate(issued["token"]).status_code == 200
    response = daemon.admin("DELETE", f"/v1/sessions/{issued['session_id']}")
    assert response.status_code == 204, response.text
    assert_refused(daemon.validate(issued["token"]), 403, "REVOKED")


def test_revoked_opaque(opaque_daemon: Daemon, subject: str) -> None:
    issued = opaque_daemon.issue(subject)
    assert opaque_daemon.validate(issued["token"]).status_code == 200
    response = opaque_daemon.admin("DELETE", f"/v1/sessions/{issued['session_id']}")
    assert response.status_code == 204, response.text
    assert_refused(opaque_daemon.validate(issued["token"]), 403, "REVOKED")


def test_session_unknown_opaque(opaque_daemon: Daemon) -> None:
    never_issued = secrets.token_urlsafe(32)
    assert_refused(opaque_daemon.validate(never_issued), 401, "SESSION_UNKNOWN")


def test_session_unknown_tampered_opaque(opaque_daemon: Daemon, subject: str) -> None:
    token = opaque_daemon.issue(subject)["token"]
    tampered = ("A" if token[0] != "A" else "B") + token[1:]
    assert_refused(opaque_daemon.validate(tampered), 401, "SESSION_UNKNOWN")


def test_binding_cidr(daemon: Daemon, subject: str) -> None:
    issued = daemon.issue(subject, bind_cidr="10.20.0.0/16")
    inside = daemon.validate(issued["token"], ip="10.20.5.6")
    assert inside.status_code == 200, inside.text
    # Right after a cached 200 from inside the network: the cache must not vouch for another address.
    assert_refused(daemon.validate(issued["token"], ip="10.21.0.1"), 401, "BINDING_MISMATCH")
    assert daemon.validate(issued["token"], ip="10.20.200.1").status_code == 200


def test_binding_cidr_opaque(opaque_daemon: Daemon, subject: str) -> None:
    issued = opaque_daemon.issue(subject, bind_cidr="192.0.2.0/24")
    assert opaque_daemon.validate(issued["token"], ip="192.0.2.77").status_code == 200
    assert_refused(opaque_daemon.validate(issued["token"], ip="198.51.100.1"), 401, "BINDING_MISMATCH")


def test_revoke_subject_refuses_all_its_sessions(daemon: Daemon, opaque_daemon: Daemon, subject: str) -> None:
    jwt_session = daemon.issue(subject)
    opaque_session = opaque_daemon.issue(subject)
    other = daemon.issue(subject + "-other")
    for d, s in ((daemon, jwt_session), (opaque_daemon, opaque_session)):
        assert d.validate(s["token"]).status_code == 200
    response = daemon.admin("POST", f"/v1/subjects/{subject}/revoke")
    assert response.status_code == 204, response.text
    assert_refused(daemon.validate(jwt_session["token"]), 403, "REVOKED")
    assert_refused(opaque_daemon.validate(opaque_session["token"]), 403, "REVOKED")
    assert daemon.validate(other["token"]).status_code == 200


@pytest.fixture(scope="module")
def idle_daemon(stack: LocalStack) -> Iterator[Daemon]:
    """Opaque sessions with a 2 s idle timeout and no cache, so idleness shows at once."""
    d = stack.daemon(tokens={"mode": "opaque", "idle_timeout": 2}, cache={"ttl": 0})
    yield d
    d.stop()


def test_session_idle_timeout(idle_daemon: Daemon, subject: str) -> None:
    token = idle_daemon.issue(subject)["token"]
    # Activity keeps the session alive past the idle timeout (sliding) ...
    for _ in range(3):
        assert idle_daemon.validate(token).status_code == 200
        time.sleep(1.0)
    assert idle_daemon.validate(token).status_code == 200
    # ... and inactivity beyond it ends the session.
    time.sleep(3.0)
    assert_refused(idle_daemon.validate(token), 401, "SESSION_IDLE_TIMEOUT")


def test_issued_claims_follow_rfc9068(daemon: Daemon, stack: LocalStack, subject: str) -> None:
    issued = daemon.issue(subject, claims={"scope": "read"})
    header, claims = unverified_parts(issued["token"])
    assert header["typ"].lower() in ("at+jwt", "application/at+jwt")
    assert header["alg"] == "ES256"
    assert header["kid"] == active_key(stack.keys_dir).kid
    for name in ("iss", "sub", "aud", "exp", "nbf", "iat", "jti", "sid"):
        assert name in claims, name
    assert claims["sub"] == subject
    assert claims["sid"] == issued["session_id"]
    assert claims["exp"] == int(issued["expires_at"])
    assert claims["scope"] == "read"


@pytest.fixture(scope="module")
def short_lived_daemon(stack: LocalStack) -> Iterator[Daemon]:
    """Opaque sessions that may live 3 s at most, however active (idle limit 2 s)."""
    d = stack.daemon(tokens={"mode": "opaque", "idle_timeout": 2, "absolute_timeout": 3, "ttl": 3}, cache={"ttl": 0})
    yield d
    d.stop()


def test_session_absolute_timeout(short_lived_daemon: Daemon, subject: str) -> None:
    issued = short_lived_daemon.issue(subject)
    assert int(issued["expires_at"]) <= time.time() + 3 + 1
    started = time.monotonic()
    # The absolute end is the issue time's whole second plus 3 s, so the session lives more than 2 s
    # and at most 3 s: use it for just under 2 s, every 0.5 s, which keeps it well within its idle limit.
    while time.monotonic() - started < 1.9:
        assert short_lived_daemon.validate(issued["token"]).status_code == 200
        time.sleep(0.5)
    time.sleep(max(0.0, 3.6 - (time.monotonic() - started)))
    response = short_lived_daemon.validate(issued["token"])
    assert response.status_code == 401, "activity kept the session alive past absolute_timeout"
    assert response.headers.get("X-Session-Fault") in ("SESSION_UNKNOWN", "SESSION_IDLE_TIMEOUT", "JWT_EXPIRED")
