"""POST /v1/sessions/oidc: an ID token from the configured issuer becomes a session; anything
else (other issuer, audience, key, algorithm, expired) is refused with a 4xx JSON error."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from ostiary_craft import compact, jdump, sign_raw

from ostiary.localstack import Daemon, LocalStack

IDP_ISSUER = "https://idp.test.internal"
IDP_AUDIENCE = "ostiary-test"


class Idp:
    """A test identity provider: an RSA and an EC signing key and their JWKS."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        rsa_jwk = json.loads(RSAAlgorithm.to_jwk(self.rsa.public_key()))
        ec_jwk = json.loads(ECAlgorithm.to_jwk(self.ec.public_key()))
        self.jwks = {
            "keys": [
                {**rsa_jwk, "kid": "idp-rsa", "alg": "RS256", "use": "sig"},
                {**ec_jwk, "kid": "idp-ec", "alg": "ES256", "use": "sig"},
            ]
        }

    def claims(self, subject: str, **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {"iss": IDP_ISSUER, "aud": IDP_AUDIENCE, "sub": subject, "iat": now, "exp": now + 300}
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, claims: dict[str, Any], *, kid: str = "idp-rsa", header: dict[str, Any] | None = None) -> str:
        alg, key = ("RS256", self.rsa) if kid == "idp-rsa" else ("ES256", self.ec)
        hdr = header if header is not None else {"alg": alg, "kid": kid, "typ": "JWT"}
        return compact(jdump(hdr), jdump(claims), lambda data: sign_raw(alg, key, data))


@pytest.fixture(scope="module")
def idp() -> Idp:
    return Idp()


@pytest.fixture(scope="module")
def oidc_daemon(stack: LocalStack, idp: Idp) -> Iterator[Daemon]:
    jwks_file = stack.workdir / "idp-jwks.json"
    jwks_file.write_text(json.dumps(idp.jwks))
    d = stack.daemon(
        oidc={"enabled": True, "issuer": IDP_ISSUER, "audience": IDP_AUDIENCE, "jwks_file": str(jwks_file)}
    )
    yield d
    d.stop()


def _exchange(d: Daemon, id_token: Any, **extra: Any) -> Any:
    return d.admin("POST", "/v1/sessions/oidc", json={"id_token": id_token, **extra})


@pytest.mark.parametrize("kid", ["idp-rsa", "idp-ec"])
def test_exchange_issues_a_session(oidc_daemon: Daemon, idp: Idp, subject: str, kid: str) -> None:
    response = _exchange(oidc_daemon, idp.token(idp.claims(subject), kid=kid))
    assert response.status_code == 201, response.text
    issued = response.json()
    validated = oidc_daemon.validate(issued["token"])
    assert validated.status_code == 200
    assert validated.headers["X-Session-Subject"] == subject


def test_exchange_opaque(oidc_daemon: Daemon, idp: Idp, subject: str) -> None:
    response = _exchange(oidc_daemon, idp.token(idp.claims(subject)), mode="opaque")
    assert response.status_code == 201, response.text
    assert "." not in response.json()["token"]


@pytest.fixture(scope="module")
def forgeries(idp: Idp) -> dict[str, str]:
    sub = "oidc-forgery-target"
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    good = idp.claims(sub)
    body = jdump(good)
    pem = idp.rsa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return {
        "other-issuer": idp.token(idp.claims(sub, iss="https://evil.example")),
        "other-audience": idp.token(idp.claims(sub, aud="someone-else")),
        "expired": idp.token(idp.claims(sub, exp=int(time.time()) - 3600, iat=int(time.time()) - 7200)),
        "no-sub": idp.token(idp.claims(sub, sub=None)),
        "unknown-kid": idp.token(good, header={"alg": "RS256", "kid": "idp-unknown", "typ": "JWT"}),
        "stranger-key": compact(
            jdump({"alg": "RS256", "kid": "idp-rsa"}), body, lambda d: sign_raw("RS256", stranger, d)
        ),
        "alg-none": compact(jdump({"alg": "none", "kid": "idp-rsa"}), body),
        "hs256-public-key": compact(
            jdump({"alg": "HS256", "kid": "idp-rsa"}), body, lambda d: sign_raw("HS256", pem, d)
        ),
        "alg-swap": compact(jdump({"alg": "ES256", "kid": "idp-rsa"}), body, lambda d: sign_raw("ES256", idp.ec, d)),
        "embedded-jwk": compact(
            jdump({"alg": "RS256", "kid": "idp-rsa", "jwk": json.loads(RSAAlgorithm.to_jwk(stranger.public_key()))}),
            body,
            lambda d: sign_raw("RS256", stranger, d),
        ),
        "truncated": idp.token(good)[:-10],
        "garbage": "not-a-jwt",
    }


@pytest.mark.parametrize(
    "case",
    ["other-issuer", "other-audience", "expired", "no-sub", "unknown-kid", "stranger-key", "alg-none",
     "hs256-public-key", "alg-swap", "embedded-jwk", "truncated", "garbage"],
)  # fmt: skip
def test_exchange_refuses_forged_id_tokens(oidc_daemon: Daemon, forgeries: dict[str, str], case: str) -> None:
    response = _exchange(oidc_daemon, forgeries[case])
    assert 400 <= response.status_code < 500, (case, response.status_code, response.text)
    assert isinstance(response.json()["error"], str)


@pytest.mark.parametrize("body", [{}, {"id_token": 5}, {"id_token": None}, {"id_token": ["a"]}])
def test_exchange_bad_body(oidc_daemon: Daemon, body: dict[str, Any]) -> None:
    response = oidc_daemon.admin("POST", "/v1/sessions/oidc", json=body)
    assert 400 <= response.status_code < 500
    assert isinstance(response.json()["error"], str)


def test_exchange_disabled_is_4xx(daemon: Daemon, idp: Idp, subject: str) -> None:
    response = _exchange(daemon, idp.token(idp.claims(subject)))
    assert 400 <= response.status_code < 500
    assert isinstance(response.json()["error"], str)


class _JwksServer:
    """A loopback HTTP server publishing the IdP's JWKS and counting fetches."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        payload = json.dumps(jwks).encode()
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _JwksServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_exchange_with_fetched_and_cached_jwks(stack: LocalStack, idp: Idp, subject: str, tmp_path: Path) -> None:
    with _JwksServer(idp.jwks) as jwks:
        d = stack.daemon(oidc={"enabled": True, "issuer": IDP_ISSUER, "audience": IDP_AUDIENCE, "jwks_url": jwks.url})
        try:
            for kid in ("idp-rsa", "idp-ec", "idp-rsa"):
                response = _exchange(d, idp.token(idp.claims(subject), kid=kid))
                assert response.status_code == 201, response.text
            assert jwks.fetches == 1, f"JWKS fetched {jwks.fetches} times; expected once (cached)"
        finally:
            d.stop()
