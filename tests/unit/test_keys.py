"""Key directories: kid is the RFC 7638 thumbprint, rotation states, permissions, mismatches."""

import base64
import hashlib
import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ostiary import keys
from ostiary.keys import KeyFileError


def test_rfc7638_thumbprint_of_the_rfc_example() -> None:
    # The RSA key of RFC 7638 section 3.1 and the thumbprint the RFC gives for it.
    jwk = {
        "kty": "RSA",
        "e": "AQAB",
        "n": (
            "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjB"
            "ZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8"
            "KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_"
            "xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
        ),
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert keys.thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.mark.parametrize("alg", ["ES256", "RS256", "EdDSA", "HS256"])
def test_generate_writes_0600_private_key_and_kid_is_its_thumbprint(tmp_path: Path, alg: str) -> None:
    meta = keys.generate(tmp_path, alg)
    assert meta.state == "active"
    assert (tmp_path / f"{meta.kid}.key").stat().st_mode & 0o777 == 0o600
    ring = keys.load_keyring(tmp_path)
    assert ring.active.kid == meta.kid and ring.active.alg == alg
    if alg == "HS256":
        assert ring.jwks() == {"keys": []}, "a symmetric secret is never published"
        secret = base64.urlsafe_b64decode((tmp_path / f"{meta.kid}.key").read_text().strip() + "=")
        expected = json.dumps({"k": keys.b64url(secret), "kty": "oct"}, separators=(",", ":"))
        assert meta.kid == keys.b64url(hashlib.sha256(expected.encode()).digest())
    else:
        (jwk,) = ring.jwks()["keys"]
        assert jwk["kid"] == meta.kid == keys.thumbprint(jwk)
        assert jwk["alg"] == alg and "d" not in jwk


def test_rsa_sizes(tmp_path: Path) -> None:
    keys.generate(tmp_path / "a", "RS256", bits=3072)
    with pytest.raises(KeyFileError, match="bits"):
        keys.generate(tmp_path / "b", "RS256", bits=1024)


def test_rotation_next_active_retired(tmp_path: Path) -> None:
    first = keys.generate(tmp_path, "ES256")
    second = keys.generate(tmp_path, "ES256")
    assert second.state == "next"
    ring = keys.load_keyring(tmp_path)
    assert ring.active.kid == first.kid and set(ring.by_kid) == {first.kid, second.kid}
    active, retired = keys.rotate(tmp_path, max_token_lifetime=100)
    assert active.kid == second.kid and retired is not None and retired.kid == first.kid
    ring = keys.load_keyring(tmp_path)
    assert ring.active.kid == second.kid and first.kid in ring.by_kid
    # Past verify_until, the retired key neither verifies nor is published.
    later = time.time() + 101
    assert first.kid not in keys.load_keyring(tmp_path, now=later).by_kid
    assert [k["kid"] for k in keys.public_jwks(tmp_path, now=later)["keys"]] == [second.kid]


def test_rotate_without_next_key_is_an_error(tmp_path: Path) -> None:
    keys.generate(tmp_path, "ES256")
    with pytest.raises(KeyFileError, match="no 'next' key"):
        keys.rotate(tmp_path)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_private_key_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    meta = keys.generate(tmp_path, "ES256")
    (tmp_path / f"{meta.kid}.key").chmod(mode)
    with pytest.raises(KeyFileError, match="chmod 0600"):
        keys.load_keyring(tmp_path)


def test_public_key_that_does_not_match_the_private_key_is_refused(tmp_path: Path) -> None:
    meta = keys.generate(tmp_path, "ES256")
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    (tmp_path / f"{meta.kid}.pub").write_bytes(
        other.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(KeyFileError, match="SIG_MISMATCH"):
        keys.load_keyring(tmp_path)


def test_encrypted_private_keys_need_the_passphrase(tmp_path: Path) -> None:
    meta = keys.generate(tmp_path, "ES256", passphrase=b"correct horse")
    assert b"ENCRYPTED" in (tmp_path / f"{meta.kid}.key").read_bytes()
    with pytest.raises(KeyFileError, match="passphrase"):
        keys.load_keyring(tmp_path)
    assert keys.load_keyring(tmp_path, b"correct horse").active.kid == meta.kid


def test_exactly_one_active_key(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        keys.load_keyring(tmp_path / "absent")
    tmp_path.joinpath("x").mkdir()
    with pytest.raises(KeyFileError, match="exactly one active"):
        keys.load_keyring(tmp_path / "x")
