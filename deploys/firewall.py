"""Firewall role: iptables/ip6tables rules rendered from the inventory, applied with a dead-man switch.

Rules: default DROP on INPUT and FORWARD; loopback and established traffic; SSH from the admin
networks (rate-limited) and always from the control node; 443 on gateways; the daemon's port from
gateways only; the Redis TLS ports from session nodes only; NTP to the configured servers; ICMP
limited. They are applied by ``ostiary-firewall apply``, which arms a rollback first; the deploy
then opens a *new* SSH connection from the control node and only if that works runs
``ostiary-firewall confirm``, which disarms the rollback and persists the rules for
netfilter-persistent. Without the confirmation the host restores its previous rules by itself.
"""

from __future__ import annotations

import io
import ipaddress
import socket
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from pyinfra import host, inventory
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.server import Command
from pyinfra.operations import apt, files, python, server, systemd
from pyinfra.operations.util import any_changed

from deploys import common
from deploys import redis as redis_role
from deploys.render import render

RULES_DIR: Final = f"{common.ETC_DIR}/firewall"  # the desired rules, as rendered
PERSIST_DIR: Final = "/etc/iptables"  # netfilter-persistent loads rules.v4/rules.v6 at boot
STATE_DIR: Final = "/var/lib/ostiary-firewall"  # previous rules, watcher PID, confirmation
APPLY_SCRIPT: Final = "/usr/local/sbin/ostiary-firewall"
GROUPS: Final = (common.GROUP_GATEWAYS, common.GROUP_SESSION_NODES, common.GROUP_REDIS_NODES)

DEFAULTS: dict[str, Any] = {
    "ssh_admin_networks": [],
    "firewall_control_addresses": [],
    "firewall_ssh_rate": "6/minute",
    "firewall_ssh_burst": 10,
    "firewall_icmp_rate": "5/second",
    "firewall_icmp_burst": 10,
    "firewall_ntp_servers": [],
    "firewall_extra_tcp_ports": [],
    "firewall_log_dropped": True,
    "firewall_confirm_timeout": 60,
    "firewall_manage_packages": True,
    "firewall_ssh_port": 0,
}

SETTINGS_DOC: dict[str, str] = {
    "ssh_admin_networks": "Networks (CIDR, IPv4 or IPv6) allowed to reach SSH, rate-limited per source. "
    "The control node's own address is always allowed in addition.",
    "firewall_control_addresses": "Extra control-node addresses always allowed to SSH (for example "
    "behind NAT, where the host sees another address than the one detected).",
    "firewall_ssh_rate": "New SSH connections allowed per source address (iptables hashlimit rate).",
    "firewall_ssh_burst": "Burst of new SSH connections per source before the rate applies.",
    "firewall_icmp_rate": "Echo requests answered (iptables limit rate); errors needed by TCP always pass.",
    "firewall_icmp_burst": "Burst of echo requests before the rate applies.",
    "firewall_ntp_servers": "Addresses (or CIDRs) outgoing NTP (UDP 123) and NTS-KE (TCP 4460) may go to; "
    "empty = any (NTS servers may hand out other NTP addresses than their name resolves to).",
    "firewall_extra_tcp_ports": "Extra TCP ports open to everyone on this host (e.g. 80 for redirects).",
    "firewall_log_dropped": "Log dropped inbound packets (rate-limited) with the prefix 'ostiary-drop: '.",
    "firewall_manage_packages": "Install iptables and iptables-persistent and enable "
    "netfilter-persistent at boot (turn off for images that ship them set up).",
    "firewall_ssh_port": "Port sshd listens on, as the host sees it; 0 = the port the deploy's own SSH "
    "connection arrived on (the server port of SSH_CONNECTION, right behind NAT or port forwarding), "
    "else 22. pyinfra's ssh_port is where the control node connects, which may differ.",
    "firewall_confirm_timeout": "Seconds the new rules have to be confirmed over a fresh SSH connection "
    "before the host rolls back to the previous rules by itself.",
}


