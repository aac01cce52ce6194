"""Hypothesis-generated headers, paths and bodies on every endpoint: never a 5xx from a live daemon
whose stores are healthy (a 503 here would be a refusal for the wrong reason)."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from ostiary_craft import KeyFiles, active_key, forge, unverified_parts

from ostiary.localstack import DEFAULT_ISSUER, Daemon, LocalStack

# Bytes an HTTP/1.1 client may put in a header value (visible ASCII, obs-text, inner spaces).
_HEADER_BYTES = st.binary(min_size=0, max_size=300).map(
    lambda raw: bytes(b for b in raw if b == 0x20 or 0x21 <= b <= 0x7E or b >= 0x80).strip()
)
_TOKENISH = st.one_of(
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=", max_size=400),
    st.builds(
        lambda a, b, c: f"{a}.{b}.{c}",
        *[st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", max_size=120)] * 3,
    ),
    _HEADER_BYTES.map(lambda b: b.decode("latin-1")),
)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=50),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
_SEGMENT = st.text(max_size=80).map(lambda s: quote(s, safe=""))

FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,  # no example database written into the work tree
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
FUZZ_SMALL = settings(FUZZ, max_examples=100)


def _no_5xx(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300])
    assert "Traceback" not in response.text


def _send(client: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response | None:
    try:
        return client.request(method, path, **kwargs)
    except httpx.LocalProtocolError:
        return None  # the client library refused to send it: not a request the daemon ever sees


@FUZZ
@given(
    scheme=st.sampled_from(["Bearer ", "bearer ", "Bearer  ", "Basic ", "", "Bearer\t", "DPoP "]),
    token=_TOKENISH,
    ip=st.one_of(st.none(), st.ip_addresses().map(str), _HEADER_BYTES.map(lambda b: b.decode("latin-1"))),
    agent=st.one_of(st.none(), _HEADER_BYTES),
)
def test_validate_never_5xx(daemon: Daemon, scheme: str, token: str, ip: str | None, agent: bytes | None) -> None:
    headers: dict[str, Any] = {"Authorization": (scheme + token).encode("latin-1")}
    if ip is not None:
        headers["X-Real-IP"] = ip.encode("latin-1")
    if agent is not None:
        headers["User-Agent"] = agent
    response = _send(daemon.client(), "GET", "/v1/validate", headers=headers)
    if response is not None:
        _no_5xx(response)
        assert response.status_code != 200


@FUZZ_SMALL
@given(
    path=st.sampled_from(["/oauth2/introspect", "/oauth2/revoke"]),
    body=st.one_of(
        st.binary(max_size=500),
        st.dictionaries(st.text(max_size=20), st.text(max_size=200)).map(
            lambda d: "&".join(f"{quote(k)}={quote(v)}" for k, v in d.items()).encode()
        ),
    ),
    content_type=st.sampled_from(
        ["application/x-www-form-urlencoded", "application/json", "text/plain", "multipart/form-data", ""]
    ),
    auth=st.one_of(st.none(), _HEADER_BYTES.map(lambda b: b"Basic " + b)),
)
def test_oauth_endpoints_never_5xx(
    daemon: Daemon, path: str, body: bytes, content_type: str, auth: bytes | None
) -> None:
    headers: dict[str, Any] = {"Content-Type": content_type}
    if auth is not None:
        headers["Authorization"] = auth
    response = _send(daemon.client(), "POST", path, content=body, headers=headers)
    if response is not None:
        _no_5xx(response)


@FUZZ_SMALL
@given(
    path=st.sampled_from(["/healthz", "/readyz", "/metrics", "/.well-known/jwks.json", "/v1/validate", "/"]),
    method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]),
    query=st.text(max_size=100).map(lambda s: quote(s, safe="=&")),
    extra=st.dictionaries(
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=20), _HEADER_BYTES, max_size=5
    ),
)
def test_public_paths_never_5xx(daemon: Daemon, path: str, method: str, query: str, extra: dict[str, bytes]) -> None:
    response = _send(daemon.client(), method, f"{path}?{query}", headers=extra)
    if response is not None:
        _no_5xx(response)


@FUZZ
@given(body=_JSON)
def test_admin_issue_json_never_5xx(daemon: Daemon, body: Any) -> None:
    response = daemon.admin("POST", "/v1/sessions", json=body)
    _no_5xx(response)
    if response.status_code >= 400:
        assert isinstance(response.json()["error"], str)


@FUZZ_SMALL
@given(
    sub=st.one_of(st.text(max_size=300), st.integers()),
    claims=_JSON,
    extra=st.dictionaries(
        st.sampled_from(["mode", "ttl", "bind_cidr", "user_agent", "extra"]),
        st.one_of(st.text(max_size=50), st.integers(), st.none(), st.sampled_from(["opaque", "jwt", "10.0.0.0/8"])),
    ),
)
def test_admin_issue_fields_never_5xx(daemon: Daemon, sub: Any, claims: Any, extra: dict[str, Any]) -> None:
    response = daemon.admin("POST", "/v1/sessions", json={"sub": sub, "claims": claims, **extra})
    _no_5xx(response)
    if response.status_code >= 400:
        assert isinstance(response.json()["error"], str)
    else:
        assert response.status_code == 201
        assert set(response.json()) >= {"token", "session_id", "expires_at"}


@FUZZ_SMALL
@given(raw=st.binary(max_size=2000), content_type=st.sampled_from(["application/json", "text/plain", ""]))
def test_admin_issue_raw_body_never_5xx(daemon: Daemon, raw: bytes, content_type: str) -> None:
    response = daemon.admin_client().post("/v1/sessions", content=raw, headers={"Content-Type": content_type})
    _no_5xx(response)


@FUZZ_SMALL
@given(
    route=st.sampled_from(
        [
            ("DELETE", "/v1/sessions/{}"),
            ("POST", "/v1/subjects/{}/revoke"),
            ("GET", "/v1/subjects/{}/sessions"),
            ("GET", "/v1/sessions/{}"),
            ("POST", "/v1/sessions/{}"),
        ]
    ),
    segment=_SEGMENT,
    body=st.one_of(st.none(), _JSON.map(json.dumps)),
)
def test_admin_paths_never_5xx(daemon: Daemon, route: tuple[str, str], segment: str, body: str | None) -> None:
    method, template = route
    response = _send(daemon.admin_client(), method, template.format(segment), content=body)
    if response is not None:
        _no_5xx(response)


# --- claims signed with the real key: the daemon's verdict matches the RFC 9068 rules ----------

SKEW = 60  # the default daemon's tokens.clock_skew
_NUMBER_OFFSET = st.one_of(
    st.integers(-100_000, -SKEW - 5),
    st.integers(-SKEW + 5, SKEW - 5),
    st.integers(SKEW + 5, 100_000),
)
_CLAIM_JUNK = st.one_of(st.none(), st.booleans(), st.text(max_size=20), st.lists(st.integers(), max_size=2))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _should_accept(claims: dict[str, Any], now: float) -> bool:
    """RFC 9068 / RFC 8725 rules of the contract, written independently of the daemon."""
    aud = claims.get("aud")
    auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    nbf = claims.get("nbf")
    return (
        claims.get("iss") == DEFAULT_ISSUER
        and "api" in auds
        and _is_number(claims.get("exp"))
        and now <= claims["exp"] + SKEW
        and ("nbf" not in claims or (_is_number(nbf) and nbf <= now + SKEW))
        and _is_number(claims.get("iat"))
        and claims["iat"] <= now + SKEW
    )


@pytest.fixture(scope="module")
def real_session(daemon: Daemon, stack: LocalStack) -> tuple[dict[str, Any], KeyFiles]:
    """A real session's claims (sub, sid, jti) and the key that signed them."""
    issued = daemon.issue("fuzz-claims-subject")
    return unverified_parts(issued["token"])[1], active_key(stack.keys_dir)


