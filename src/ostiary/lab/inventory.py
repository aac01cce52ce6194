"""Writes ``inventories/lab.py``: the pyinfra inventory of a running lab.

The file is generated on every ``ostiary lab up`` (it names this run's forwarded ports, key and
known-hosts file, all inside the lab's state directory) and removed by ``down``; it is
gitignored. Each host carries its connection data, its ``private_address`` on the lab's data
network and the lab's data knobs (the time source, the admin network SSH arrives from); a
host's own data wins over ``group_data/``, which is why the knobs sit on every host.
"""

from __future__ import annotations

import pprint
from typing import TYPE_CHECKING, Any

from . import vm

if TYPE_CHECKING:
    from .vm import Lab, LabState


def lab_data(lab: Lab, state: LabState) -> dict[str, Any]:
    """Data every lab host shares: what makes the bundle fit the lab's network and time source."""
    server: dict[str, Any] = {"host": vm.HOST_FROM_GUEST, "nts": False}
    if state.time_port != vm.NTP_PORT:
        server["port"] = state.time_port  # only when 123 was taken on this machine
    return {
        # The lab's one time source: the host's chronyd (-x), reached through the user-mode NIC.
        "chrony_servers": [server],
        "chrony_minsources": 1,
        "firewall_ntp_servers": [vm.HOST_FROM_GUEST],
        # SSH (pyinfra, testinfra, the lab's own checks) arrives from qemu's user-mode network,
        # all of it from the one NAT address 10.0.2.2: the per-source rate must allow a test run.
        "ssh_admin_networks": [vm.MGMT_SUBNET],
        "firewall_ssh_rate": "600/minute",
        "firewall_ssh_burst": 200,
        # The lab's own key store (CA, JWT keys, Redis passwords), next to its state, outside git.
        "ostiary_keystore_dir": str(lab.state_dir / "keystore"),
        # Guests run under software emulation (TCG) when the CPU has no vmx/svm: a store round trip
        # that takes 0.2 ms on hardware can take tens of ms there, so the lab allows one second.
        "sessiond_store_timeout": 1.0,
        # ... and `ostiary doctor` judges the store P99 against a budget fit for emulation (the
        # production budget of 5 ms is for real hardware).
        "sessiond_latency_budget_ms": 50.0,
        # The gateway certificate also names the lab host and the forwarded loopback address.
        "gateway_server_names": ["api.example.internal", "gw1", "localhost"],
    }


def host_entry(lab: Lab, state: LabState, name: str) -> tuple[str, dict[str, Any]]:
    host = state.host(name)
    data: dict[str, Any] = {
        "ssh_hostname": "127.0.0.1",
        "ssh_port": host.ssh_port,
        "ssh_user": "root",
        "ssh_key": state.ssh_key,
        "ssh_known_hosts_file": state.known_hosts,
        "ssh_strict_host_key_checking": "yes",
        "private_address": host.private_address,
        "lab_https_forward_port": host.https_port,
        **lab_data(lab, state),
    }
    return name, data


def render_inventory(lab: Lab, state: LabState) -> str:
    groups: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for name, host in state.hosts.items():
        for group in host.groups:
            groups.setdefault(group, []).append(host_entry(lab, state, name))
    lines = [
        '"""The running lab\'s inventory, written by `ostiary lab up` (regenerated on every up, gitignored).',
        "",
        "Connects as root over SSH forwarded from 127.0.0.1 with the lab's own key and known-hosts file.",
        '"""',
        "",
    ]
    for group, entries in groups.items():
        lines.append(f"{group} = {pprint.pformat(entries, width=100, sort_dicts=True)}")
        lines.append("")
    return "\n".join(lines)


def write_inventory(lab: Lab, state: LabState) -> None:
    lab.inventory_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = lab.inventory_path.with_suffix(".tmp")
    tmp.write_text(render_inventory(lab, state))
    tmp.replace(lab.inventory_path)
