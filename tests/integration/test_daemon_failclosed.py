"""Fail-closed: with a store stopped or frozen (SIGSTOP), no token outside the local cache is accepted.

This module owns its stack: it stops and freezes stores, which must not disturb other modules.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from ostiary.localstack import Daemon, LocalStack, RedisServer

STOPPED_REQUESTS = 200  # per case: cheap, the refusal is immediate
PAUSED_REQUESTS = 30  # per case: each waits for the store timeout
STORE_TIMEOUT = 0.1


@pytest.fixture(scope="module")
def failstack() -> Iterator[LocalStack]:
    with LocalStack() as local:
        yield local


@pytest.fixture(scope="module")
def daemons(failstack: LocalStack) -> dict[str, Daemon]:
    return {
        mode: failstack.daemon(tokens={"mode": mode}, store={"timeout": STORE_TIMEOUT}) for mode in ("jwt", "opaque")
    }


def _store(stack: LocalStack, which: str) -> RedisServer:
    sessions, revocations = stack.stores()
    return sessions if which == "sessions" else revocations


def _wait_recovered(daemon: Daemon, subject: str, timeout: float = 10.0) -> None:
    """After the outage, fresh tokens validate again (the daemon reconnects by itself)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            issued = daemon.admin("POST", "/v1/sessions", json={"sub": subject, "claims": {}})
            if issued.status_code == 201:
                response = daemon.validate(issued.json()["token"])
                if response.status_code == 200:
                    return
                last = (response.status_code, response.headers.get("X-Session-Fault"))
            else:
                last = issued.status_code
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"daemon did not recover within {timeout}s: {last}")


@pytest.mark.parametrize("mode", ["jwt", "opaque"])
@pytest.mark.parametrize("which", ["revocations", "sessions"])
@pytest.mark.parametrize("outage", ["stopped", "paused"])
def test_store_outage_fails_closed(
    failstack: LocalStack, daemons: dict[str, Daemon], subject: str, mode: str, which: str, outage: str
) -> None:
    daemon = daemons[mode]
    store = _store(failstack, which)
    # Start from a healthy daemon even if an earlier case failed before its own recovery check.
    _wait_recovered(daemon, subject)
    requests = STOPPED_REQUESTS if outage == "stopped" else PAUSED_REQUESTS
    tokens = [daemon.issue(f"{subject}-{i}")["token"] for i in range(min(requests, 50))]
    cached = daemon.issue(subject)["token"]
    assert daemon.validate(cached).status_code == 200  # this one may be served from the cache
    expected_fault = "REDIS_CONN_REFUSED" if outage == "stopped" else "SESSION_STORE_LATENCY"
    answers: dict[tuple[int, str | None], int] = {}
    if outage == "stopped":
        store.stop()
    else:
        store.pause()
    try:
        for i in range(requests):
            response = daemon.validate(tokens[i % len(tokens)])
            key = (response.status_code, response.headers.get("X-Session-Fault"))
            answers[key] = answers.get(key, 0) + 1
        ready = daemon.get("/readyz")
    finally:
        if outage == "stopped":
            store.start()
        else:
            store.resume()
    assert answers == {(503, expected_fault): requests}, answers
    assert ready.status_code == 503, ready.text
    _wait_recovered(daemon, subject)


def test_paused_store_answers_within_the_timeout(failstack: LocalStack, daemons: dict[str, Daemon]) -> None:
    """A frozen store costs one bounded wait, not a hung request."""
    daemon = daemons["opaque"]
    token = daemon.issue("latency-probe")["token"]
    _, revocations = failstack.stores()
    revocations.pause()
    try:
        started = time.monotonic()
        response = daemon.validate(token)
        elapsed = time.monotonic() - started
    finally:
        revocations.resume()
    assert response.status_code == 503
    assert elapsed < STORE_TIMEOUT * 4 + 0.3, f"took {elapsed:.3f}s with store.timeout={STORE_TIMEOUT}"
    _wait_recovered(daemon, "latency-probe")


def test_revocation_during_outage_is_refused(failstack: LocalStack, daemons: dict[str, Daemon]) -> None:
    """An admin revocation while the revocation store is down must fail loudly, not pretend."""
    daemon = daemons["jwt"]
    issued = daemon.issue("outage-revoker")
    _, revocations = failstack.stores()
    revocations.stop()
    try:
        response = daemon.admin("DELETE", f"/v1/sessions/{issued['session_id']}")
    finally:
        revocations.start()
    assert response.status_code == 503, response.status_code
    assert isinstance(response.json()["error"], str)
    _wait_recovered(daemon, "outage-revoker")