@FUZZ
@example(iss=DEFAULT_ISSUER, aud="api", exp=600, nbf=0, iat=0, as_float=False, extra={})  # accepted
@example(iss=DEFAULT_ISSUER, aud="api", exp=600, nbf=None, iat=0, as_float=False, extra={})  # null nbf
@example(iss=DEFAULT_ISSUER, aud="api", exp=600, nbf="absent", iat=None, as_float=True, extra={})
@example(iss=DEFAULT_ISSUER, aud=["api", 1], exp=600, nbf=True, iat=0, as_float=False, extra={})
@given(
    iss=st.one_of(st.just(DEFAULT_ISSUER), st.just(DEFAULT_ISSUER + "/"), _CLAIM_JUNK),
    aud=st.one_of(st.just("api"), st.just(["api"]), st.just(["other", "api"]), st.just(["other"]), _CLAIM_JUNK),
    exp=st.one_of(_NUMBER_OFFSET, _CLAIM_JUNK, st.just("absent")),
    nbf=st.one_of(_NUMBER_OFFSET, _CLAIM_JUNK, st.just("absent")),
    iat=st.one_of(_NUMBER_OFFSET, _CLAIM_JUNK, st.just("absent")),
    as_float=st.booleans(),
    extra=st.dictionaries(st.sampled_from(["scope", "x", "cnf", "act"]), _CLAIM_JUNK, max_size=2),
)
def test_signed_claims_verdict_matches_the_rules(
    daemon: Daemon,
    real_session: tuple[dict[str, Any], KeyFiles],
    iss: Any,
    aud: Any,
    exp: Any,
    nbf: Any,
    iat: Any,
    as_float: bool,
    extra: dict[str, Any],
) -> None:
    base, key = real_session
    now = time.time()
    claims: dict[str, Any] = {**extra, "sub": base["sub"], "sid": base["sid"], "jti": base["jti"]}
    for name, value in (("iss", iss), ("aud", aud)):
        if value is not None:
            claims[name] = value
    for name, value in (("exp", exp), ("nbf", nbf), ("iat", iat)):
        if value == "absent":
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            value = int(now) + value + (0.5 if as_float else 0)
        claims[name] = value
    response = daemon.validate(forge(key, claims))
    _no_5xx(response)
    fault = response.headers.get("X-Session-Fault")
    if _should_accept(claims, time.time()):
        assert response.status_code == 200, (fault, claims)
        assert response.headers["X-Session-Subject"] == base["sub"]
    else:
        assert response.status_code == 401, (response.status_code, claims)
        assert fault in ("MALFORMED", "JWT_EXPIRED", "NOT_YET_VALID", "INVALID_ISSUER", "INVALID_AUDIENCE"), fault