def _family(address: str) -> int:
    return ipaddress.ip_network(address, strict=False).version


def _split(addresses: Iterable[str]) -> dict[int, list[str]]:
    """Addresses/networks by IP version, validated, without duplicates, in the given order."""
    by_family: dict[int, list[str]] = {4: [], 6: []}
    for address in addresses:
        net = str(ipaddress.ip_network(str(address), strict=False))
        if net not in by_family[_family(net)]:
            by_family[_family(net)].append(net)
    return by_family


def _port(data: Any, key: str, default: int) -> int:
    """A port another role (or pyinfra's SSH connector) reads from host data, else its default."""
    return int(getattr(data, key, None) or default)


def group_addresses_from_inventory() -> dict[str, list[str]]:
    """Group -> private addresses of its hosts, from pyinfra's inventory (at deploy time)."""
    result: dict[str, list[str]] = {}
    for group in GROUPS:
        hosts = inventory.get_group(group, default=[])
        result[group] = [str(h.data.get(common.PRIVATE_ADDRESS_KEY)) for h in hosts]
        missing = [h.name for h in hosts if not h.data.get(common.PRIVATE_ADDRESS_KEY)]
        if missing:
            raise DeployError(f"hosts {missing} of group {group} have no {common.PRIVATE_ADDRESS_KEY}")
    return result


def context(
    data: Any,
    facts: Mapping[str, Any],
    groups: Mapping[str, Sequence[str]],
    host_groups: Sequence[str],
) -> dict[str, Any]:
    """Template context for both address families.

    ``facts``: ``control_address`` and ``server_port`` (the control node's address and the
    port sshd received the deploy's connection on, both as the host sees them, or None) and
    ``over_ssh`` (whether the deploy reaches the host over SSH).
    ``groups``: group -> private addresses of its hosts. ``host_groups``: this host's groups.
    """
    control = [*data.firewall_control_addresses]
    if facts.get("control_address"):
        control.append(str(facts["control_address"]))
    if facts.get("over_ssh") and not control:
        raise ValueError("lock-out guard: the control node's address is unknown; set firewall_control_addresses")
    redis_ports = dict(getattr(data, "redis_tls_ports", None) or redis_role.DEFAULTS["redis_tls_ports"])
    families = {}
    split_control = _split(control)
    split_admin = _split(data.ssh_admin_networks)
    split_ntp = _split(data.firewall_ntp_servers)
    split_groups = {g: _split(groups.get(g, [])) for g in GROUPS}
    for version in (4, 6):
        families[version] = {
            "control": split_control[version],
            "ssh_sources": split_admin[version],
            "https": common.GROUP_GATEWAYS in host_groups,
            "daemon_sources": split_groups[common.GROUP_GATEWAYS][version]
            if common.GROUP_SESSION_NODES in host_groups
            else [],
            "redis_sources": split_groups[common.GROUP_SESSION_NODES][version]
            if common.GROUP_REDIS_NODES in host_groups
            else [],
            # NTP is restricted per family only when servers are listed at all
            "ntp_restricted": bool(data.firewall_ntp_servers),
            "ntp_servers": split_ntp[version],
        }
    return {
        "families": families,
        # The ports other roles listen on, from the same data keys they read.
        # The port sshd listens on inside the host, never pyinfra's ssh_port: behind NAT or a
        # port forward the control node connects to another port than the one sshd receives on.
        "ssh_port": _port(data, "firewall_ssh_port", facts.get("server_port") or common.SSH_PORT),
        "https_port": _port(data, "gateway_https_port", common.GATEWAY_HTTPS_PORT),
        "daemon_port": _port(data, "sessiond_port", common.SESSIOND_PORT),
        "redis_ports": ",".join(str(redis_ports[name]) for name in common.REDIS_INSTANCES),
        "ntp_port": common.NTP_PORT,
        "nts_ke_port": common.NTS_KE_PORT,
        "extra_tcp_ports": [int(p) for p in data.firewall_extra_tcp_ports],
        "ssh_rate": str(data.firewall_ssh_rate),
        "ssh_burst": int(data.firewall_ssh_burst),
        "icmp_rate": str(data.firewall_icmp_rate),
        "icmp_burst": int(data.firewall_icmp_burst),
        "log_dropped": bool(data.firewall_log_dropped),
        "confirm_timeout": int(data.firewall_confirm_timeout),
        "rules_dir": common.host_path(data, RULES_DIR),
        "persist_dir": common.host_path(data, PERSIST_DIR),
        "state_dir": common.host_path(data, STATE_DIR),
    }


