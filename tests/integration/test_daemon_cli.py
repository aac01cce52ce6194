"""The ``ostiary`` command line as a user runs it: ``keys generate|rotate|jwks`` on a key dir,
``sessions ...`` against a running daemon's admin socket; key-file permissions, SIGHUP key
reload on a live keep-alive connection and SIGTERM draining."""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import stat
import threading
import time
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from ostiary_craft import thumbprint_of, unverified_parts

from ostiary.localstack import Daemon, DaemonStartError, LocalStack, run_cli


def _meta(keys_dir: Path, kid: str) -> dict[str, object]:
    meta: dict[str, object] = json.loads((keys_dir / f"{kid}.json").read_text())
    return meta


def _generate(keys_dir: Path, alg: str, *extra: str) -> str:
    result = run_cli("keys", "generate", "--dir", str(keys_dir), "--alg", alg, *extra)
    assert result.returncode == 0, result.stderr
    kid = result.stdout.strip().splitlines()[-1].strip()
    assert kid
    return kid


# --- keys -------------------------------------------------------------------------------------


def test_keys_generate_files_and_modes(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    kid = _generate(keys_dir, "ES256")
    key_file = keys_dir / f"{kid}.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    public = serialization.load_pem_public_key((keys_dir / f"{kid}.pub").read_bytes())
    assert thumbprint_of(public) == kid
    meta = _meta(keys_dir, kid)
    assert meta["kid"] == kid and meta["alg"] == "ES256" and meta["state"] == "active"
    # A second key waits as "next" while one is active.
    second = _generate(keys_dir, "ES256")
    assert second != kid
    assert _meta(keys_dir, second)["state"] == "next"
    assert stat.S_IMODE((keys_dir / f"{second}.key").stat().st_mode) == 0o600


@pytest.mark.parametrize(("alg", "bits"), [("RS256", "3072"), ("EdDSA", None), ("HS256", None)])
def test_keys_generate_other_algorithms(tmp_path: Path, alg: str, bits: str | None) -> None:
    keys_dir = tmp_path / "keys"
    kid = _generate(keys_dir, alg, *(["--bits", bits] if bits else []))
    assert _meta(keys_dir, kid)["alg"] == alg
    assert stat.S_IMODE((keys_dir / f"{kid}.key").stat().st_mode) == 0o600
    if alg == "HS256":
        assert not (keys_dir / f"{kid}.pub").exists()
        return
    public = serialization.load_pem_public_key((keys_dir / f"{kid}.pub").read_bytes())
    assert thumbprint_of(public) == kid
    if alg == "RS256":
        assert isinstance(public, rsa.RSAPublicKey) and public.key_size == 3072


def test_keys_generate_refuses_bad_input(tmp_path: Path) -> None:
    for args in (["--alg", "none"], ["--alg", "HS512"], ["--alg", "RS256", "--bits", "1024"]):
        result = run_cli("keys", "generate", "--dir", str(tmp_path / "k"), *args)
        assert result.returncode != 0, args
        assert "Traceback" not in result.stderr


def test_keys_rotate_and_jwks(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    first = _generate(keys_dir, "ES256")
    hs = tmp_path / "hs"
    _generate(hs, "HS256")
    second = _generate(keys_dir, "ES256")
    result = run_cli("keys", "rotate", "--dir", str(keys_dir))
    assert result.returncode == 0, result.stderr
    assert _meta(keys_dir, second)["state"] == "active"
    retired = _meta(keys_dir, first)
    assert retired["state"] == "retired"
    assert isinstance(retired["verify_until"], int) and retired["verify_until"] > time.time()
    jwks = run_cli("keys", "jwks", "--dir", str(keys_dir))
    assert jwks.returncode == 0, jwks.stderr
    keys = json.loads(jwks.stdout)["keys"]
    assert {k["kid"] for k in keys} == {first, second}
    assert all("d" not in k for k in keys)
    # A symmetric key is never published.
    hs_jwks = run_cli("keys", "jwks", "--dir", str(hs))
    assert hs_jwks.returncode == 0
    assert json.loads(hs_jwks.stdout)["keys"] == []


def test_keys_rotate_without_next_key_fails(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    _generate(keys_dir, "ES256")
    result = run_cli("keys", "rotate", "--dir", str(keys_dir))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_daemon_refuses_group_or_world_readable_private_key(stack: LocalStack, mode: int) -> None:
    keys_dir = stack.workdir / f"keys-open-{mode:o}"
    shutil.copytree(stack.keys_dir, keys_dir)
    (keys_dir / f"{stack.kid}.key").chmod(mode)
    daemon = stack.prepare_daemon(keys={"dir": str(keys_dir)})
    with pytest.raises(DaemonStartError) as refused:
        daemon.start(timeout=10)
    assert refused.value.returncode not in (None, 0)
    assert f"{stack.kid}.key" in refused.value.log


# --- sessions CLI against the admin socket ---------------------------------------------------


def _sessions(daemon: Daemon, *args: str) -> tuple[int, str]:
    result = run_cli("sessions", "--admin", f"unix:{daemon.admin_socket}", *args)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stdout


def test_sessions_cli_issue_list_revoke(daemon: Daemon, subject: str) -> None:
    code, out = _sessions(daemon, "issue", subject, "--ttl", "120", "--claims", '{"scope": "cli"}')
    assert code == 0, out
    issued = json.loads(out)
    assert abs(int(issued["expires_at"]) - (time.time() + 120)) <= 3
    assert unverified_parts(issued["token"])[1]["scope"] == "cli"
    assert daemon.validate(issued["token"]).status_code == 200

    code, out = _sessions(daemon, "issue", subject, "--mode", "opaque", "--bind-cidr", "10.9.0.0/16")
    assert code == 0, out
    opaque = json.loads(out)

    code, out = _sessions(daemon, "list", subject)
    assert code == 0
    assert {s["session_id"] for s in json.loads(out)} == {issued["session_id"], opaque["session_id"]}

    code, _ = _sessions(daemon, "revoke", issued["session_id"])
    assert code == 0
    refused = daemon.validate(issued["token"])
    assert (refused.status_code, refused.headers.get("X-Session-Fault")) == (403, "REVOKED")


def test_sessions_cli_revoke_subject(daemon: Daemon, opaque_daemon: Daemon, subject: str) -> None:
    tokens = [json.loads(_sessions(daemon, "issue", subject)[1])["token"] for _ in range(2)]
    code, _ = _sessions(daemon, "revoke-subject", subject)
    assert code == 0
    for token in tokens:
        assert daemon.validate(token).headers.get("X-Session-Fault") == "REVOKED"


def test_sessions_cli_errors(daemon: Daemon, tmp_path: Path) -> None:
    code, _ = _sessions(daemon, "issue", "x", "--bind-cidr", "not-a-cidr")
    assert code != 0
    result = run_cli("sessions", "--admin", f"unix:{tmp_path / 'nobody.sock'}", "list", "x")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr


# --- SIGHUP and SIGTERM -----------------------------------------------------------------------


def test_sighup_picks_up_rotated_key_on_open_connection(stack: LocalStack, subject: str) -> None:
    keys_dir, old_kid = stack.new_keys_dir("ES256")
    daemon = stack.daemon(keys={"dir": str(keys_dir)})
    old_token = daemon.issue(subject)["token"]
    host, port = daemon.base_url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:

        def validate(token: str) -> int:
            conn.request("GET", "/v1/validate", headers={"Authorization": f"Bearer {token}"})
            response = conn.getresponse()
            response.read()
            return response.status

        assert validate(old_token) == 200
        sock = conn.sock
        assert sock is not None
        local_address = sock.getsockname()

        new_kid = _generate(keys_dir, "ES256")
        assert run_cli("keys", "rotate", "--dir", str(keys_dir)).returncode == 0
        daemon.sighup()
        deadline = time.monotonic() + 5
        while True:
            new_token = daemon.issue(subject)["token"]
            if unverified_parts(new_token)[0]["kid"] == new_kid:
                break
            assert time.monotonic() < deadline, "SIGHUP did not load the rotated key"
            time.sleep(0.05)
        assert new_kid != old_kid
        assert validate(new_token) == 200
        assert validate(old_token) == 200  # the retired key still verifies
        # Same TCP connection throughout: the reload dropped nothing.
        assert conn.sock is sock and sock.getsockname() == local_address
        jwks_kids = {k["kid"] for k in daemon.get("/.well-known/jwks.json").json()["keys"]}
        assert {old_kid, new_kid} <= jwks_kids
    finally:
        conn.close()
        daemon.stop()
    assert daemon.returncode == 0


def test_sigterm_drains_in_flight_request(subject: str) -> None:
    """A request waiting on a slow store when SIGTERM arrives still gets its answer; the daemon
    then exits 0 and stops accepting connections."""
    with LocalStack() as stack:
        daemon = stack.daemon(store={"timeout": 3.0}, cache={"ttl": 0}, server={"drain_timeout": 5.0})
        token = daemon.issue(subject)["token"]
        _, revocations = stack.stores()
        result: dict[str, object] = {}

        def in_flight() -> None:
            try:
                with httpx.Client(base_url=daemon.base_url, timeout=10) as client:
                    started = time.monotonic()
                    response = client.get("/v1/validate", headers={"Authorization": f"Bearer {token}"})
                    result["status"] = response.status_code
                    result["fault"] = response.headers.get("X-Session-Fault")
                    result["elapsed"] = time.monotonic() - started
            except httpx.HTTPError as exc:
                result["error"] = repr(exc)

        revocations.pause()
        try:
            worker = threading.Thread(target=in_flight)
            worker.start()
            time.sleep(1.0)  # the request is now waiting on the paused store (for up to 3 s)
            daemon.signal(signal.SIGTERM)
            worker.join(timeout=10)
        finally:
            revocations.resume()
        assert "error" not in result, result
        assert result["status"] == 503 and result["fault"] == "SESSION_STORE_LATENCY", result
        # Answered after the SIGTERM: the request really was in flight while the daemon drained.
        assert isinstance(result["elapsed"], float) and result["elapsed"] > 1.0, result
        assert daemon.wait(timeout=10) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(daemon.base_url + "/healthz", timeout=2)


# --- environment overrides ----------------------------------------------------------------------


def test_env_var_overrides_config_file(stack: LocalStack, subject: str) -> None:
    daemon = stack.daemon(env={"OSTIARY_TOKENS__ISSUER": "https://env.test.internal", "OSTIARY_TOKENS__TTL": "120"})
    try:
        issued = daemon.issue(subject)
        claims = unverified_parts(issued["token"])[1]
        assert claims["iss"] == "https://env.test.internal"
        assert abs(int(issued["expires_at"]) - (time.time() + 120)) <= 3
        assert daemon.validate(issued["token"]).status_code == 200
    finally:
        daemon.stop()


def test_env_var_cannot_lift_the_skew_limit(stack: LocalStack) -> None:
    daemon = stack.prepare_daemon(env={"OSTIARY_TOKENS__CLOCK_SKEW": "301"})
    with pytest.raises(DaemonStartError) as refused:
        daemon.start(timeout=10)
    assert refused.value.returncode not in (None, 0)
