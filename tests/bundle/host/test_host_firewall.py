"""The firewall role: rules checked by iptables-restore in a namespace, and the rollback proven live.

Every host of both profiles gets its rules rendered from the profile's groups and tested with
``iptables-restore --test``/``ip6tables-restore --test`` inside a fresh network namespace. The
apply script then runs for real in a namespace: confirmed rules stay and are persisted,
unconfirmed ones roll back by themselves within the (shortened) timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from host_support import PROFILES, REPO, group_addresses, host_data, run, write_files

from deploys import common, firewall

pytestmark = pytest.mark.bundle

CONTROL = "198.51.100.7"
ADMIN_NETWORKS = ["192.0.2.0/24", "2001:db8:1::/48"]


def _render(prefix: Path, profile: str, host: str, facts: dict[str, Any] | None = None, **overrides: Any):
    overrides.setdefault("ssh_admin_networks", ADMIN_NETWORKS)
    data = host_data(firewall, profile, host, prefix, **overrides)
    facts = facts if facts is not None else {"control_address": CONTROL, "over_ssh": True}
    files = firewall.render_files(data, facts, group_addresses(profile), PROFILES[profile][host]["groups"])
    rules_dir = common.host_path(data, firewall.RULES_DIR)
    return data, files, files[f"{rules_dir}/rules.v4"], files[f"{rules_dir}/rules.v6"]


def _ns(netns: str, *cmd: str, stdin: str | None = None, timeout: float = 30, cwd: Path | None = None):
    return run(["ip", "netns", "exec", netns, *cmd], input=stdin, timeout=timeout, cwd=cwd)


def _all_hosts() -> list[tuple[str, str]]:
    return [(p, h) for p in PROFILES for h in PROFILES[p]]


@pytest.mark.parametrize(("profile", "host"), _all_hosts(), ids=lambda v: str(v))
def test_rules_pass_iptables_restore_test(prefix: Path, netns: str, profile: str, host: str) -> None:
    _, _, v4, v6 = _render(prefix, profile, host)
    for tool, rules in (("iptables-restore", v4), ("ip6tables-restore", v6)):
        tested = _ns(netns, tool, "--test", stdin=rules)
        assert tested.returncode == 0, f"{tool}: {tested.stderr}"
    groups = PROFILES[profile][host]["groups"]
    lines = v4.splitlines()
    assert ":INPUT DROP [0:0]" in lines and ":FORWARD DROP [0:0]" in lines
    assert any(f"-s {CONTROL}/32 -p tcp -m tcp --dport 22" in line for line in lines), "lock-out guard"
    assert any("-s 192.0.2.0/24" in line and "hashlimit" in line for line in lines)
    assert any("-s 2001:db8:1::/48" in line and "hashlimit" in line for line in v6.splitlines())
    assert any("--dport 443" in line for line in lines) == (common.GROUP_GATEWAYS in groups)
    addresses = group_addresses(profile)
    daemon_rules = [line for line in lines if f"--dport {common.SESSIOND_PORT}" in line]
    if common.GROUP_SESSION_NODES in groups:
        assert daemon_rules == [
            line for line in daemon_rules if any(f"-s {a}/32 " in line for a in addresses["gateways"])
        ]
        assert len(daemon_rules) == len(addresses["gateways"])
    else:
        assert daemon_rules == []
    redis_rules = [line for line in lines if "--dports 6379,6380" in line]
    if common.GROUP_REDIS_NODES in groups:
        assert len(redis_rules) == len(addresses["session_nodes"])
        assert all(any(f"-s {a}/32 " in r for a in addresses["session_nodes"]) for r in redis_rules)
    else:
        assert redis_rules == []


def test_broken_rules_fail_the_test(prefix: Path, netns: str) -> None:
    """The validator can fail: a rule with an unknown match is refused."""
    _, _, v4, _ = _render(prefix, "single", "node1")
    broken = v4.replace("COMMIT", "-A INPUT -m no-such-match -j ACCEPT\nCOMMIT")
    assert _ns(netns, "iptables-restore", "--test", stdin=broken).returncode != 0


def test_guard_refuses_rules_without_the_control_node(prefix: Path) -> None:
    with pytest.raises(ValueError, match="lock-out guard"):
        _render(prefix, "single", "node1", facts={"control_address": None, "over_ssh": True})
    # An explicitly configured address satisfies the guard (NAT between control node and host).
    _, _, v4, _ = _render(
        prefix,
        "single",
        "node1",
        facts={"control_address": None, "over_ssh": True},
        firewall_control_addresses=["203.0.113.9"],
    )
    assert "-s 203.0.113.9/32 -p tcp -m tcp --dport 22" in v4


def test_ntp_restricted_to_the_configured_servers(prefix: Path, netns: str) -> None:
    _, _, v4, v6 = _render(prefix, "single", "node1", firewall_ntp_servers=["192.0.2.123", "2001:db8::123"])
    assert "-A ostiary-ntp-out -d 192.0.2.123/32 -j ACCEPT" in v4
    assert "-A ostiary-ntp-out -d 2001:db8::123/128 -j ACCEPT" in v6
    assert _ns(netns, "iptables-restore", "--test", stdin=v4).returncode == 0
    assert _ns(netns, "ip6tables-restore", "--test", stdin=v6).returncode == 0


# ------------------------------------------------------------------------------ apply and rollback


@pytest.fixture(autouse=True)
def _no_watcher_left(prefix: Path) -> Iterator[None]:
    """A test that fails between apply and rollback must not leave the rollback watcher behind."""
    yield
    pid_file = prefix / firewall.STATE_DIR.lstrip("/") / "watcher.pid"
    if pid_file.exists() and pid_file.read_text().strip():
        with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
            os.killpg(int(pid_file.read_text()), signal.SIGTERM)


def _live_rules(netns: str) -> str:
    """The namespace's filter rules (v4 + v6) without counters and comments, for comparison."""
    out = []
    for tool in ("iptables-save", "ip6tables-save"):
        saved = _ns(netns, tool, "-t", "filter")
        assert saved.returncode == 0, saved.stderr
        out += [
            line.split(" [")[0] if line.startswith(":") else line
            for line in saved.stdout.splitlines()
            if line and not line.startswith("#")
        ]
    return "\n".join(out)


