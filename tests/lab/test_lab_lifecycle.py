"""The lab itself: cached image, SSH, AppArmor, the data network, the bundle applied and
idempotent, and a clean teardown.

The last test kills every lab process with SIGKILL (a crashed run), brings the lab up again
(which must clean up by itself and reuse the cached image) and takes it down: nothing may be
left. It runs last in this module; H6's flow tests (test_flows.py) sort before this file.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ostiary.lab import image, vm
from ostiary.lab.cli import ApplyReport
from ostiary.lab.vm import Lab


def test_image_is_cached_and_reused(lab: Lab) -> None:
    state = lab.require_state()
    cached = image.cached_image()
    assert cached is not None, "no complete image in the cache after up"
    assert cached.recipe_hash == state.image_hash
    assert cached.directory.parent == image.cache_root()
    assert not list(image.cache_root().glob(".build-*")), "a temporary build directory was left behind"
    mtime = cached.disk.stat().st_mtime_ns
    t0 = time.monotonic()
    again = image.ensure_image(log=lambda _msg: None)
    assert not again.built_now
    assert time.monotonic() - t0 < 5
    assert again.disk.stat().st_mtime_ns == mtime
    # Every VM runs on its own copy-on-write overlay whose backing file is the cached image.
    for host in state.hosts.values():
        info = subprocess.run(
            ["qemu-img", "info", "--output=json", "-U", host.overlay], capture_output=True, text=True, check=True
        ).stdout
        assert f'"backing-filename": "{cached.disk}"' in info, info
        assert Path(host.overlay).parent == lab.run_dir


def test_vms_answer_ssh_under_their_names(lab: Lab) -> None:
    state = lab.require_state()
    assert set(state.hosts) == {"gw1", "sess1", "kv1"}
    for name, host in state.hosts.items():
        proc = lab.ssh(name, "hostname; systemctl is-active ssh")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == [name, "active"]
        assert host.private_address.startswith(vm.DATA_PREFIX)


def test_inventory_names_hosts_groups_and_addresses(lab: Lab) -> None:
    state = lab.require_state()
    text = lab.inventory_path.read_text()
    for name, host in state.hosts.items():
        assert f"'{name}'" in text
        assert f"'private_address': '{host.private_address}'" in text
        assert f"'ssh_port': {host.ssh_port}" in text
    for group in ("gateways", "session_nodes", "redis_nodes"):
        assert f"\n{group} = " in text


def test_apparmor_enabled_in_guests(lab: Lab) -> None:
    for name in lab.require_state().hosts:
        proc = lab.ssh(name, "cat /sys/module/apparmor/parameters/enabled; aa-enabled; aa-status --profiled")
        assert proc.returncode == 0, proc.stderr
        enabled, answer, profiled = proc.stdout.split()
        assert (enabled, answer) == ("Y", "Yes")
        assert int(profiled) > 0


def test_data_network_reaches_guest_to_guest(lab: Lab) -> None:
    state = lab.require_state()
    for name in state.hosts:
        for other, host in state.hosts.items():
            if other == name:
                continue
            spec = next(s for s in lab.topology if s.name == other)
            # ping may be rate-limited by the bundle's firewall; the neighbour entry proves the
            # frames crossed the VDE switch whatever iptables does with them.
            proc = lab.ssh(
                name,
                f"ping -c 2 -W 2 -q {host.private_address} >/dev/null 2>&1; ip neigh show {host.private_address}",
            )
            assert spec.data_mac in proc.stdout, f"{name} -> {other}: {proc.stdout} {proc.stderr}"


def test_data_network_absent_from_this_machine(lab: Lab) -> None:
    """No lab address on any local interface and no route to the lab subnet on a local link.

    Nothing is sent to a lab address from here: the check reads this machine's own tables.
    """
    subnet = ipaddress.ip_network(vm.DATA_SUBNET)
    addrs = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=True).stdout
    for line in addrs.splitlines():
        address = ipaddress.ip_interface(line.split()[3]).ip
        assert address not in subnet, line
    routes = subprocess.run(["ip", "-o", "-4", "route", "show"], capture_output=True, text=True, check=True).stdout
    for line in routes.splitlines():
        dest = line.split()[0]
        if dest != "default":
            assert not ipaddress.ip_network(dest, strict=False).overlaps(subnet), line
    # The switch has no tap port: vde_switch was started without one (-t).
    running = lab.processes()
    cmdline = Path(f"/proc/{running['switch']}/cmdline").read_bytes().split(b"\0")
    assert b"-t" not in cmdline and b"--tap" not in cmdline


def test_bundle_applies_and_a_second_run_changes_nothing(apply_report: ApplyReport) -> None:
    """``pyinfra inventories/lab.py deploys/site.py -y`` succeeds; then, per host, the
    ``--dry --json`` plan of a second run contains no change (operations named on failure)."""
    assert apply_report.ok, f"the apply failed:\n{apply_report.log_tail}"
    would_change = [f"{', '.join(change.hosts)}: {change.name}" for change in apply_report.dry_changes]
    assert not would_change, "not idempotent, a second run would change:\n" + "\n".join(would_change)
    per_host = apply_report.times["dry_plan_per_host"]
    print(f"\nlab apply: first apply {apply_report.times['apply']} s; no-op re-apply (plan) per host: {per_host}")


def test_plan_command_reports_nothing_pending_after_the_apply(applied_lab: Lab) -> None:
    """``ostiary lab plan --json``, the command molecule's converge and idempotence steps use."""
    proc = subprocess.run(
        [sys.executable, "-m", "ostiary", "lab", "plan", "--json"],
        cwd=applied_lab.root, capture_output=True, text=True, timeout=600, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    plan = json.loads(proc.stdout)
    assert plan["pending"] == [], f"pending after the apply: {plan['pending']}"
    assert set(plan["seconds_per_host"]) == set(applied_lab.require_state().hosts)


def test_crashed_lab_recovers_then_down_leaves_nothing(lab: Lab) -> None:
    """SIGKILL every lab process (a crash), ``up`` again (cached image, stale state cleaned), ``down``."""
    before = lab.processes()
    assert {"gw1", "sess1", "kv1", "switch", "timesource"} <= set(before)
    for pid in before.values():
        os.kill(pid, signal.SIGKILL)
    for pid in before.values():
        vm.stop_pid(pid, wait=5)
    assert not lab.processes()
    assert lab.state_file.exists()  # the crash left its state behind

    state = lab.up(progress=lambda _msg: None)
    assert "image (cached)" in state.phases, state.phases
    assert "image" not in state.phases
    assert lab.ssh("kv1", "hostname").stdout.strip() == "kv1"
    now = lab.processes()
    assert not set(now.values()) & set(before.values())

    lab.down(progress=lambda _msg: None)
    for pid in now.values():
        assert vm.gone(pid), f"pid {pid} still runs"
    assert not lab.processes()
    assert not lab.run_dir.exists()
    assert not list(lab.state_dir.rglob("*.qcow2"))
    assert not lab.inventory_path.exists()
