"""Identity-provider exchange: POST /v1/sessions/oidc with ID tokens from a real issuer key.

The identity provider's JWKS is served two ways: as a local file, and over HTTP by a server this
test starts on 127.0.0.1 (fetched and cached by the daemon).
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ostiary.keys import public_jwk, thumbprint
from ostiary.localstack import Daemon, LocalStack

ISSUER = "https://idp.test"
CLIENT_ID = "ostiary-test"


class Idp:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        jwk = public_jwk("ES256", self.key.public_key())
        self.kid = thumbprint(jwk)
        self.jwks = {"keys": [{**jwk, "kid": self.kid, "alg": "ES256", "use": "sig"}]}
        self.fetches = 0

    def id_token(self, **overrides: Any) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": "idp-user-1", "aud": CLIENT_ID, "iat": now, "exp": now + 300}
        claims.update(overrides)
        return pyjwt.encode({k: v for k, v in claims.items() if v is not None}, self.key, algorithm="ES256",
                            headers={"kid": self.kid})  # fmt: skip


@pytest.fixture(scope="module")
def idp() -> Idp:
    return Idp()


@pytest.fixture(scope="module")
def jwks_server(idp: Idp) -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            idp.fetches += 1
            body = json.dumps(idp.jwks).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def oidc_daemons(stack: LocalStack, idp: Idp, jwks_server: str, tmp_path_factory: pytest.TempPathFactory
                 ) -> dict[str, Daemon]:  # fmt: skip
    jwks_file = tmp_path_factory.mktemp("idp") / "jwks.json"
    jwks_file.write_text(json.dumps(idp.jwks))
    common = {"enabled": True, "issuer": ISSUER, "audience": CLIENT_ID, "algorithms": ["ES256"]}
    return {
        "file": stack.daemon(oidc={**common, "jwks_file": str(jwks_file)}),
        "url": stack.daemon(oidc={**common, "jwks_url": jwks_server, "jwks_cache_ttl": 300}),
    }


@pytest.mark.parametrize("source", ["file", "url"])
def test_a_valid_id_token_becomes_a_session(oidc_daemons: dict[str, Daemon], idp: Idp, source: str) -> None:
    daemon = oidc_daemons[source]
    answer = daemon.admin("POST", "/v1/sessions/oidc", json={"id_token": idp.id_token(sub=f"alice-{source}")})
    assert answer.status_code == 201, answer.text
    token = answer.json()["token"]
    check = daemon.validate(token)
    assert check.status_code == 200
    assert check.headers["X-Session-Subject"] == f"alice-{source}"


def test_the_jwks_is_fetched_once_and_cached(oidc_daemons: dict[str, Daemon], idp: Idp) -> None:
    daemon = oidc_daemons["url"]
    before = idp.fetches
    for i in range(5):
        answer = daemon.admin("POST", "/v1/sessions/oidc", json={"id_token": idp.id_token(sub=f"c{i}")})
        assert answer.status_code == 201
    assert idp.fetches - before <= 1


@pytest.mark.parametrize(
    "overrides",
    [
        {"iss": "https://evil.test"},
        {"aud": "another-client"},
        {"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200},
        {"sub": None},
    ],
)
def test_refused_id_tokens_issue_nothing(oidc_daemons: dict[str, Daemon], idp: Idp, overrides: dict[str, Any]) -> None:
    answer = oidc_daemons["file"].admin("POST", "/v1/sessions/oidc", json={"id_token": idp.id_token(**overrides)})
    assert answer.status_code == 401, answer.text
    assert answer.json()["error"] == "invalid_id_token"


def test_id_token_from_another_key_or_garbage(oidc_daemons: dict[str, Daemon], idp: Idp) -> None:
    daemon = oidc_daemons["file"]
    stranger = ec.generate_private_key(ec.SECP256R1())
    now = int(time.time())
    forged = pyjwt.encode({"iss": ISSUER, "sub": "x", "aud": CLIENT_ID, "iat": now, "exp": now + 60}, stranger,
                          algorithm="ES256", headers={"kid": idp.kid})  # fmt: skip
    assert daemon.admin("POST", "/v1/sessions/oidc", json={"id_token": forged}).status_code == 401
    for body in ({"id_token": "not-a-jwt-at-all"}, {"id_token": 42}, {}, {"id_token": "a.b.c"}):
        answer = daemon.admin("POST", "/v1/sessions/oidc", json=body)
        assert 400 <= answer.status_code < 500, (body, answer.status_code)
        assert "error" in answer.json()
    embedded = pyjwt.encode({"iss": ISSUER, "sub": "x", "aud": CLIENT_ID, "iat": now, "exp": now + 60}, stranger,
                            algorithm="ES256", headers={"kid": idp.kid, "jwk": idp.jwks["keys"][0]})  # fmt: skip
    assert daemon.admin("POST", "/v1/sessions/oidc", json={"id_token": embedded}).status_code == 400


def test_exchange_is_off_unless_configured(daemon: Daemon, idp: Idp) -> None:
    answer = daemon.admin("POST", "/v1/sessions/oidc", json={"id_token": idp.id_token()})
    assert answer.status_code == 404 and answer.json()["error"] == "oidc_disabled"


def test_config_refuses_symmetric_idp_algorithms(tmp_path: Path) -> None:
    from ostiary.config import ConfigError, load_settings

    path = tmp_path / "c.toml"
    path.write_text('[oidc]\nenabled = true\nissuer = "i"\naudience = "a"\njwks_file = "/x"\nalgorithms = ["HS256"]\n')
    with pytest.raises(ConfigError):
        load_settings(path)