def _deploy_files(prefix: Path, timeout: int, **overrides: Any) -> tuple[Any, str]:
    data, files, _, _ = _render(prefix, "single", "node1", firewall_confirm_timeout=timeout, **overrides)
    write_files(files)
    script = common.host_path(data, firewall.APPLY_SCRIPT)
    Path(script).chmod(0o750)
    return data, script


def _wait_for(predicate: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_confirmed_rules_stay_and_are_persisted(prefix: Path, netns: str) -> None:
    data, script = _deploy_files(prefix, timeout=2)
    applied = _ns(netns, "sh", script, "apply")
    assert applied.returncode == 0, applied.stderr
    good = _live_rules(netns)
    assert "-s 198.51.100.7/32 -p tcp -m tcp --dport 22" in good and ":INPUT DROP" in good
    confirmed = _ns(netns, "sh", script, "confirm")
    assert confirmed.returncode == 0, confirmed.stderr
    time.sleep(3)  # past the timeout: nothing rolls back
    assert _live_rules(netns) == good
    persisted = Path(common.host_path(data, firewall.PERSIST_DIR))
    assert ":INPUT DROP" in (persisted / "rules.v4").read_text()
    assert ":INPUT DROP" in (persisted / "rules.v6").read_text()
    state = Path(common.host_path(data, firewall.STATE_DIR))
    assert not (state / "rolled-back").exists() and not (state / "watcher.pid").exists()


def test_unconfirmed_rules_roll_back_by_themselves(prefix: Path, netns: str) -> None:
    # Known-good: the rendered rules with the guard, applied and confirmed.
    data, script = _deploy_files(prefix, timeout=2)
    assert _ns(netns, "sh", script, "apply").returncode == 0
    assert _ns(netns, "sh", script, "confirm").returncode == 0
    good = _live_rules(netns)
    # A bad change: the control node moved, the new rules no longer let the old address in.
    _deploy_files(prefix, timeout=2, firewall_control_addresses=["203.0.113.9"])
    rules_dir = Path(common.host_path(data, firewall.RULES_DIR))
    for name in ("rules.v4", "rules.v6"):
        text = (rules_dir / name).read_text()
        (rules_dir / name).write_text("\n".join(line for line in text.splitlines() if CONTROL not in line) + "\n")
    applied = _ns(netns, "sh", script, "apply")
    assert applied.returncode == 0, applied.stderr
    bad = _live_rules(netns)
    assert bad != good and CONTROL not in bad
    # No confirmation arrives (the operator is cut off): the host restores the rules itself.
    state = Path(common.host_path(data, firewall.STATE_DIR))
    assert _wait_for(lambda: (state / "rolled-back").exists(), 10), "no rollback within the timeout"
    assert _live_rules(netns) == good
    late = _ns(netns, "sh", script, "confirm")
    assert late.returncode != 0 and "too late" in late.stderr


def test_rendering_is_stable(prefix: Path) -> None:
    first = _render(prefix, "split", "redis1")[1]
    second = _render(prefix, "split", "redis1")[1]
    assert first == second


# ------------------------------------------------------------------------------ pyinfra, for real


def _grand_total(output: str) -> list[str]:
    line = next(line for line in output.splitlines() if line.strip().startswith("Grand total"))
    return line.split()[2:]  # hosts, success, error, no change


def test_pyinfra_applies_in_a_namespace_and_a_second_run_changes_nothing(prefix: Path, netns: str) -> None:
    """The deploy function itself, run by pyinfra on @local inside the namespace, twice."""
    inventory = prefix / "inventory.py"
    data = {
        "private_address": "127.0.0.1",
        "ostiary_root_prefix": str(prefix / "root"),
        "ssh_admin_networks": ADMIN_NETWORKS,
        "firewall_manage_packages": False,  # no package installs on the test machine
        "firewall_confirm_timeout": 5,
    }
    groups = (common.GROUP_GATEWAYS, common.GROUP_SESSION_NODES, common.GROUP_REDIS_NODES)
    inventory.write_text(f"_data = {data!r}\n" + "".join(f'{g} = [("@local", _data)]\n' for g in groups))
    deploy = prefix / "deploy.py"
    deploy.write_text("from deploys.firewall import firewall\n\nfirewall()\n")
    pyinfra = str(Path(sys.executable).with_name("pyinfra"))
    command = [pyinfra, "-y", "--no-wait", str(inventory), str(deploy)]

    first = _ns(netns, *command, timeout=120, cwd=REPO)
    assert first.returncode == 0, first.stdout + first.stderr
    hosts, success, error, _ = _grand_total(first.stdout + first.stderr)
    assert error == "-" and success != "-", first.stderr
    live = _live_rules(netns)
    assert ":INPUT DROP" in live and "--dport 443" in live and "--dports 6379,6380" in live
    persisted = prefix / "root" / firewall.PERSIST_DIR.lstrip("/") / "rules.v4"
    assert persisted.exists(), "confirm persisted the rules"

    second = _ns(netns, *command, timeout=120, cwd=REPO)
    assert second.returncode == 0, second.stdout + second.stderr
    hosts, success, error, no_change = _grand_total(second.stdout + second.stderr)
    assert (success, error) == ("-", "-") and no_change == hosts, second.stderr
    assert _live_rules(netns) == live


# ------------------------------------------------------------------------------ packets, for real

# A host in all three groups (10.77.0.3) behind a veth pair; the peer namespace holds one address
# per kind of client. Only these two namespaces ever see the traffic.
NODE = "10.77.0.3"
GATEWAY, SESSION_NODE, STRANGER, CONTROL_NODE, ADMIN = (
    "10.77.0.1",
    "10.77.0.2",
    "10.77.0.9",
    "10.77.0.50",
    "10.77.0.200",
)
# The same roles over IPv6 (ULA addresses, no duplicate address detection delay).
NODE6, GATEWAY6, SESSION_NODE6, STRANGER6 = "fd77::3", "fd77::1", "fd77::2", "fd77::9"
PORTS = (22, 443, common.SESSIOND_PORT, common.SESSION_STORE_TLS_PORT, common.REVOCATION_STORE_TLS_PORT)

LISTENER = """
import socket, sys, selectors
sel = selectors.DefaultSelector()
for port in map(int, sys.argv[1:]):
    s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port)); s.listen(64); sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        conn, _ = key.fileobj.accept(); conn.close()
"""

PROBE = """
import json, socket, sys, concurrent.futures as cf
targets, probes = json.loads(sys.argv[1]), json.loads(sys.argv[2])
def probe(p):
    src, port = p
    family = socket.AF_INET6 if ":" in src else socket.AF_INET
    s = socket.socket(family); s.bind((src, 0)); s.settimeout(1.5)
    try:
        s.connect((targets[str(family == socket.AF_INET6)], port)); return "open"
    except (socket.timeout, TimeoutError):
        return "dropped"
    except OSError as e:
        return type(e).__name__
    finally:
        s.close()
with cf.ThreadPoolExecutor(len(probes)) as pool:
    print(json.dumps(list(pool.map(probe, probes))))
"""


@pytest.fixture
def veth_pair(netns: str) -> Iterator[tuple[str, str]]:
    """``netns`` is the node; a second namespace is the network of clients, joined by a veth pair."""
    peer = f"{netns}-c"
    assert run(["ip", "netns", "add", peer]).returncode == 0
    suffix = netns.rsplit("-", 2)[-2][-5:] + netns.rsplit("-", 1)[-1]
    node_if, peer_if = f"oh1n{suffix}"[:15], f"oh1p{suffix}"[:15]
    try:
        steps = [
            ["ip", "link", "add", node_if, "type", "veth", "peer", "name", peer_if],
            ["ip", "link", "set", node_if, "netns", netns],
            ["ip", "link", "set", peer_if, "netns", peer],
            ["ip", "-n", netns, "addr", "add", f"{NODE}/24", "dev", node_if],
            ["ip", "-n", netns, "addr", "add", f"{NODE6}/64", "dev", node_if, "nodad"],
            ["ip", "-n", netns, "link", "set", node_if, "up"],
            ["ip", "-n", peer, "link", "set", peer_if, "up"],
            ["ip", "-n", peer, "link", "set", "lo", "up"],
        ]
        steps += [
            ["ip", "-n", peer, "addr", "add", f"{a}/24", "dev", peer_if]
            for a in (GATEWAY, SESSION_NODE, STRANGER, CONTROL_NODE, ADMIN)
        ]
        steps += [
            ["ip", "-n", peer, "addr", "add", f"{a}/64", "dev", peer_if, "nodad"]
            for a in (GATEWAY6, SESSION_NODE6, STRANGER6)
        ]
        for step in steps:
            done = run(step)
            assert done.returncode == 0, f"{step}: {done.stderr}"
        yield netns, peer
    finally:
        run(["ip", "netns", "delete", peer])  # the veth pair goes with its namespaces


def _probe(peer: str, probes: list[tuple[str, int]]) -> list[str]:
    """Connect from each (source address, port) at once; "open", "dropped" or the error's name."""
    targets = json.dumps({"False": NODE, "True": NODE6})
    done = run(["ip", "netns", "exec", peer, sys.executable, "-c", PROBE, targets, json.dumps(probes)], timeout=30)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def test_rules_filter_real_connections(prefix: Path, veth_pair: tuple[str, str]) -> None:
    node_ns, peer = veth_pair
    data = host_data(
        firewall,
        "single",
        "node1",
        prefix,
        private_address=NODE,
        ssh_admin_networks=["10.77.0.128/25"],
        firewall_control_addresses=[CONTROL_NODE],
        firewall_ssh_burst=3,
    )
    groups = {
        common.GROUP_GATEWAYS: [NODE, GATEWAY, GATEWAY6],
        common.GROUP_SESSION_NODES: [NODE, SESSION_NODE, SESSION_NODE6],
        common.GROUP_REDIS_NODES: [NODE],
    }
    files = firewall.render_files(data, {"over_ssh": True}, groups, list(groups))
    rules_dir = common.host_path(data, firewall.RULES_DIR)
    v4, v6 = files[f"{rules_dir}/rules.v4"], files[f"{rules_dir}/rules.v6"]
    listener = subprocess.Popen(
        ["ip", "netns", "exec", node_ns, sys.executable, "-c", LISTENER, *map(str, PORTS)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        before = _probe(peer, [(source, port) for port in PORTS for source in (STRANGER, STRANGER6)])
        assert set(before) == {"open"}, before  # without rules everything is reachable
        for tool, rules in (("iptables-restore", v4), ("ip6tables-restore", v6)):
            loaded = _ns(node_ns, tool, stdin=rules)
            assert loaded.returncode == 0, loaded.stderr
        daemon, sessions, revocations = PORTS[2:]
        expected = {
            (STRANGER, 22): "dropped",
            (STRANGER, 443): "open",
            (STRANGER, daemon): "dropped",
            (STRANGER, sessions): "dropped",
            (GATEWAY, daemon): "open",
            (GATEWAY, sessions): "dropped",
            (SESSION_NODE, sessions): "open",
            (SESSION_NODE, revocations): "open",
            (SESSION_NODE, daemon): "dropped",
            (CONTROL_NODE, 22): "open",
            # IPv6 only works at all if neighbour discovery passes the v6 rules
            (STRANGER6, 22): "dropped",
            (STRANGER6, 443): "open",
            (STRANGER6, sessions): "dropped",
            (GATEWAY6, daemon): "open",
            (GATEWAY6, sessions): "dropped",
            (SESSION_NODE6, revocations): "open",
            (SESSION_NODE6, daemon): "dropped",
        }
        assert dict(zip(expected, _probe(peer, list(expected)), strict=True)) == expected
        # SSH from the admin network is rate-limited per source: the burst (3) passes, the rest
        # drops; the control node's own rule is not limited, so the operator is never throttled.
        assert sorted(_probe(peer, [(ADMIN, 22)] * 5)) == ["dropped"] * 2 + ["open"] * 3
        assert _probe(peer, [(CONTROL_NODE, 22)] * 5) == ["open"] * 5
    finally:
        listener.terminate()
        listener.wait(timeout=10)


def test_ports_follow_the_other_roles_data(prefix: Path) -> None:
    """gateway_https_port, sessiond_port and redis_tls_ports move the rules too."""
    _, _, v4, _ = _render(
        prefix,
        "single",
        "node1",
        gateway_https_port=8443,
        sessiond_port=9700,
        redis_tls_ports={"sessions": 7379, "revocations": 7380},
    )
    assert "--dport 8443 " in v4 and "--dport 443 " not in v4
    assert "--dport 9700 " in v4 and "--dport 8700 " not in v4
    assert "--dports 7379,7380 " in v4


@pytest.mark.parametrize(
    ("server_port", "setting", "expected"),
    [
        (None, 0, 22),  # nothing known: sshd's default
        (2222, 0, 2222),  # the port the deploy's own connection arrived on, as the host sees it
        (2222, 2200, 2200),  # an explicit firewall_ssh_port wins
    ],
)
def test_ssh_rules_follow_the_port_sshd_receives_on(
    prefix: Path, server_port: int | None, setting: int, expected: int
) -> None:
    """pyinfra's ssh_port (where the control node connects, maybe through NAT) never moves the rules."""
    facts = {"control_address": CONTROL, "over_ssh": True, "server_port": server_port}
    _, _, v4, v6 = _render(prefix, "single", "node1", facts=facts, ssh_port=40022, firewall_ssh_port=setting)
    for rules in (v4, v6):
        assert f"--dport {expected} -m conntrack --ctstate NEW -j ostiary-ssh" in rules
        assert "40022" not in rules
    assert f"-s {CONTROL}/32 -p tcp -m tcp --dport {expected} " in v4