def render_files(
    data: Any,
    facts: Mapping[str, Any],
    groups: Mapping[str, Sequence[str]],
    host_groups: Sequence[str],
) -> dict[str, str]:
    ctx = context(data, facts, groups, host_groups)
    rules_dir = common.host_path(data, RULES_DIR)
    return {
        f"{rules_dir}/rules.v4": render("firewall/rules.v4.j2", rules=ctx["families"][4], **ctx),
        f"{rules_dir}/rules.v6": render("firewall/rules.v6.j2", rules=ctx["families"][6], **ctx),
        common.host_path(data, APPLY_SCRIPT): render("firewall/ostiary-firewall.sh.j2", **ctx),
    }


def _probe_ssh(address: str, port: int) -> None:
    """Runs on the control node: a brand-new connection must reach sshd under the new rules.

    pyinfra's own session survives any rule change (it is ESTABLISHED); a new one proves the
    operator can still get in. Failing here skips the confirmation, so the host rolls back.
    """
    with socket.create_connection((address, port), timeout=15) as conn:
        banner = conn.recv(64)
    if not banner.startswith(b"SSH-"):
        raise DeployError(f"new SSH connection to {address}:{port} got {banner!r}, not an SSH banner")


@deploy("Ostiary firewall", data_defaults=DEFAULTS)
def firewall() -> None:
    """Rules rendered from the inventory; applied only when they changed, with automatic rollback."""
    data = host.data
    over_ssh = type(host.connector).__name__ == "SSHConnector"
    # Without sudo: sudo drops SSH_CONNECTION from the environment.
    connection = (host.get_fact(Command, 'echo "${SSH_CONNECTION:-}"', _sudo=False) or "").split()
    facts = {
        "control_address": connection[0] if connection else None,
        "server_port": int(connection[3]) if len(connection) == 4 and connection[3].isdigit() else None,
        "over_ssh": over_ssh,
    }
    try:
        rendered = render_files(data, facts, group_addresses_from_inventory(), list(host.groups))
    except ValueError as error:
        raise DeployError(f"{host.name}: {error}") from error

    if data.firewall_manage_packages:
        apt.packages(name="iptables and netfilter-persistent", packages=["iptables", "iptables-persistent"])
        systemd.service(
            name="netfilter-persistent loads the confirmed rules at boot",
            service="netfilter-persistent.service",
            enabled=True,
        )
    put_ops = []
    for path, content in sorted(rendered.items()):
        is_script = path == common.host_path(data, APPLY_SCRIPT)
        put_ops.append(
            files.put(
                name=f"Firewall: {path}",
                src=io.StringIO(content),
                dest=path,
                user="root",
                group="root",
                mode="0750" if is_script else "0640",
            )
        )
    changed = any_changed(*put_ops)
    server.shell(
        name="Apply the firewall rules (rollback armed)",
        commands=[common.host_path(data, APPLY_SCRIPT) + " apply"],
        _if=changed,
    )
    if over_ssh:
        python.call(
            name="Open a new SSH connection under the new rules",
            function=_probe_ssh,
            address=str(data.get("ssh_hostname") or host.name),
            port=int(data.get("ssh_port") or common.SSH_PORT),
            _if=changed,
        )
    server.shell(
        name="Confirm and persist the firewall rules",
        commands=[common.host_path(data, APPLY_SCRIPT) + " confirm"],
        _if=changed,
    )
