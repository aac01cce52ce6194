"""What an attacker with a Redis dump or the logs learns: no usable token, no session contents, no
session id in clear; and no key in either store lives forever."""

from __future__ import annotations

import json
from typing import Any

import redis

from ostiary.localstack import Daemon, LocalStack


def _dump(client: redis.Redis) -> dict[bytes, bytes]:
    """Every key and a byte rendering of its value (admin user: SCAN is not the daemon's right)."""
    out: dict[bytes, bytes] = {}
    for key in client.scan_iter(match=b"*", count=1000):
        kind = client.type(key)
        if kind == b"string":
            value = client.get(key) or b""
        elif kind == b"set":
            value = b"\n".join(sorted(client.smembers(key)))
        elif kind == b"hash":
            value = b"\n".join(k + b"=" + v for k, v in client.hgetall(key).items())
        else:
            value = kind
        out[key] = value
    return out


def _assert_absent(stack: LocalStack, needles: list[bytes]) -> None:
    for store in stack.stores():
        client = store.admin_client()
        try:
            dump = _dump(client)
        finally:
            client.close()
        assert dump, f"{store.name} store is empty: nothing was checked"
        for key, value in dump.items():
            for needle in needles:
                assert needle not in key, (store.name, needle, key[:60])
                assert needle not in value, (store.name, needle, key[:60], value[:200])


def _activity(
    daemon: Daemon, opaque_daemon: Daemon, subject: str, agent: str, ip: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    opaque = opaque_daemon.issue(subject, user_agent=agent, claims={"role": "auditor-" + subject})
    jwt_session = daemon.issue(subject, user_agent=agent)
    assert opaque_daemon.validate(opaque["token"], ip=ip, user_agent=agent).status_code == 200
    assert daemon.validate(jwt_session["token"], ip=ip, user_agent=agent).status_code == 200
    daemon.admin("DELETE", f"/v1/sessions/{jwt_session['session_id']}")
    return opaque, jwt_session


def test_store_dump_reveals_no_token_or_claims(
    daemon: Daemon, opaque_daemon: Daemon, stack: LocalStack, subject: str
) -> None:
    opaque, jwt_session = _activity(daemon, opaque_daemon, subject, f"Agent/{subject}", "203.0.113.77")
    _assert_absent(
        stack,
        [
            opaque["token"].encode(),
            jwt_session["token"].encode(),
            jwt_session["token"].split(".")[2].encode(),  # the signature alone
            ("auditor-" + subject).encode(),  # a claim of the opaque session
        ],
    )


def test_store_dump_reveals_no_client_details(
    daemon: Daemon, opaque_daemon: Daemon, stack: LocalStack, subject: str
) -> None:
    """User agent and client address are session contents too (personal data): not in clear."""
    agent = f"SecretAgent/{subject}"
    _activity(daemon, opaque_daemon, subject, agent, "203.0.113.78")
    _assert_absent(stack, [agent.encode(), b"203.0.113.78"])


def test_every_key_has_a_ttl(daemon: Daemon, opaque_daemon: Daemon, stack: LocalStack, subject: str) -> None:
    daemon.issue(subject)
    opaque_daemon.issue(subject, user_agent="TtlAgent")
    session = daemon.issue(subject)
    daemon.admin("DELETE", f"/v1/sessions/{session['session_id']}")
    daemon.admin("POST", f"/v1/subjects/{subject}/revoke")
    for store in stack.stores():
        client = store.admin_client()
        try:
            keys = list(client.scan_iter(match=b"*", count=1000))
            assert keys, f"{store.name} store is empty"
            forever = [k for k in keys if client.pttl(k) == -1]
        finally:
            client.close()
        assert not forever, f"{store.name}: keys without TTL: {forever[:5]}"
        assert all(k.startswith(b"ost:") for k in keys), [k for k in keys if not k.startswith(b"ost:")][:5]


def test_logs_never_show_tokens_or_session_ids(daemon: Daemon, opaque_daemon: Daemon, subject: str) -> None:
    issued = [daemon.issue(subject), opaque_daemon.issue(subject)]
    for d, s in zip((daemon, opaque_daemon), issued, strict=True):
        d.validate(s["token"])
        d.validate(s["token"] + "x")
        d.admin("DELETE", f"/v1/sessions/{s['session_id']}")
        d.validate(s["token"])
    for d, s in zip((daemon, opaque_daemon), issued, strict=True):
        log = d.log()
        assert s["token"] not in log
        assert s["token"].split(".")[-1] not in log
        assert s["session_id"] not in log
        # Still, the actions are audited: one JSON object per line with issue and revoke events.
        events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        actions = {e.get("action") for e in events if e.get("event") == "audit"}
        assert {"issue", "revoke"} <= actions, actions
