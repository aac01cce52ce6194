"""Firewall role on every host: DROP policies, persisted rules, and what each peer can really reach.

The reachability matrix is measured, not read from the rules: from every other host of the
inventory, a TCP connect to each port of this host's private address is "open" (handshake done),
"refused" (RST: nothing listens, but the firewall let it through) or "filtered" (no answer: the
firewall dropped it). The expectation comes from the groups, exactly as the issue states it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest

from deploys import common

from .support import Node, tcp_probe

pytestmark = pytest.mark.role("all")

# Ports no host may expose over the private network, probed besides the service ports.
ALWAYS_CLOSED = (common.SESSIOND_ADMIN_PORT, 25, 80, 3306, 5432, 8080, 11211)


def _in_networks(address: str, networks: list[str]) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip in ipaddress.ip_network(str(n), strict=False) for n in networks)


def expected(source: Node, target: Node) -> dict[int, set[str]]:
    """Port -> the states that are correct for ``source`` connecting to ``target``."""
    data = target.data
    redis_ports = dict(data.get("redis_tls_ports") or {})
    open_, filtered = {"open"}, {"filtered"}
    ssh_sources = list(data.get("ssh_admin_networks") or []) + list(data.get("firewall_control_addresses") or [])
    want: dict[int, set[str]] = {
        common.SSH_PORT: open_ if _in_networks(source.address, ssh_sources) else filtered,
        int(data.get("gateway_https_port") or common.GATEWAY_HTTPS_PORT):
            open_ if target.in_group(common.GROUP_GATEWAYS) else filtered,
    }  # fmt: skip
    daemon_port = int(data.get("sessiond_port") or common.SESSIOND_PORT)
    if target.in_group(common.GROUP_SESSION_NODES) and source.in_group(common.GROUP_GATEWAYS):
        # A daemon beside a gateway listens on a unix socket only: let through, nobody answers.
        want[daemon_port] = {"refused"} if target.in_group(common.GROUP_GATEWAYS) else open_
    else:
        want[daemon_port] = filtered
    for instance in common.REDIS_INSTANCES:
        port = int(redis_ports.get(instance, common.redis_tls_port(instance)))
        allowed = target.in_group(common.GROUP_REDIS_NODES) and source.in_group(common.GROUP_SESSION_NODES)
        want[port] = open_ if allowed else filtered
    extra = {int(p) for p in data.get("firewall_extra_tcp_ports") or []}
    for port in ALWAYS_CLOSED:
        if port not in extra and port not in want:
            want[port] = filtered
    return want


def _policies(rules: str) -> dict[str, str]:
    """Chain -> policy from `iptables -S` ("-P INPUT DROP") or a restore file (":INPUT DROP [0:0]")."""
    policies = {}
    for line in rules.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] == "-P":
            policies[words[1]] = words[2]
        elif words and words[0].startswith(":") and len(words) >= 2:
            policies[words[0][1:]] = words[1]
    return policies


@pytest.mark.control("OST-FW-01")
def test_default_drop(node: Node, evidence: Callable[[str], None]) -> None:
    seen = []
    for tool in ("iptables", "ip6tables"):
        policies = _policies(node.check(f"{tool} -S"))
        for chain in ("INPUT", "FORWARD"):
            assert policies.get(chain) == "DROP", f"{tool} {chain} policy {policies.get(chain)}"
        seen.append(f"{tool}: INPUT DROP, FORWARD DROP")
    evidence("; ".join(seen))


@pytest.mark.control("OST-FW-02")
def test_reachability_matrix(node: Node, nodes: list[Node], evidence: Callable[[str], None]) -> None:
    sources = [n for n in nodes if n.name != node.name]
    if not sources:
        pytest.skip("single-host inventory: no other host to probe from")
    wrong, summary = [], []
    for source in sources:
        want = expected(source, node)
        got = tcp_probe(source, node.address, want)
        for port, states in sorted(want.items()):
            if got.get(port) not in states:
                wrong.append(
                    f"{source.name}->{node.name}:{port} {got.get(port, 'no result')} (want {'/'.join(sorted(states))})"
                )
        opened = sorted(p for p, s in got.items() if s == "open")
        summary.append(
            f"from {source.name}: open {opened or 'none'}, {sum(s == 'filtered' for s in got.values())} filtered"
        )
    assert not wrong, "; ".join(wrong)
    evidence(f"{node.address}: " + "; ".join(summary))


@pytest.mark.control("OST-FW-03")
def test_rules_persisted(node: Node, evidence: Callable[[str], None]) -> None:
    for name in ("rules.v4", "rules.v6"):
        text = node.check(f"cat /etc/iptables/{name}")
        policies = _policies(text)
        assert policies.get("INPUT") == "DROP" and policies.get("FORWARD") == "DROP", (
            f"/etc/iptables/{name}: {policies}"
        )
    enabled = node.run("systemctl is-enabled netfilter-persistent.service").stdout.strip()
    assert enabled == "enabled", f"netfilter-persistent.service is {enabled!r}: the rules are not loaded at boot"
    # The persisted rules are the running ones (no pending, unconfirmed change).
    running = node.check("iptables-save | grep -E '^-A' | sort").strip()
    saved = node.check("grep -E '^-A' /etc/iptables/rules.v4 | sort").strip()
    assert running == saved, "running IPv4 rules differ from /etc/iptables/rules.v4"
    evidence(
        f"rules.v4/v6 with DROP policies, {len(saved.splitlines())} IPv4 rules = running; netfilter-persistent enabled"
    )
