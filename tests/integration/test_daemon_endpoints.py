"""Public endpoints besides validate: JWKS, RFC 7662 introspection, RFC 7009 revocation, health,
readiness and Prometheus metrics, all over real HTTP."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Iterator

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from ostiary_craft import b64url, thumbprint_of
from prometheus_client.parser import text_string_to_metric_families

from ostiary.localstack import Daemon, LocalStack

CLIENT_ID = "gateway"


# --- JWKS -------------------------------------------------------------------------------------


def _rfc7638(jwk: dict[str, str]) -> str:
    required = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}
    members = {name: jwk[name] for name in required[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


def test_jwks_kid_is_rfc7638_thumbprint(daemon: Daemon, stack: LocalStack) -> None:
    response = daemon.get("/.well-known/jwks.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    keys = response.json()["keys"]
    assert keys, "JWKS is empty"
    by_kid = {k["kid"]: k for k in keys}
    assert stack.kid in by_kid
    for jwk in keys:
        # No private member may ever be published.
        assert not {"d", "p", "q", "dp", "dq", "qi", "k"} & set(jwk), jwk
        assert jwk["kid"] == _rfc7638(jwk)
        assert jwk["alg"] in ("ES256", "RS256", "EdDSA")
    # The kid also equals the thumbprint of the public key file on disk (computed without JWK code).
    public = serialization.load_pem_public_key((stack.keys_dir / f"{stack.kid}.pub").read_bytes())
    assert thumbprint_of(public) == stack.kid
    assert by_kid[stack.kid]["alg"] == "ES256" and by_kid[stack.kid]["crv"] == "P-256"


# --- RFC 7662 / RFC 7009 -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def oauth(stack: LocalStack) -> Iterator[tuple[Daemon, str]]:
    """A daemon with one registered client (its secret stored only as a SHA-256 digest)."""
    secret = secrets.token_urlsafe(24)
    digest = hashlib.sha256(secret.encode()).hexdigest()
    d = stack.daemon(clients={CLIENT_ID: f"sha256:{digest}"})
    yield d, secret
    d.stop()


def _basic(client_id: str, secret: str) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def _post_form(d: Daemon, path: str, data: dict[str, str], headers: dict[str, str]) -> httpx.Response:
    return d.client().post(path, data=data, headers=headers)


def test_introspect_active_and_inactive(oauth: tuple[Daemon, str], subject: str) -> None:
    d, secret = oauth
    issued = d.issue(subject)
    response = _post_form(d, "/oauth2/introspect", {"token": issued["token"]}, _basic(CLIENT_ID, secret))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["active"] is True
    assert body["sub"] == subject
    assert int(body["exp"]) == int(issued["expires_at"])
    for junk in ("not-a-token", secrets.token_urlsafe(32), issued["token"][:-4] + "AAAA"):
        response = _post_form(d, "/oauth2/introspect", {"token": junk}, _basic(CLIENT_ID, secret))
        assert response.status_code == 200, response.text
        # RFC 7662 2.2: an inactive token reveals nothing else.
        assert response.json() == {"active": False}


def test_introspect_opaque(oauth: tuple[Daemon, str], subject: str) -> None:
    d, secret = oauth
    issued = d.issue(subject, mode="opaque")
    response = _post_form(d, "/oauth2/introspect", {"token": issued["token"]}, _basic(CLIENT_ID, secret))
    assert response.status_code == 200, response.text
    assert response.json()["active"] is True
    assert response.json()["sub"] == subject


@pytest.mark.parametrize("path", ["/oauth2/introspect", "/oauth2/revoke"])
def test_oauth_endpoints_need_client_auth(oauth: tuple[Daemon, str], subject: str, path: str) -> None:
    d, secret = oauth
    token = d.issue(subject)["token"]
    for headers in (
        {},
        _basic(CLIENT_ID, secret + "x"),
        _basic("someone", secret),
        {"Authorization": "Basic !!!"},
        {"Authorization": f"Bearer {token}"},
    ):
        response = _post_form(d, path, {"token": token}, headers)
        assert response.status_code == 401, (headers, response.status_code, response.text)
        assert response.json()["error"] == "invalid_client"
    # None of the refused revocation attempts revoked anything.
    assert d.validate(token).status_code == 200


def test_introspect_missing_token_parameter(oauth: tuple[Daemon, str]) -> None:
    d, secret = oauth
    response = _post_form(d, "/oauth2/introspect", {"nottoken": "x"}, _basic(CLIENT_ID, secret))
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


def test_rfc7009_revoke(oauth: tuple[Daemon, str], subject: str) -> None:
    d, secret = oauth
    jwt_session = d.issue(subject)
    opaque_session = d.issue(subject, mode="opaque")
    assert d.validate(jwt_session["token"]).status_code == 200
    for issued in (jwt_session, opaque_session):
        response = _post_form(d, "/oauth2/revoke", {"token": issued["token"]}, _basic(CLIENT_ID, secret))
        assert response.status_code == 200, response.text
    refused = d.validate(jwt_session["token"])
    assert (refused.status_code, refused.headers.get("X-Session-Fault")) == (403, "REVOKED")
    for issued in (jwt_session, opaque_session):
        response = _post_form(d, "/oauth2/introspect", {"token": issued["token"]}, _basic(CLIENT_ID, secret))
        assert response.json() == {"active": False}


def test_rfc7009_revoke_unknown_token_is_200(oauth: tuple[Daemon, str]) -> None:
    d, secret = oauth
    # RFC 7009 2.2: an invalid token is not an error (the client cannot do anything about it).
    for junk in ("garbage", secrets.token_urlsafe(32)):
        response = _post_form(d, "/oauth2/revoke", {"token": junk}, _basic(CLIENT_ID, secret))
        assert response.status_code == 200, response.text


# --- health, readiness, metrics ------------------------------------------------------------------


def test_healthz_and_readyz(daemon: Daemon) -> None:
    assert daemon.get("/healthz").status_code == 200
    ready = daemon.get("/readyz")
    assert ready.status_code == 200, ready.text


def test_unknown_path_is_404(daemon: Daemon) -> None:
    response = daemon.get("/v1/nothing-here")
    assert response.status_code == 404
    assert daemon.client().post("/v1/validate").status_code in (404, 405)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(d: Daemon) -> tuple[Samples, dict[str, str]]:
    """All samples keyed by (name, sorted labels), and each family's type."""
    response = d.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(response.text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, types


def increased(before: Samples, after: Samples) -> list[tuple[str, dict[str, str]]]:
    return [
        (name, dict(labels))
        for (name, labels), value in after.items()
        if value > before.get((name, labels), 0.0) and not name.endswith(("_created", "_bucket", "_sum"))
    ]


def test_metrics_count_validations_by_result_and_fault(daemon: Daemon, subject: str) -> None:
    issued = daemon.issue(subject)
    before, _ = scrape(daemon)
    assert daemon.validate(issued["token"]).status_code == 200
    assert daemon.validate("a.b").status_code == 401
    daemon.admin("DELETE", f"/v1/sessions/{issued['session_id']}")
    assert daemon.validate(issued["token"]).status_code == 403
    after, _ = scrape(daemon)
    grown = increased(before, after)
    by_fault = {lab_value for _, labels in grown for lab_value in labels.values()}
    assert {"MALFORMED", "REVOKED"} <= by_fault, grown
    # The same family counts refusals and successes, told apart by a result label.
    families = {name for name, labels in grown if "REVOKED" in labels.values()}
    assert families, grown
    ok = [labels for name, labels in grown if name in families and "REVOKED" not in labels.values()
          and "MALFORMED" not in labels.values()]  # fmt: skip
    assert ok, f"no success sample grew in {families}: {grown}"
    assert all(len(labels) >= 2 for name, labels in grown if name in families), "need result and fault labels"


def test_metrics_latency_histograms(daemon: Daemon, subject: str) -> None:
    daemon.validate(daemon.issue(subject)["token"])
    samples, types = scrape(daemon)
    histograms = [name for name, kind in types.items() if kind == "histogram"]
    assert any("valid" in name for name in histograms), histograms
    assert any("store" in name for name in histograms), histograms
    for name in histograms:
        assert any(key[0] == f"{name}_bucket" for key in samples), name


def test_metrics_cache_hits(daemon: Daemon, subject: str) -> None:
    token = daemon.issue(subject)["token"]
    before, _ = scrape(daemon)
    for _ in range(3):
        assert daemon.validate(token).status_code == 200
    after, _ = scrape(daemon)
    hits = [
        (name, labels)
        for name, labels in increased(before, after)
        if "cache" in name and ("hit" in name or "hit" in labels.values())
    ]
    assert hits, increased(before, after)


def _hijack_total(samples: Samples) -> float:
    return sum(v for (name, _), v in samples.items() if "hijack" in name and name.endswith("_total"))


@pytest.mark.parametrize("mode", ["jwt", "opaque"])
def test_metrics_hijack_suspicion_user_agent(daemon: Daemon, subject: str, mode: str) -> None:
    issued = daemon.issue(subject, mode=mode, bind_cidr="10.30.0.0/16", user_agent="AgentA/1.0")
    assert daemon.validate(issued["token"], ip="10.30.0.1", user_agent="AgentA/1.0").status_code == 200
    before, _ = scrape(daemon)
    # Same network, other browser: let through (inside the CIDR) but counted as suspicious.
    changed_ua = daemon.validate(issued["token"], ip="10.30.0.1", user_agent="EvilAgent/6.6")
    assert changed_ua.status_code == 200
    after, _ = scrape(daemon)
    assert _hijack_total(after) - _hijack_total(before) == 1, increased(before, after)


@pytest.mark.parametrize("mode", ["jwt", "opaque"])
def test_metrics_hijack_suspicion_address(daemon: Daemon, subject: str, mode: str) -> None:
    """The session is seen from one address, then from another inside its CIDR: counted."""
    issued = daemon.issue(subject, mode=mode, bind_cidr="10.31.0.0/16", user_agent="AgentB/1.0")
    assert daemon.validate(issued["token"], ip="10.31.0.1", user_agent="AgentB/1.0").status_code == 200
    before, _ = scrape(daemon)
    changed_ip = daemon.validate(issued["token"], ip="10.31.99.99", user_agent="AgentB/1.0")
    assert changed_ip.status_code == 200
    after, _ = scrape(daemon)
    assert _hijack_total(after) - _hijack_total(before) == 1, increased(before, after)
