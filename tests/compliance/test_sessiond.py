"""Sessiond role on session nodes: running unprivileged and sandboxed, sane lifetimes, doctor clean."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable

import pytest

from deploys import common

from .support import Node, main_pid, service_state

pytestmark = pytest.mark.role(common.GROUP_SESSION_NODES)

UNIT = "ostiary-sessiond.service"
CONFIG = f"{common.ETC_DIR}/sessiond.toml"
MAX_EXPOSURE = 2.0  # systemd-analyze security score the issue allows the daemon's unit
# NIST SP 800-63B AAL2: reauthenticate at least every 12 hours, after at most 30 minutes idle.
AAL2_ABSOLUTE = 12 * 3600
AAL2_IDLE = 30 * 60
MAX_SKEW = 300
MAX_CACHE_TTL = 5.0
SANDBOX = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "CapabilityBoundingSet": "",
    "MemoryDenyWriteExecute": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
}


@pytest.mark.control("OST-SESS-01")
def test_daemon_running_unprivileged(node: Node, evidence: Callable[[str], None]) -> None:
    active, enabled = service_state(node, UNIT)
    assert (active, enabled) == ("active", "enabled"), f"{UNIT} is {active}/{enabled}"
    pid = main_pid(node, UNIT)
    user = node.check(f"ps -o user= -p {pid}").strip()
    assert user == common.SESSIOND_USER, f"the daemon runs as {user!r}, not {common.SESSIOND_USER}"
    evidence(f"{UNIT} active/enabled, pid {pid} as {user}")


@pytest.mark.control("OST-SESS-02")
def test_daemon_sandboxed(node: Node, evidence: Callable[[str], None]) -> None:
    props = " ".join(f"-p {name}" for name in SANDBOX)
    shown = dict(
        line.split("=", 1) for line in node.check(f"systemctl show {props} {UNIT}").splitlines() if "=" in line
    )
    # Compared as sets of words: systemd prints lists in its own order.
    wrong = {k: shown.get(k) for k, v in SANDBOX.items() if sorted(shown.get(k, "").split()) != sorted(v.split())}
    assert not wrong, f"unit settings differ: {wrong}"
    out = node.check(f"systemd-analyze security --no-pager {UNIT} | tail -n 3", timeout=120)
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", out)
    assert match, f"no exposure score in: {out.strip()[-300:]}"
    score = float(match.group(1))
    assert score <= MAX_EXPOSURE, f"exposure {score} > {MAX_EXPOSURE}"
    evidence(
        f"exposure {score}; "
        + ", ".join(f"{k}={v or '(empty)'}" for k, v in SANDBOX.items() if k != "RestrictAddressFamilies")
    )


@pytest.mark.control("OST-SESS-03")
def test_session_lifetimes(node: Node, evidence: Callable[[str], None]) -> None:
    config = tomllib.loads(node.check(f"cat {CONFIG}"))
    tokens, cache = config.get("tokens", {}), config.get("cache", {})
    ttl, idle = int(tokens.get("ttl", 900)), int(tokens.get("idle_timeout", 1800))
    absolute, skew = int(tokens.get("absolute_timeout", 43200)), int(tokens.get("clock_skew", 60))
    assert absolute <= AAL2_ABSOLUTE, f"absolute_timeout {absolute} s > {AAL2_ABSOLUTE} s (AAL2)"
    assert idle <= AAL2_IDLE, f"idle_timeout {idle} s > {AAL2_IDLE} s (AAL2)"
    assert ttl <= absolute, f"ttl {ttl} s > absolute_timeout {absolute} s"
    assert skew <= MAX_SKEW, f"clock_skew {skew} s > {MAX_SKEW} s"
    assert float(cache.get("ttl", 2.0)) <= MAX_CACHE_TTL, f"cache ttl {cache.get('ttl')} s > {MAX_CACHE_TTL} s"
    assert tokens.get("algorithm", "ES256") != "none", "algorithm none"
    evidence(f"ttl {ttl} s, idle {idle} s, absolute {absolute} s, skew {skew} s, cache {cache.get('ttl', 2.0)} s, "
             f"{tokens.get('algorithm', 'ES256')}")  # fmt: skip


@pytest.mark.control("OST-SESS-04")
def test_doctor_passes(node: Node, evidence: Callable[[str], None]) -> None:
    # As the daemon's user: its view of keys, password file and stores, not root's.
    result = node.run(
        f"runuser -u {common.SESSIOND_USER} -- {common.VENV_DIR}/bin/ostiary doctor --config {CONFIG} 2>&1",
        timeout=180,
    )
    out = str(result.stdout)
    failed = [line.strip() for line in out.splitlines() if line.startswith("FAIL")]
    assert result.rc == 0, f"ostiary doctor exited {result.rc}: {' | '.join(failed) or out.strip()[-700:]}"
    checks = [line.strip() for line in out.splitlines() if line.strip()]
    evidence(f"doctor ok ({len(checks)} lines): " + " | ".join(checks[:6])[:400])
