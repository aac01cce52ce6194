"""Every signing algorithm end to end, and the key life cycle a running daemon sees through SIGHUP:
a retired key verifies until its verify_until, then is gone; a broken reload keeps the old keys."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from ostiary_craft import claims_like, flip_signature_byte, forge, load_key, thumbprint_of, unverified_parts

from ostiary.localstack import Daemon, LocalStack, run_cli


@pytest.fixture(scope="module", params=["ES256", "RS256", "EdDSA", "HS256"])
def alg_daemon(request: pytest.FixtureRequest, stack: LocalStack) -> Iterator[tuple[str, Daemon, Path, str]]:
    alg: str = request.param
    keys_dir, kid = stack.new_keys_dir(alg)
    d = stack.daemon(keys={"dir": str(keys_dir)}, tokens={"algorithm": alg})
    yield alg, d, keys_dir, kid
    d.stop()


def test_algorithm_end_to_end(alg_daemon: tuple[str, Daemon, Path, str], subject: str) -> None:
    alg, d, keys_dir, kid = alg_daemon
    token = d.issue(subject)["token"]
    header, _ = unverified_parts(token)
    assert (header["alg"], header["kid"]) == (alg, kid)
    assert d.validate(token).status_code == 200
    refused = d.validate(flip_signature_byte(token))
    assert (refused.status_code, refused.headers.get("X-Session-Fault")) == (403, "SIG_MISMATCH")
    # A token signed by the key file itself is accepted: the files are the daemon's real key.
    assert d.validate(forge(load_key(keys_dir, kid), claims_like(token))).status_code == 200


def test_algorithm_jwks(alg_daemon: tuple[str, Daemon, Path, str]) -> None:
    alg, d, keys_dir, kid = alg_daemon
    keys = d.get("/.well-known/jwks.json").json()["keys"]
    if alg == "HS256":
        assert keys == [], "a symmetric secret must never be published"
        return
    (jwk,) = [k for k in keys if k["kid"] == kid]
    assert jwk["alg"] == alg
    public = serialization.load_pem_public_key((keys_dir / f"{kid}.pub").read_bytes())
    assert thumbprint_of(public) == kid


def _wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_retired_key_verifies_until_verify_until(stack: LocalStack, subject: str) -> None:
    keys_dir, old_kid = stack.new_keys_dir("ES256")
    d = stack.daemon(keys={"dir": str(keys_dir)}, cache={"ttl": 0})
    try:
        old_token = d.issue(subject)["token"]
        new_kid = run_cli("keys", "generate", "--dir", str(keys_dir), "--alg", "ES256").stdout.strip()
        rotated = run_cli("keys", "rotate", "--dir", str(keys_dir), "--max-token-lifetime", "3")
        assert rotated.returncode == 0, rotated.stderr
        d.sighup()
        assert _wait_for(lambda: unverified_parts(d.issue(subject)["token"])[0]["kid"] == new_kid)
        assert d.validate(old_token).status_code == 200  # retired, still verifying
        verify_until = json.loads((keys_dir / f"{old_kid}.json").read_text())["verify_until"]
        time.sleep(max(0.0, verify_until - time.time()) + 1.1)
        d.sighup()

        def kids() -> set[str]:
            return {k["kid"] for k in d.get("/.well-known/jwks.json").json()["keys"]}

        assert _wait_for(lambda: old_kid not in kids()), kids()
        refused = d.validate(old_token)
        assert (refused.status_code, refused.headers.get("X-Session-Fault")) == (401, "UNKNOWN_KID")
    finally:
        d.stop()


def test_broken_reload_keeps_serving_with_old_keys(stack: LocalStack, subject: str) -> None:
    keys_dir, kid = stack.new_keys_dir("ES256")
    d = stack.daemon(keys={"dir": str(keys_dir)}, cache={"ttl": 0})
    try:
        token = d.issue(subject)["token"]
        new_kid = run_cli("keys", "generate", "--dir", str(keys_dir), "--alg", "ES256").stdout.strip()
        (keys_dir / f"{new_kid}.key").chmod(0o644)  # an unsafe file appears
        assert run_cli("keys", "rotate", "--dir", str(keys_dir)).returncode == 0
        d.sighup()
        time.sleep(1.0)
        assert d.running, "a refused reload must not take the daemon down"
        assert d.validate(token).status_code == 200
        issued = d.issue(subject)["token"]
        # Still signing with the old, safe key: the unsafe one was not loaded.
        assert unverified_parts(issued)[0]["kid"] == kid
    finally:
        d.stop()
