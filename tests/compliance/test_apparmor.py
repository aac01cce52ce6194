"""AppArmor role on every host: each service's profile loaded, enforcing, attached, and biting.

Which profiles a host must have follows from its groups: chronyd's everywhere, the daemon's on
session nodes, Redis' on redis nodes, nginx's on gateways.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable

import pytest

from deploys import common

from .support import Node

pytestmark = pytest.mark.role("all")

CHRONYD_PROFILE = "/usr/sbin/chronyd"  # Debian's profile, named after the binary it attaches to
# The deliberate probe below leaves these denials; they are expected, not findings.
PROBE_COMMS = ('comm="aa-exec"', 'comm="cat"')


def expected_profiles(node: Node) -> dict[str, list[str]]:
    """profile name -> the units whose processes must run under it, for this host's roles."""
    wanted = {CHRONYD_PROFILE: ["chrony.service"]}
    if node.in_group(common.GROUP_SESSION_NODES):
        wanted[str(node.data.get("sessiond_apparmor_profile") or "ostiary-sessiond")] = ["ostiary-sessiond.service"]
    if node.in_group(common.GROUP_REDIS_NODES):
        wanted[str(node.data.get("redis_apparmor_profile") or "ostiary-redis")] = [
            f"ostiary-redis@{i}.service" for i in common.REDIS_INSTANCES
        ]
    if node.in_group(common.GROUP_GATEWAYS):
        wanted[str(node.data.get("gateway_apparmor_profile") or "ostiary-nginx")] = ["nginx.service"]
    return wanted


def loaded_profiles(node: Node) -> dict[str, str]:
    """profile -> mode, from aa-status (JSON when it offers it)."""
    result = node.run("aa-status --json")
    if result.rc == 0 and str(result.stdout).strip().startswith("{"):
        return {str(k): str(v) for k, v in json.loads(str(result.stdout)).get("profiles", {}).items()}
    text = node.check("cat /sys/kernel/security/apparmor/profiles")
    profiles = {}
    for line in text.splitlines():  # "name (mode)"
        match = re.match(r"(.+) \((\w+)\)$", line.strip())
        if match:
            profiles[match.group(1)] = match.group(2)
    return profiles


@pytest.mark.control("OST-AA-01")
def test_profiles_enforced(node: Node, evidence: Callable[[str], None]) -> None:
    enabled = node.run("aa-enabled").stdout.strip()
    assert enabled == "Yes", f"AppArmor not enabled in the kernel: {enabled!r}"
    loaded = loaded_profiles(node)
    wrong = {p: loaded.get(p, "not loaded") for p in expected_profiles(node) if loaded.get(p) != "enforce"}
    assert not wrong, f"profiles not enforcing: {wrong}"
    evidence(", ".join(f"{p} enforce" for p in expected_profiles(node)) + f" ({len(loaded)} profiles loaded)")


@pytest.mark.control("OST-AA-02")
def test_services_confined(node: Node, evidence: Callable[[str], None]) -> None:
    problems, seen = [], []
    for profile, units in expected_profiles(node).items():
        for unit in units:
            cgroup = node.check(f"systemctl show -p ControlGroup --value {unit}").strip()
            if not cgroup:
                problems.append(f"{unit}: not running")
                continue
            labels = node.check(
                # Quoted: template units' cgroup paths contain "\x2d" escapes.
                f"for p in $(cat {shlex.quote(f'/sys/fs/cgroup{cgroup}/cgroup.procs')}); do "
                'printf "%s %s\\n" "$p" "$(tr -d "\\0" </proc/$p/attr/current 2>/dev/null)"; done'
            ).splitlines()
            if not labels:
                problems.append(f"{unit}: no process")
            for line in labels:
                pid, _, label = line.partition(" ")
                if label.strip() != f"{profile} (enforce)":
                    problems.append(f"{unit} pid {pid}: {label.strip() or 'unconfined'}")
            seen.append(f"{unit}: {len(labels)} process(es) under {profile}")
    assert not problems, "; ".join(problems)
    evidence("; ".join(seen))


@pytest.mark.control("OST-AA-03")
def test_forbidden_action_denied(node: Node, evidence: Callable[[str], None]) -> None:
    seen = []
    for profile in expected_profiles(node):
        result = node.run(f"aa-exec -p {profile} -- cat /etc/shadow 2>&1", timeout=20)
        out = str(result.stdout)
        assert result.rc != 0, f"{profile}: cat /etc/shadow succeeded under the profile"
        assert "root:" not in out, f"{profile}: /etc/shadow content leaked"
        assert "denied" in out.lower(), f"{profile}: failed, but not by a denial: {out.strip()[:200]}"
        seen.append(f"{profile}: {out.strip().splitlines()[-1][:90]}")
    evidence("; ".join(seen))


@pytest.mark.control("OST-AA-04")
def test_no_denials_logged(node: Node, evidence: Callable[[str], None]) -> None:
    # Denials reach the journal through the kernel log or the audit socket; the journal must be
    # readable, or "no denials" would mean nothing.
    out = node.check("journalctl -b -q --no-pager -o short-iso _TRANSPORT=kernel + _TRANSPORT=audit", timeout=120)
    logged = [line for line in out.splitlines() if 'apparmor="DENIED"' in line]
    denials = [line for line in logged if not any(c in line for c in PROBE_COMMS)]
    assert not denials, f"{len(denials)} AppArmor denials since boot, e.g. " + " | ".join(d[-240:] for d in denials[:3])
    probes = len(logged) - len(denials)
    evidence(f"no denials since boot besides {probes} from this suite's own aa-exec probe")
