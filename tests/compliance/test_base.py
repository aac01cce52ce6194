"""Base role on every host: sysctls, memory settings, sshd, journal, OpenSSL, entropy."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from deploys import base as base_role

from .support import SERVICE_UNITS, Node, sysctl_values

pytestmark = pytest.mark.role("all")

NETWORK_PREFIXES = ("net.",)
KERNEL_PREFIXES = ("kernel.", "fs.", "dev.")
# The CIS-style floor, whatever the inventory says: a knob may tighten these, never loosen them.
FLOOR = {
    "net.ipv4.conf.all.rp_filter": {"1", "2"},
    "net.ipv4.conf.all.accept_redirects": {"0"},
    "net.ipv6.conf.all.accept_redirects": {"0"},
    "net.ipv4.conf.all.send_redirects": {"0"},
    "net.ipv4.conf.all.accept_source_route": {"0"},
    "net.ipv6.conf.all.accept_source_route": {"0"},
    "net.ipv4.tcp_syncookies": {"1"},
    "kernel.kptr_restrict": {"1", "2"},
    "kernel.dmesg_restrict": {"1"},
    "kernel.yama.ptrace_scope": {"1", "2", "3"},
    "kernel.unprivileged_bpf_disabled": {"1", "2"},
}


def _expected(node: Node, prefixes: tuple[str, ...]) -> dict[str, str]:
    wanted = base_role.sysctls(_Data(node.data))
    return {k: v for k, v in wanted.items() if k.startswith(prefixes) and k != "vm.overcommit_memory"}


class _Data:
    """host.data-like view of a node's merged data (the role's pure functions read attributes)."""

    def __init__(self, data: dict[str, object]) -> None:
        self.__dict__.update(data)


def _check_sysctls(node: Node, prefixes: tuple[str, ...], evidence: Callable[[str], None]) -> None:
    expected = _expected(node, prefixes)
    floor = {k: v for k, v in FLOOR.items() if k.startswith(prefixes)}
    actual = sysctl_values(node, sorted(set(expected) | set(floor)))
    wrong = [f"{k}={actual.get(k, 'missing')} (want {v})" for k, v in expected.items() if actual.get(k) != v]
    wrong += [f"{k}={actual.get(k, 'missing')} (CIS floor {sorted(v)})" for k, v in floor.items()
              if actual.get(k) not in v]  # fmt: skip
    assert not wrong, "sysctls differ: " + ", ".join(wrong)
    evidence(f"{len(actual)} sysctls as rendered, e.g. " + ", ".join(f"{k}={actual[k]}" for k in sorted(floor)[:4]))


@pytest.mark.control("OST-BASE-01")
def test_network_sysctls(node: Node, evidence: Callable[[str], None]) -> None:
    _check_sysctls(node, NETWORK_PREFIXES, evidence)


@pytest.mark.control("OST-BASE-02")
def test_kernel_sysctls(node: Node, evidence: Callable[[str], None]) -> None:
    _check_sysctls(node, KERNEL_PREFIXES, evidence)


@pytest.mark.control("OST-BASE-03")
def test_redis_memory_settings(node: Node, evidence: Callable[[str], None]) -> None:
    overcommit = sysctl_values(node, ["vm.overcommit_memory"]).get("vm.overcommit_memory")
    assert overcommit == "1", f"vm.overcommit_memory={overcommit}"
    thp = node.check("cat /sys/kernel/mm/transparent_hugepage/enabled").strip()
    if node.data.get("thp_disabled", True):
        assert "[never]" in thp, f"transparent huge pages: {thp}"
    evidence(f"overcommit_memory=1, THP {thp}")


def _sshd_settings(node: Node) -> dict[str, str]:
    out = node.check("sshd -T 2>/dev/null || /usr/sbin/sshd -T")
    settings = {}
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        settings.setdefault(key.lower(), value.strip())
    return settings


@pytest.mark.control("OST-BASE-04")
def test_sshd_keys_only(node: Node, evidence: Callable[[str], None]) -> None:
    s = _sshd_settings(node)
    expected = {
        "passwordauthentication": {"no"},
        "kbdinteractiveauthentication": {"no"},
        "permitemptypasswords": {"no"},
        "pubkeyauthentication": {"yes"},
        "permitrootlogin": {"prohibit-password", "without-password", "no"},
    }
    wrong = [f"{k} {s.get(k, 'missing')}" for k, ok in expected.items() if s.get(k) not in ok]
    assert not wrong, "sshd -T: " + ", ".join(wrong)
    # Behaviour: the daemon refuses a password login outright (no password method offered).
    probe = node.run(
        "ssh -o BatchMode=yes -o PreferredAuthentications=password -o PubkeyAuthentication=no "
        "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=5 "
        "nobody@127.0.0.1 true 2>&1",
        timeout=20,
    )
    out = str(probe.stdout)
    if "not found" not in out:  # the ssh client is optional on a server
        assert probe.rc != 0 and "password" not in out.split("(")[-1], f"password login offered: {out.strip()}"
    evidence(f"permitrootlogin {s['permitrootlogin']}, passwordauthentication no, pubkey only")


WEAK = re.compile(r"cbc|sha1|md5|-96|group1-|group14-sha1|arcfour|3des|ssh-dss", re.IGNORECASE)


@pytest.mark.control("OST-BASE-05")
def test_sshd_modern_algorithms(node: Node, evidence: Callable[[str], None]) -> None:
    s = _sshd_settings(node)
    problems = []
    for key, knob in (("ciphers", "ssh_ciphers"), ("kexalgorithms", "ssh_kex_algorithms"), ("macs", "ssh_macs")):
        offered = [a for a in s.get(key, "").split(",") if a]
        weak = [a for a in offered if WEAK.search(a)]
        extra = sorted(set(offered) - set(node.data.get(knob) or offered))
        if weak:
            problems.append(f"{key}: weak {weak}")
        if extra:
            problems.append(f"{key}: not in {knob}: {extra}")
    assert not problems, "; ".join(problems)
    evidence(f"ciphers {s['ciphers']}; macs {s['macs']}")


@pytest.mark.control("OST-BASE-06")
def test_persistent_journal(node: Node, evidence: Callable[[str], None]) -> None:
    storage = node.check("systemd-analyze cat-config systemd/journald.conf | grep -E '^Storage=' | tail -n1 || true")
    assert storage.strip() in ("Storage=persistent", ""), f"journald {storage.strip()}"
    files = node.check("ls /var/log/journal/*/system.journal 2>/dev/null || true").split()
    assert files, "no /var/log/journal/<machine-id>/system.journal: the journal is kept in memory only"
    evidence(f"{storage.strip() or 'Storage=auto with /var/log/journal'}; {files[0]}")


@pytest.mark.control("OST-BASE-07")
def test_openssl_version(node: Node, evidence: Callable[[str], None]) -> None:
    version = node.check("openssl version").strip()
    problem = base_role.openssl_problem(_Data(node.data), version)
    assert problem is None, problem
    evidence(version)


@pytest.mark.control("OST-BASE-08")
def test_entropy(node: Node, evidence: Callable[[str], None]) -> None:
    bits = node.check("cat /proc/sys/kernel/random/entropy_avail").strip()
    problem = base_role.entropy_problem(_Data(node.data), bits)
    assert problem is None, problem
    evidence(f"entropy_avail={bits}")


@pytest.mark.control("OST-BASE-09")
def test_no_core_dumps(node: Node, evidence: Callable[[str], None]) -> None:
    if not node.data.get("core_dumps_disabled", base_role.DEFAULTS["core_dumps_disabled"]):
        pytest.skip("core_dumps_disabled is off in this inventory")
    dumpable = sysctl_values(node, ["fs.suid_dumpable"]).get("fs.suid_dumpable")
    assert dumpable == "0", f"fs.suid_dumpable={dumpable}"
    # Behaviour: this very SSH session went through PAM's limits, as an operator's login does.
    hard = node.check("ulimit -H -c").strip()
    assert hard == "0", f"hard core-size limit of a login session: {hard}"
    units = [unit for group in sorted(node.groups) for unit in SERVICE_UNITS.get(group, ())]
    limits = {u: node.check(f"systemctl show -p LimitCORE --value {u}").strip() for u in units}
    wrong = {u: v for u, v in limits.items() if v != "0"}
    assert not wrong, f"LimitCORE of the bundle's services: {wrong}"
    evidence(f"login hard core limit 0, fs.suid_dumpable=0, LimitCORE=0 on {', '.join(units) or 'no bundle service'}")


@pytest.mark.control("OST-BASE-10")
def test_unused_protocols_cannot_load(node: Node, evidence: Callable[[str], None]) -> None:
    names = list(node.data.get("disabled_protocols", base_role.DEFAULTS["disabled_protocols"]))
    if not names:
        pytest.skip("disabled_protocols is empty in this inventory")
    loaded = set(node.check("cut -d' ' -f1 /proc/modules").split())
    problems = []
    for name in names:
        plan = node.run(f"modprobe --dry-run --verbose {name} 2>&1")
        if "install /bin/false" not in str(plan.stdout):
            problems.append(f"{name}: modprobe would load it ({str(plan.stdout).strip()[:80]})")
        if name in loaded:
            problems.append(f"{name}: loaded now")
    assert not problems, "; ".join(problems)
    evidence(f"modprobe resolves {', '.join(names)} to /bin/false; none loaded")
