"""Session flows through the gateway VM of the applied lab (marker ``lab``).

Every request goes client -> gw1 (nginx, TLS 1.3) -> sess1 (the daemon, mutual TLS) -> kv1 (both
Redis stores, mutual TLS), exactly as in production. The tests break the stack on purpose (Redis
stopped, sess1's clock stepped) and always put it back in a ``finally``, because the compliance
run and the lifecycle tests that follow share the same VMs.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from lab_probes import (
    GATEWAY,
    REDIS_NODE,
    SESSION_NODE,
    Answer,
    Gateway,
    admin,
    daemon_setting,
    daemon_warm_up,
    doctor,
    issue,
)

from ostiary.lab.vm import Lab
from ostiary.sessiond.cache import HEALTH_WINDOW

REDIS_UNITS = "ostiary-redis@sessions.service ostiary-redis@revocations.service"
STORE_DOWN_SECONDS = 6.0  # how long requests are sent while both stores are stopped
RECOVERY_SECONDS = 45.0  # bound for the daemon to use the restarted stores again (TCG guests)
CLOCK_STEP = 400  # seconds sess1's clock jumps ahead: beyond the daemon's 300 s tolerance
DOCTOR_SETTLE_SECONDS = 90  # for chrony to mark the kernel clock synchronised again after its step
SHORT_TTL = 300  # a token that the clock step makes expire (300 + 60 s skew < 400)
STORE_FAULTS = {"REDIS_CONN_REFUSED", "SESSION_STORE_LATENCY", "SESSIOND_UNAVAILABLE"}


@pytest.fixture(scope="module")
def gateway(applied_lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    client = Gateway(applied_lab, tmp_path_factory.mktemp("gateway"))
    yield client
    client.close()


def _subject() -> str:
    return f"flow-{uuid.uuid4().hex[:12]}"


def _until(gateway: Gateway, token: str, wanted: int, seconds: float) -> tuple[Answer, float]:
    """Poll until the gateway answers ``wanted``; the last answer and how long it took."""
    t0 = time.monotonic()
    while True:
        answer = gateway.get(token)
        if answer.status == wanted or time.monotonic() - t0 > seconds:
            return answer, answer.at - t0
        time.sleep(0.2)


def _until_not(gateway: Gateway, token: str, unwanted: int, seconds: float) -> tuple[Answer, float]:
    """Poll while the gateway answers ``unwanted``; the first other answer and how long it took."""
    t0 = time.monotonic()
    while True:
        answer = gateway.get(token)
        if answer.status != unwanted or time.monotonic() - t0 > seconds:
            return answer, answer.at - t0
        time.sleep(0.2)


def test_issue_and_call_protected_location(applied_lab: Lab, gateway: Gateway) -> None:
    # The first request after the apply's restart must find its store connections open (a TCG guest
    # needs seconds to set one up, more than the lab's store.timeout): show what start-up opened.
    print(f"flow: {SESSION_NODE} daemon start-up: {daemon_warm_up(applied_lab)}")
    subject = _subject()
    session = issue(applied_lab, subject)
    answer = gateway.get(session["token"])
    assert answer.status == 200, f"{answer.status} {answer.fault} {answer.body[:200]}"
    # The placeholder upstream echoes the subject nginx forwarded in X-Session-Subject.
    assert f"subject={subject}" in answer.body, answer.body
    refused = gateway.get(None)
    assert (refused.status, refused.fault) == (401, "MISSING_TOKEN")
    print(f"flow: issued {session['session_id']} on {SESSION_NODE}; {GATEWAY} forwarded subject={subject}")


def test_revoked_session_refused_within_cache_bound(applied_lab: Lab, gateway: Gateway) -> None:
    cache_ttl = float(daemon_setting(applied_lab, "cache", "ttl", 2.0))
    session = issue(applied_lab, _subject())
    token = session["token"]
    assert gateway.get(token).status == 200
    assert gateway.get(token).status == 200  # now answered from the daemon's validation cache
    admin(applied_lab, "revoke", session["session_id"])
    revoked_at = time.monotonic()
    answer, _ = _until(gateway, token, 403, cache_ttl + 10)
    after = answer.at - revoked_at
    assert (answer.status, answer.fault) == (403, "REVOKED"), f"{answer.status} {answer.fault}"
    assert after <= cache_ttl + 1.0, f"still accepted {after:.2f} s after the revocation (cache ttl {cache_ttl} s)"
    print(f"flow: revoked session refused {after:.2f} s after the revocation returned (cache ttl {cache_ttl} s)")


def test_store_down_fails_closed_and_data_survives(applied_lab: Lab, gateway: Gateway) -> None:
    subject = _subject()
    revoked = issue(applied_lab, subject)
    admin(applied_lab, "revoke", revoked["session_id"])
    live = issue(applied_lab, subject)
    assert gateway.get(live["token"]).status == 200  # validated once: in the cache when Redis goes
    answers: list[Answer] = []
    try:
        applied_lab.ssh(REDIS_NODE, f"systemctl stop {REDIS_UNITS}", check=True)
        stopped_at = time.monotonic()
        while time.monotonic() - stopped_at < STORE_DOWN_SECONDS:
            answers.append(gateway.get(live["token"]))
    finally:
        applied_lab.ssh(REDIS_NODE, f"systemctl start {REDIS_UNITS}", check=True)
        started_at = time.monotonic()
    statuses = [a.status for a in answers]
    assert 200 not in statuses, f"a 200 while both stores were stopped: {statuses}"
    settled = [a for a in answers if a.at - stopped_at > HEALTH_WINDOW]
    wrong = [(a.status, a.fault) for a in settled if a.status != 503 or a.fault not in STORE_FAULTS]
    assert settled and not wrong, f"not 503 with a store fault: {wrong or statuses}"
    # Back up: the live session validates again, the revocation is still there.
    answer, _ = _until(gateway, live["token"], 200, RECOVERY_SECONDS)
    assert answer.status == 200, f"{answer.status} {answer.fault} {RECOVERY_SECONDS} s after Redis started again"
    # Pooled connections from before the restart may still fail once each (503, fail-closed):
    # wait for a real answer, then it must be the revocation.
    again, _ = _until_not(gateway, revoked["token"], 503, RECOVERY_SECONDS)
    assert (again.status, again.fault) == (403, "REVOKED"), f"revocation lost over the restart: {again}"
    listed = admin(applied_lab, "list", subject)
    assert live["session_id"] in str(listed), f"session {live['session_id']} lost over the restart: {listed}"
    faults = sorted({a.fault for a in settled})
    print(
        f"flow: {len(answers)} requests with both stores stopped: all 503 ({', '.join(faults)}), none 200; "
        f"usable again {answer.at - started_at:.1f} s after start; session and revocation kept"
    )


def _chrony_brings_clock_back(lab: Lab) -> float:
    """chrony steps the clock only in its first updates (makestep ... 3): restart it, wait for sync.

    Returns the remaining offset of sess1's clock from this machine's (the lab's time source).
    """
    lab.ssh(SESSION_NODE, "systemctl restart chrony.service && chronyc -n waitsync 60 0.5 0 1", timeout=180, check=True)
    guest = float(lab.ssh(SESSION_NODE, "date +%s.%N", check=True).stdout)
    return guest - time.time()


def test_clock_step_refuses_tokens_and_doctor_names_clock(applied_lab: Lab, gateway: Gateway) -> None:
    short = issue(applied_lab, _subject(), ttl=SHORT_TTL)
    applied_lab.step_clock(SESSION_NODE, CLOCK_STEP)
    try:
        expired = gateway.get(short["token"])
        future = issue(applied_lab, _subject())  # issued by a clock 400 s ahead
        rc, report = doctor(applied_lab)
    finally:
        offset = _chrony_brings_clock_back(applied_lab)
    assert (expired.status, expired.fault) == (401, "JWT_EXPIRED"), f"{expired.status} {expired.fault}"
    assert rc != 0, f"doctor passed with the clock {CLOCK_STEP} s off:\n{report}"
    clock_failures = [line for line in report.splitlines() if line.startswith("FAIL") and "CLOCK" in line]
    assert clock_failures, f"doctor did not name the clock:\n{report}"
    assert abs(offset) < 2.0, f"sess1 still {offset:+.1f} s off after chrony's resync"
    answer = gateway.get(future["token"])
    assert (answer.status, answer.fault) == (401, "NOT_YET_VALID"), f"{answer.status} {answer.fault}"
    fresh = issue(applied_lab, _subject())
    assert gateway.get(fresh["token"]).status == 200, "a fresh session fails after the clock came back"
    # The kernel's "synchronised" flag (what timedatectl reads) follows chrony's next updates.
    deadline = time.monotonic() + DOCTOR_SETTLE_SECONDS
    while True:
        _, after = doctor(applied_lab)
        still = [line for line in after.splitlines() if line.startswith("FAIL") and "CLOCK" in line]
        if not still or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert not still, f"doctor still reports the clock {DOCTOR_SETTLE_SECONDS} s after the resync: {still}"
    named = " | ".join(c.split(None, 2)[1] for c in clock_failures)
    print(
        f"flow: clock +{CLOCK_STEP} s: JWT_EXPIRED, doctor FAIL {named}; chrony back to {offset:+.3f} s; "
        "token issued while ahead: NOT_YET_VALID"
    )
