"""The control catalogue: every compliance check has a stable ID, a title, a reference and a reason.

Tests name their control with ``@pytest.mark.control("OST-REDIS-03")``; the report plugin in
``conftest.py`` groups results by host and control and prints the reference beside each one.
``docs/compliance.md`` is this table in prose; ``python -m compliance.controls`` (run from
``tests/``) prints it as Markdown so the two can be compared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# The sources a control can cite.
SEED: Final = "Ostiary seed"
MOZILLA_MODERN: Final = "Mozilla Server Side TLS, modern"
NIST_63B: Final = "NIST SP 800-63B"
RFC_8725: Final = "RFC 8725 (JWT BCP)"
CIS: Final = "CIS-style host hardening"


@dataclass(frozen=True)
class Control:
    id: str
    title: str
    reference: str
    rationale: str
    role: str  # the inventory group whose hosts the control applies to, or "all"


_CATALOGUE: Final = (
    # base: every host
    Control("OST-BASE-01", "Network sysctls: reverse-path filter, no redirects or source routing, SYN cookies",
            CIS, "A host on a shared network must not be steered by forged routes or flooded with half-open "
            "connections.", "all"),
    Control("OST-BASE-02", "Kernel sysctls: kptr_restrict, dmesg_restrict, ptrace_scope, no unprivileged BPF",
            CIS, "Kernel addresses, logs, other processes' memory and BPF are the first tools of a local "
            "exploit.", "all"),
    Control("OST-BASE-03", "Memory settings for Redis: overcommit_memory=1, transparent huge pages off",
            SEED, "Redis forks for snapshots; without overcommit the fork fails and THP adds latency spikes.",
            "all"),
    Control("OST-BASE-04", "sshd: public keys only, no passwords, root without password",
            CIS, "Passwords can be guessed over the network; keys cannot.", "all"),
    Control("OST-BASE-05", "sshd: modern ciphers, key exchanges and MACs only",
            MOZILLA_MODERN, "Legacy SSH algorithms (CBC, SHA-1, DH group 1) are breakable or downgradable.",
            "all"),
    Control("OST-BASE-06", "Persistent journal", CIS,
            "Evidence of an incident must survive the reboot that often follows it.", "all"),
    Control("OST-BASE-07", "OpenSSL 3.0 or later", SEED,
            "TLS 1.3 only, ECDSA and the cipher suites of the seed need OpenSSL 3.", "all"),
    Control("OST-BASE-08", "Kernel entropy pool ready", SEED,
            "Session identifiers and keys come from the kernel's random generator; it must be seeded.",
            "all"),
    Control("OST-BASE-09", "No core dumps: hard limit 0 for logins and the bundle's services, suid_dumpable 0",
            CIS, "The daemon's and Redis' memory holds keys, tokens and sessions; a core file would write them "
            "to disk.", "all"),
    Control("OST-BASE-10", "Protocols the stack never uses (dccp, sctp, rds, tipc) cannot be loaded",
            CIS, "Rarely used protocol modules load on demand from an unprivileged socket() call and have had "
            "remotely reachable kernel bugs.", "all"),
    # chrony: every host
    Control("OST-TIME-01", "chrony active and enabled", SEED,
            "Token expiry, nbf and revocation ordering all compare clocks across hosts.", "all"),
    Control("OST-TIME-02", "Clock synchronised: leap status normal, offset within bounds", RFC_8725,
            "A clock that is off makes valid tokens fail (or expired tokens pass) beyond the allowed skew.",
            "all"),
    Control("OST-TIME-03", "chrony: no network command port, step only at boot, RTC kept in sync", CIS,
            "A remote chronyc could step the clock; steps after boot hide attacks inside the skew window.",
            "all"),
    # redis: redis nodes
    Control("OST-REDIS-01", "Both Redis instances active and enabled", SEED,
            "The session store and the revocation store must survive a reboot.", "redis_nodes"),
    Control("OST-REDIS-02", "The daemon's user works over mutual TLS on ost:* keys", SEED,
            "What the daemon needs must work exactly as it will use it: TLS, client certificate, ACL user.",
            "redis_nodes"),
    Control("OST-REDIS-03", "The daemon's user cannot run dangerous commands or touch other keys", SEED,
            "A stolen daemon credential must not be able to wipe, reconfigure or enumerate a store.",
            "redis_nodes"),
    Control("OST-REDIS-04", "No anonymous access: the default user is off", CIS,
            "Unauthenticated Redis is the most exploited Redis misconfiguration.", "redis_nodes"),
    Control("OST-REDIS-05", "Mutual TLS: a client without a certificate is refused", SEED,
            "Only hosts holding a certificate of the internal CA may talk to the stores.", "redis_nodes"),
    Control("OST-REDIS-06", "Eviction policy: sessions allkeys-lru, revocations noeviction", SEED,
            "A full session store may forget sessions (users log in again); a revocation store must never "
            "forget a revocation.", "redis_nodes"),
    Control("OST-REDIS-07", "Persistence: AOF on both (everysec / always) and RDB snapshots of sessions",
            SEED, "Sessions and, above all, revocations must survive a restart.", "redis_nodes"),
    Control("OST-REDIS-08", "No plaintext Redis port reachable from another host", SEED,
            "Plaintext Redis exposes passwords and session records on the wire.", "redis_nodes"),
    Control("OST-REDIS-09", "Local unix sockets: mode 0770, group of the daemon; protected mode on", CIS,
            "Only the daemon's group may use the local sockets.", "redis_nodes"),
    # gateway: gateways, probed from another host
    Control("OST-GW-01", "TLS 1.3 handshake succeeds from another host", MOZILLA_MODERN,
            "Clients must be able to reach the gateway with the modern profile.", "gateways"),
    Control("OST-GW-02", "TLS 1.2 and older refused", MOZILLA_MODERN,
            "The modern profile is TLS 1.3 only: no downgrade to weaker handshakes.", "gateways"),
    Control("OST-GW-03", "Only the configured TLS 1.3 cipher suites are accepted", MOZILLA_MODERN,
            "The seed pins AES-256-GCM and ChaCha20-Poly1305.", "gateways"),
    Control("OST-GW-04", "Certificate ECDSA P-256, valid at most 90 days", MOZILLA_MODERN,
            "Short-lived ECDSA certificates limit the damage of a leaked key.", "gateways"),
    Control("OST-GW-05", "HSTS for two years and security headers; no version in Server", MOZILLA_MODERN,
            "Browsers must never fall back to HTTP; responses must not be framed, sniffed or leak referrers.",
            "gateways"),
    Control("OST-GW-06", "Requests without a valid-looking token refused with the fault code", RFC_8725,
            "Protected content is never served without a validated session; malformed tokens stop at nginx.",
            "gateways"),
    Control("OST-GW-07", "nginx active and enabled", SEED, "The gateway must survive a reboot.", "gateways"),
    # apparmor: every host, profiles by role
    Control("OST-AA-01", "AppArmor profiles loaded in enforce mode", CIS,
            "A compromised service is confined to its own files.", "all"),
    Control("OST-AA-02", "The running services are confined by their profiles", CIS,
            "A loaded profile protects nothing unless the process runs under it.", "all"),
    Control("OST-AA-03", "A forbidden action is denied (the profile stops reading /etc/shadow)", CIS,
            "Proves enforcement by behaviour, not only by status output.", "all"),
    Control("OST-AA-04", "No AppArmor denials logged by the services", SEED,
            "Denials during normal operation mean a profile breaks the service or something probes it.",
            "all"),
    # firewall: every host
    Control("OST-FW-01", "Default DROP on INPUT and FORWARD (IPv4 and IPv6)", CIS,
            "Only what the inventory allows is reachable.", "all"),
    Control("OST-FW-02", "Reachability matrix over the private network: allowed ports open, others filtered",
            CIS, "Each tier is reachable only from the tier that needs it.", "all"),
    Control("OST-FW-03", "Rules persisted for the next boot", CIS,
            "A reboot must not come up with an open firewall.", "all"),
    # keys: every host, files by role
    Control("OST-KEY-01", "Private keys and secrets: owner and mode 0600", CIS,
            "A key readable by another user is a key anyone on the host can steal.", "all"),
    Control("OST-KEY-02", "JWT private keys match the published JWKS", RFC_8725,
            "A mismatch makes every token fail as SIG_MISMATCH (the seed's troubleshooting case).",
            "session_nodes"),
    Control("OST-KEY-03", "TLS certificates match their private keys and chain to the internal CA", SEED,
            "A mismatched or foreign certificate breaks mutual TLS at the next restart.", "all"),
    Control("OST-KEY-04", "Certificates valid for at least 14 more days", SEED,
            "Renewal happens at 30 days; 14 left means renewal has failed and must be looked at now.", "all"),
    # sessiond: session nodes
    Control("OST-SESS-01", "Daemon active and enabled, running as its own user", SEED,
            "The daemon must survive a reboot and never run as root.", "session_nodes"),
    Control("OST-SESS-02", "Daemon unit sandboxed (systemd exposure 2.0 or lower)", CIS,
            "A compromised daemon reaches no devices, capabilities or other files.", "session_nodes"),
    Control("OST-SESS-03", "Session lifetimes within NIST AAL2 and clock skew at most 300 s", NIST_63B,
            "Reauthentication at least every 12 h, idle timeout at most 30 min; skew beyond 300 s lets "
            "expired tokens pass.", "session_nodes"),
    Control("OST-SESS-04", "ostiary doctor passes on the node", SEED,
            "Clock, entropy, keys, certificates and both stores checked from the daemon's own view.",
            "session_nodes"),
)  # fmt: skip

CONTROLS: Final[dict[str, Control]] = {c.id: c for c in _CATALOGUE}


def markdown_table() -> str:
    """The catalogue as a Markdown table (docs/compliance.md carries the same rows)."""
    lines = ["| ID | Title | Applies to | Reference | Rationale |", "|---|---|---|---|---|"]
    for c in _CATALOGUE:
        lines.append(f"| {c.id} | {c.title} | {c.role} | {c.reference} | {c.rationale} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
