"""The admin API on its unix socket: issue, revoke, revoke-subject, list, and 4xx JSON on bad input."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from ostiary_craft import unverified_parts

from ostiary.localstack import Daemon

B64URL_43 = re.compile(r"^[A-Za-z0-9_-]{43,}$")


def test_admin_socket_is_a_private_unix_socket(daemon: Daemon) -> None:
    mode = daemon.admin_socket.stat().st_mode
    assert mode & 0o007 == 0, oct(mode)


def test_issue_jwt(daemon: Daemon, subject: str) -> None:
    before = time.time()
    response = daemon.admin("POST", "/v1/sessions", json={"sub": subject, "claims": {"role": "reader"}})
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) >= {"token", "session_id", "expires_at"}
    assert before + 900 - 2 <= int(body["expires_at"]) <= time.time() + 900 + 2
    _, claims = unverified_parts(body["token"])
    assert claims["sub"] == subject and claims["role"] == "reader"


def test_issue_with_ttl(daemon: Daemon, subject: str) -> None:
    response = daemon.admin("POST", "/v1/sessions", json={"sub": subject, "claims": {}, "ttl": 60})
    assert response.status_code == 201, response.text
    assert abs(int(response.json()["expires_at"]) - (time.time() + 60)) <= 2


def test_issue_opaque_on_jwt_daemon(daemon: Daemon, opaque_daemon: Daemon, subject: str) -> None:
    response = daemon.admin("POST", "/v1/sessions", json={"sub": subject, "claims": {}, "mode": "opaque"})
    assert response.status_code == 201, response.text
    token = response.json()["token"]
    assert B64URL_43.match(token), token
    # Opaque records live in the shared session store: any daemon can validate them.
    validated = opaque_daemon.validate(token)
    assert validated.status_code == 200, validated.text
    assert validated.headers["X-Session-Subject"] == subject


def test_opaque_tokens_are_unique(opaque_daemon: Daemon, subject: str) -> None:
    tokens = {opaque_daemon.issue(subject)["token"] for _ in range(20)}
    assert len(tokens) == 20


def test_list_sessions(daemon: Daemon, subject: str) -> None:
    first = daemon.issue(subject, user_agent="ListAgent/1")
    second = daemon.issue(subject, user_agent="ListAgent/2")
    daemon.validate(first["token"], ip="192.0.2.10", user_agent="ListAgent/1")
    response = daemon.admin("GET", f"/v1/subjects/{subject}/sessions")
    assert response.status_code == 200, response.text
    listed = response.json()
    assert isinstance(listed, list)
    assert {s["session_id"] for s in listed} == {first["session_id"], second["session_id"]}
    for entry in listed:
        assert set(entry) >= {"session_id", "created_at", "last_seen", "expires_at", "ip", "user_agent"}
    agents = {s["user_agent"] for s in listed}
    assert agents == {"ListAgent/1", "ListAgent/2"}


def test_list_unknown_subject_is_empty(daemon: Daemon, subject: str) -> None:
    response = daemon.admin("GET", f"/v1/subjects/{subject}/sessions")
    assert response.status_code == 200
    assert response.json() == []


def test_delete_session(daemon: Daemon, subject: str) -> None:
    issued = daemon.issue(subject)
    assert daemon.admin("DELETE", f"/v1/sessions/{issued['session_id']}").status_code == 204
    refused = daemon.validate(issued["token"])
    assert (refused.status_code, refused.headers.get("X-Session-Fault")) == (403, "REVOKED")


def test_revoke_subject(daemon: Daemon, subject: str) -> None:
    tokens = [daemon.issue(subject)["token"] for _ in range(3)]
    assert daemon.admin("POST", f"/v1/subjects/{subject}/revoke").status_code == 204
    for token in tokens:
        refused = daemon.validate(token)
        assert (refused.status_code, refused.headers.get("X-Session-Fault")) == (403, "REVOKED")


BAD_BODIES: list[Any] = [
    {},
    {"claims": {}},
    {"sub": ""},
    {"sub": 5},
    {"sub": None},
    {"sub": ["a"]},
    {"sub": "a", "claims": [1]},
    {"sub": "a", "claims": "x"},
    {"sub": "a", "ttl": -1},
    {"sub": "a", "ttl": 0},
    {"sub": "a", "ttl": 10**30},
    {"sub": "a", "mode": "kerberos"},
    {"sub": "a", "bind_cidr": "not-a-cidr"},
    {"sub": "a", "bind_cidr": "10.0.0.0/99"},
    {"sub": "a", "user_agent": 7},
    [],
    "sub",
    None,
]


@pytest.mark.parametrize("body", BAD_BODIES, ids=[repr(b)[:40] for b in BAD_BODIES])
def test_issue_bad_input_is_4xx_json(daemon: Daemon, body: Any) -> None:
    response = daemon.admin("POST", "/v1/sessions", json=body)
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    payload = response.json()
    assert isinstance(payload["error"], str) and payload["error"]
    assert isinstance(payload["detail"], str)
    assert "Traceback" not in response.text


@pytest.mark.parametrize(
    "raw",
    [b"{", b"not json", b'{"sub": "a"', b"\xff\xfe\x00", b'{"sub": NaN}', b"[" * 5000 + b"]" * 5000],
)
def test_issue_unparsable_body_is_4xx_json(daemon: Daemon, raw: bytes) -> None:
    response = daemon.admin_client().post("/v1/sessions", content=raw, headers={"Content-Type": "application/json"})
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert isinstance(response.json()["error"], str)


def test_issue_huge_body_is_4xx(daemon: Daemon) -> None:
    body = {"sub": "a", "claims": {"blob": "x" * 2_000_000}}
    response = daemon.admin("POST", "/v1/sessions", json=body)
    assert 400 <= response.status_code < 500, response.status_code
    assert isinstance(response.json()["error"], str)


@pytest.mark.parametrize(
    ("method", "path"),
    [("PUT", "/v1/sessions"), ("GET", "/v1/sessions"), ("GET", "/v1/nothing"), ("DELETE", "/v1/sessions/")],
)
def test_admin_unknown_routes_are_4xx_json(daemon: Daemon, method: str, path: str) -> None:
    response = daemon.admin(method, path)
    assert 400 <= response.status_code < 500, (method, path, response.status_code)
    assert isinstance(response.json()["error"], str)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/v1/sessions/%00"),
        ("DELETE", "/v1/sessions/" + "x" * 5000),
        ("DELETE", "/v1/sessions/..%2F..%2Fetc"),
        ("POST", "/v1/subjects//revoke"),
        ("POST", "/v1/subjects/%2A/revoke"),
        ("GET", "/v1/subjects/" + "y" * 5000 + "/sessions"),
    ],
)
def test_admin_odd_ids_never_5xx(daemon: Daemon, method: str, path: str) -> None:
    """Odd ids may be refused (4xx JSON) or treated as unknown (204/200), never a 500."""
    response = daemon.admin(method, path)
    assert response.status_code < 500, (method, path[:40], response.status_code)
    if response.status_code >= 400:
        assert isinstance(response.json()["error"], str)


def test_admin_api_is_not_on_the_public_listener(daemon: Daemon, subject: str) -> None:
    response = daemon.client().post("/v1/sessions", json={"sub": subject, "claims": {}})
    assert response.status_code in (404, 405), response.status_code
    assert daemon.client().delete("/v1/sessions/x").status_code in (404, 405)
