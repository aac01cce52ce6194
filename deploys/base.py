"""Base role: kernel and network sysctls, THP off, hardened sshd, persistent journald, host checks.

The sshd drop-in is guarded: before it is uploaded, the deploy checks that the user and key
pyinfra is connected with, and the client's algorithms, still get in under the new settings.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.server import AuthorizedKeys, Command
from pyinfra.operations import files, server, systemd

from deploys import common
from deploys.render import render

SYSCTL_FILE: Final = "/etc/sysctl.d/90-ostiary.conf"
THP_TMPFILES: Final = "/etc/tmpfiles.d/ostiary-thp.conf"
# "00-" so that it wins: sshd keeps the first value it reads, and Debian includes the drop-in
# directory at the top of sshd_config (cloud images add 50-cloud-init.conf there).
SSHD_DROPIN: Final = "/etc/ssh/sshd_config.d/00-ostiary.conf"
JOURNALD_DROPIN: Final = "/etc/systemd/journald.conf.d/ostiary.conf"
JOURNAL_DIR: Final = "/var/log/journal"
MODPROBE_FILE: Final = "/etc/modprobe.d/ostiary-protocols.conf"
CORE_LIMITS_FILE: Final = "/etc/security/limits.d/ostiary-no-core.conf"
# A kernel module name, as each disabled_protocols entry lands in a modprobe.d line.
PROTOCOL_NAME: Final = re.compile(r"^[a-z0-9_]{1,32}$")

# Keys that exist only when the kernel was built with a feature. The file marks them with sysctl.d's
# "-" prefix (a missing key is not an error): Debian's kernels have them all.
KERNEL_CONFIG_DEPENDENT: Final = {
    "kernel.yama.ptrace_scope": "needs CONFIG_SECURITY_YAMA (Debian kernels: yes)",
    "kernel.sysrq": "needs CONFIG_MAGIC_SYSRQ (Debian kernels: yes)",
    "kernel.unprivileged_bpf_disabled": "needs CONFIG_BPF_SYSCALL (Debian kernels: yes)",
    "net.core.bpf_jit_harden": "needs CONFIG_BPF_JIT (Debian kernels: yes)",
}

DEFAULTS: dict[str, Any] = {
    "sysctl_rp_filter": 1,
    "sysctl_somaxconn": 4096,
    "sysctl_tcp_max_syn_backlog": 4096,
    "sysctl_ptrace_scope": 2,
    "sysctl_extra": {},
    "thp_disabled": True,
    # Protocols a session-layer host never speaks; each has had remotely reachable kernel bugs.
    "disabled_protocols": ["dccp", "sctp", "rds", "tipc"],
    "core_dumps_disabled": True,
    "ssh_permit_root_login": "prohibit-password",
    "ssh_allow_users": [],
    "ssh_ciphers": [
        "chacha20-poly1305@openssh.com",
        "aes256-gcm@openssh.com",
        "aes128-gcm@openssh.com",
        "aes256-ctr",
        "aes192-ctr",
        "aes128-ctr",
    ],
    "ssh_kex_algorithms": [
        "sntrup761x25519-sha512@openssh.com",
        "curve25519-sha256",
        "curve25519-sha256@libssh.org",
        "diffie-hellman-group16-sha512",
        "diffie-hellman-group18-sha512",
    ],
    "ssh_macs": [
        "hmac-sha2-512-etm@openssh.com",
        "hmac-sha2-256-etm@openssh.com",
        "umac-128-etm@openssh.com",
    ],
    "ssh_host_key_algorithms": [
        "ssh-ed25519",
        "ecdsa-sha2-nistp256",
        "rsa-sha2-512",
        "rsa-sha2-256",
    ],
    "ssh_pubkey_algorithms": [
        "ssh-ed25519",
        "sk-ssh-ed25519@openssh.com",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ecdsa-sha2-nistp256@openssh.com",
        "rsa-sha2-512",
        "rsa-sha2-256",
    ],
    "ssh_max_auth_tries": 3,
    "ssh_login_grace_time": 30,
    "ssh_client_alive_interval": 300,
    "ssh_client_alive_count_max": 2,
    "ssh_allow_tcp_forwarding": False,
    "ssh_lockout_guard": True,
    "journald_system_max_use": "1G",
    "journald_max_retention": "90day",
    "openssl_min_version": "3.0",
    "entropy_min_bits": 256,
}

SETTINGS_DOC: dict[str, str] = {
    "sysctl_rp_filter": "Reverse-path filter: 1 strict (default), 2 loose (multi-homed hosts with asymmetric routes).",
    "sysctl_somaxconn": "net.core.somaxconn: listen backlog ceiling for nginx, the daemon and Redis.",
    "sysctl_tcp_max_syn_backlog": "net.ipv4.tcp_max_syn_backlog: half-open connections kept per listener.",
    "sysctl_ptrace_scope": "kernel.yama.ptrace_scope: 2 = only root may ptrace (1 = parents only, 3 = nobody).",
    "sysctl_extra": "Extra sysctls {key: value} appended to the file (override the above by key).",
    "thp_disabled": "Turn transparent huge pages off at boot (Redis latency and fork memory).",
    "disabled_protocols": "Kernel protocol modules that can never be loaded (modprobe.d 'install ... "
    "/bin/false' and 'blacklist'); empty = leave module loading alone.",
    "core_dumps_disabled": "No core dumps: a hard core-size limit of 0 for every login (limits.d), on top of "
    "fs.suid_dumpable=0; the daemon's, Redis' and nginx's units set LimitCORE=0 themselves. Memory of the "
    "daemon holds keys and tokens.",
    "ssh_permit_root_login": "sshd PermitRootLogin: prohibit-password (keys only) or no.",
    "ssh_allow_users": "sshd AllowUsers; empty = no restriction beyond keys-only login.",
    "ssh_ciphers": "sshd Ciphers, most preferred first (keep one pyinfra's client speaks).",
    "ssh_kex_algorithms": "sshd KexAlgorithms, most preferred first.",
    "ssh_macs": "sshd MACs (encrypt-then-MAC only).",
    "ssh_host_key_algorithms": "sshd HostKeyAlgorithms offered to clients.",
    "ssh_pubkey_algorithms": "sshd PubkeyAcceptedAlgorithms for user keys (no SHA-1 ssh-rsa, no DSA).",
    "ssh_max_auth_tries": "sshd MaxAuthTries: authentication attempts per connection.",
    "ssh_login_grace_time": "sshd LoginGraceTime: seconds a client has to log in.",
    "ssh_client_alive_interval": "sshd ClientAliveInterval: seconds between keep-alive probes.",
    "ssh_client_alive_count_max": "sshd ClientAliveCountMax: unanswered probes before disconnecting.",
    "ssh_allow_tcp_forwarding": "sshd AllowTcpForwarding (off unless you tunnel through the host).",
    "ssh_lockout_guard": "Refuse to apply the sshd settings if they would lock out the user, key or "
    "client pyinfra is connected with. Turn off only if logins use keys from elsewhere than "
    "~/.ssh/authorized_keys (certificates, AuthorizedKeysCommand).",
    "journald_system_max_use": "journald SystemMaxUse: disk the persistent journal may take.",
    "journald_max_retention": "journald MaxRetentionSec: oldest entries kept.",
    "openssl_min_version": "Fail the deploy if the host's OpenSSL is older than this.",
    "entropy_min_bits": "Fail the deploy if the kernel's entropy estimate is below this many bits.",
}


def sysctls(data: Any) -> dict[str, str]:
    """Every sysctl the base role sets, key -> value (strings, as in sysctl.d)."""
    values: dict[str, Any] = {
        # network: no spoofed sources, no redirects or source routes, SYN flood resistance
        "net.ipv4.conf.all.rp_filter": data.sysctl_rp_filter,
        "net.ipv4.conf.default.rp_filter": data.sysctl_rp_filter,
        "net.ipv4.conf.all.accept_redirects": 0,
        "net.ipv4.conf.default.accept_redirects": 0,
        "net.ipv4.conf.all.secure_redirects": 0,
        "net.ipv4.conf.default.secure_redirects": 0,
        "net.ipv4.conf.all.send_redirects": 0,
        "net.ipv4.conf.default.send_redirects": 0,
        "net.ipv6.conf.all.accept_redirects": 0,
        "net.ipv6.conf.default.accept_redirects": 0,
        "net.ipv4.conf.all.accept_source_route": 0,
        "net.ipv4.conf.default.accept_source_route": 0,
        "net.ipv6.conf.all.accept_source_route": 0,
        "net.ipv6.conf.default.accept_source_route": 0,
        "net.ipv4.conf.all.log_martians": 1,
        "net.ipv4.conf.default.log_martians": 1,
        "net.ipv4.icmp_echo_ignore_broadcasts": 1,
        "net.ipv4.icmp_ignore_bogus_error_responses": 1,
        "net.ipv4.tcp_syncookies": 1,
        "net.ipv4.tcp_rfc1337": 1,
        "net.ipv4.tcp_max_syn_backlog": data.sysctl_tcp_max_syn_backlog,
        "net.core.somaxconn": data.sysctl_somaxconn,
        "net.ipv4.ip_forward": 0,
        "net.ipv6.conf.all.forwarding": 0,
        "net.core.bpf_jit_harden": 2,
        # kernel: hide kernel pointers and logs, restrict ptrace and unprivileged BPF
        "kernel.kptr_restrict": 2,
        "kernel.dmesg_restrict": 1,
        "kernel.yama.ptrace_scope": data.sysctl_ptrace_scope,
        "kernel.unprivileged_bpf_disabled": 1,
        "kernel.randomize_va_space": 2,
        "kernel.sysrq": 0,
        "kernel.perf_event_paranoid": 3,
        "fs.protected_hardlinks": 1,
        "fs.protected_symlinks": 1,
        "fs.protected_fifos": 2,
        "fs.protected_regular": 2,
        "fs.suid_dumpable": 0,
        # no automatic loading of TTY line disciplines by unprivileged users (a classic local exploit path)
        "dev.tty.ldisc_autoload": 0,
        # Redis forks for RDB/AOF rewrites; without overcommit a fork can fail on a full host
        "vm.overcommit_memory": 1,
    }
    values.update(dict(data.sysctl_extra))
    return {key: str(value) for key, value in values.items()}


# ------------------------------------------------------------------------------ sshd lock-out guard

# The user-key types sshd checks against PubkeyAcceptedAlgorithms: RSA keys sign with rsa-sha2-*.
_KEY_TYPE_ALGORITHMS: Final = {
    "ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"),
    "ssh-ed25519": ("ssh-ed25519",),
    "sk-ssh-ed25519@openssh.com": ("sk-ssh-ed25519@openssh.com",),
    "ecdsa-sha2-nistp256": ("ecdsa-sha2-nistp256",),
    "ecdsa-sha2-nistp384": ("ecdsa-sha2-nistp384",),
    "ecdsa-sha2-nistp521": ("ecdsa-sha2-nistp521",),
    "sk-ecdsa-sha2-nistp256@openssh.com": ("sk-ecdsa-sha2-nistp256@openssh.com",),
    "ssh-dss": ("ssh-dss",),
}
# The two names OpenSSH uses for one key exchange; a client offering either one gets in.
_KEX_ALIASES: Final = {"curve25519-sha256": "curve25519-sha256@libssh.org"}


def key_types(authorized_keys: Iterable[str]) -> list[str]:
    """The key type of each authorized_keys line (options such as from="..." may precede it)."""
    types = []
    for line in authorized_keys:
        for token in line.split():
            if token in _KEY_TYPE_ALGORITHMS or token.endswith("-cert-v01@openssh.com"):
                types.append(token.replace("-cert-v01@openssh.com", ""))
                break
    return types


def _kex_names(names: Iterable[str]) -> set[str]:
    return {_KEX_ALIASES.get(n, n) for n in names}


def sshd_lockout_problems(
    data: Any,
    login_user: str,
    authorized_keys: Sequence[str],
    client_algorithms: Mapping[str, Sequence[str]] | None,
) -> list[str]:
    """Why the rendered sshd settings would lock out the current connection; empty if they would not.

    ``client_algorithms`` (ciphers, kex, macs, keys) is what the control node's SSH client offers;
    None when unknown (for example a non-SSH connector), which skips that part of the check.
    """
    problems = []
    accepted = set(data.ssh_pubkey_algorithms)
    usable = [t for t in key_types(authorized_keys) if accepted & set(_KEY_TYPE_ALGORITHMS.get(t, ()))]
    if not authorized_keys:
        problems.append(f"{login_user} has no authorized_keys: password login is about to be turned off")
    elif not usable:
        problems.append(
            f"none of {login_user}'s authorized keys ({', '.join(key_types(authorized_keys)) or 'unknown'}) "
            "is of a type in ssh_pubkey_algorithms"
        )
    if login_user == "root" and data.ssh_permit_root_login == "no":
        problems.append("connected as root but ssh_permit_root_login is 'no'")
    if data.ssh_allow_users and login_user not in data.ssh_allow_users:
        problems.append(f"{login_user} is not in ssh_allow_users")
    if client_algorithms is not None:
        pairs = {
            "ciphers": set(data.ssh_ciphers),
            "macs": set(data.ssh_macs),
            "keys": set(data.ssh_host_key_algorithms),
        }
        for kind, offered in pairs.items():
            if not offered & set(client_algorithms[kind]):
                problems.append(f"the SSH client shares no {kind} with the new sshd settings")
        if not _kex_names(data.ssh_kex_algorithms) & _kex_names(client_algorithms["kex"]):
            problems.append("the SSH client shares no key exchange with the new sshd settings")
    return problems


def paramiko_algorithms() -> dict[str, Sequence[str]]:
    """What pyinfra's SSH client (paramiko) offers, read from its transport defaults."""
    import paramiko

    transport = paramiko.Transport
    return {
        "ciphers": transport._preferred_ciphers,
        "kex": transport._preferred_kex,
        "macs": transport._preferred_macs,
        "keys": transport._preferred_keys,
    }


# ------------------------------------------------------------------------------ host checks


def openssl_problem(data: Any, version_output: str) -> str | None:
    """``openssl version`` output -> a message if it is missing or older than the minimum."""
    match = re.search(r"OpenSSL (\d+)\.(\d+)\.(\d+)", version_output)
    if not match:
        return f"cannot read the OpenSSL version from {version_output!r}"
    found = (int(match.group(1)), int(match.group(2)))
    want = tuple(int(p) for p in str(data.openssl_min_version).split(".")[:2])
    if found < want:
        return f"OpenSSL {match.group(0)[8:]} is older than the required {data.openssl_min_version}"
    return None


def entropy_problem(data: Any, entropy_avail: str) -> str | None:
    """The kernel's entropy estimate -> a message if the random pool looks starved."""
    try:
        bits = int(entropy_avail.strip())
    except ValueError:
        return f"cannot read /proc/sys/kernel/random/entropy_avail ({entropy_avail!r})"
    if bits < int(data.entropy_min_bits):
        return (
            f"kernel entropy estimate is {bits} bits (< {data.entropy_min_bits}): the random pool is not "
            "ready; a virtio-rng device or a newer kernel fixes it"
        )
    return None


# ------------------------------------------------------------------------------ rendering


def context(data: Any, facts: Mapping[str, Any]) -> dict[str, Any]:
    """Template context. The base role needs no facts to render; checks take theirs separately."""
    del facts
    return {
        "sysctls": sysctls(data),
        "optional_sysctls": set(KERNEL_CONFIG_DEPENDENT),
        "thp_disabled": bool(data.thp_disabled),
        "permit_root_login": str(data.ssh_permit_root_login),
        "allow_users": list(data.ssh_allow_users),
        "ciphers": ",".join(data.ssh_ciphers),
        "kex": ",".join(data.ssh_kex_algorithms),
        "macs": ",".join(data.ssh_macs),
        "host_key_algorithms": ",".join(data.ssh_host_key_algorithms),
        "pubkey_algorithms": ",".join(data.ssh_pubkey_algorithms),
        "max_auth_tries": int(data.ssh_max_auth_tries),
        "login_grace_time": int(data.ssh_login_grace_time),
        "client_alive_interval": int(data.ssh_client_alive_interval),
        "client_alive_count_max": int(data.ssh_client_alive_count_max),
        "allow_tcp_forwarding": "yes" if data.ssh_allow_tcp_forwarding else "no",
        "journald_system_max_use": str(data.journald_system_max_use),
        "journald_max_retention": str(data.journald_max_retention),
        "disabled_protocols": disabled_protocols(data),
    }


def disabled_protocols(data: Any) -> list[str]:
    """The protocol modules to lock out, validated (each name lands in a modprobe.d line)."""
    names = [str(name) for name in data.disabled_protocols]
    bad = [name for name in names if not PROTOCOL_NAME.match(name)]
    if bad:
        raise DeployError(f"disabled_protocols: not a kernel module name: {bad}")
    return names


def render_files(data: Any, facts: Mapping[str, Any]) -> dict[str, str]:
    ctx = context(data, facts)
    files_ = {
        common.host_path(data, SYSCTL_FILE): render("base/sysctl.conf.j2", **ctx),
        common.host_path(data, SSHD_DROPIN): render("base/sshd_hardening.conf.j2", **ctx),
        common.host_path(data, JOURNALD_DROPIN): render("base/journald.conf.j2", **ctx),
    }
    if ctx["thp_disabled"]:
        files_[common.host_path(data, THP_TMPFILES)] = render("base/thp.tmpfiles.j2", **ctx)
    if ctx["disabled_protocols"]:
        files_[common.host_path(data, MODPROBE_FILE)] = render("base/modprobe-protocols.conf.j2", **ctx)
    if data.core_dumps_disabled:
        files_[common.host_path(data, CORE_LIMITS_FILE)] = render("base/limits-no-core.conf.j2", **ctx)
    return files_


# ------------------------------------------------------------------------------ deploy


def _client_algorithms() -> Mapping[str, Sequence[str]] | None:
    """The control node's SSH client algorithms, when pyinfra connects with paramiko."""
    connector = type(host.connector).__name__
    return paramiko_algorithms() if connector == "SSHConnector" else None


def _check_host(data: Any) -> None:
    """OpenSSL and entropy: a clear failure now beats a daemon that cannot start later."""
    problems = [
        openssl_problem(data, host.get_fact(Command, "openssl version 2>&1 || true") or ""),
        entropy_problem(data, host.get_fact(Command, "cat /proc/sys/kernel/random/entropy_avail") or ""),
    ]
    found = [p for p in problems if p]
    if found:
        raise DeployError(f"{host.name}: " + "; ".join(found))


def _check_sshd_guard(data: Any) -> None:
    if not data.ssh_lockout_guard:
        host.noop("sshd lock-out guard disabled by ssh_lockout_guard")
        return
    if type(host.connector).__name__ == "LocalConnector":
        host.noop("sshd lock-out guard: not connected over SSH")
        return
    # Without sudo: the user that logged in, not the one sudo switches to.
    login_user = (host.get_fact(Command, "id -un", _sudo=False) or "").strip()
    keys = host.get_fact(AuthorizedKeys, user=login_user, _sudo=False)
    problems = sshd_lockout_problems(data, login_user, keys, _client_algorithms())
    if problems:
        raise DeployError(f"{host.name}: refusing to apply the sshd settings: " + "; ".join(problems))


@deploy("Ostiary base", data_defaults=DEFAULTS)
def base() -> None:
    """Host hardening every node gets first: sysctls, THP, sshd, journald, and host checks."""
    data = host.data
    _check_host(data)
    _check_sshd_guard(data)
    rendered = render_files(data, {})

    sysctl_op = files.put(
        name="Kernel and network sysctls",
        src=io.StringIO(rendered[common.host_path(data, SYSCTL_FILE)]),
        dest=common.host_path(data, SYSCTL_FILE),
        user="root",
        group="root",
        mode="0644",
    )
    # systemd-sysctl honours the "-" prefix of kernel-dependent keys; procps' sysctl -p does not.
    server.shell(
        name="Apply the sysctls",
        commands=[f"/lib/systemd/systemd-sysctl {common.host_path(data, SYSCTL_FILE)}"],
        _if=sysctl_op.did_change,
    )

    thp_path = common.host_path(data, THP_TMPFILES)
    if thp_path in rendered:
        thp_op = files.put(
            name="Transparent huge pages off at boot",
            src=io.StringIO(rendered[thp_path]),
            dest=thp_path,
            user="root",
            group="root",
            mode="0644",
        )
        server.shell(
            name="Turn transparent huge pages off now",
            commands=[f"systemd-tmpfiles --create {thp_path}"],
            _if=thp_op.did_change,
        )

    # Files that exist only while their setting is on; turning it off removes them again.
    for path, name in (
        (MODPROBE_FILE, "Protocol modules that may never load"),
        (CORE_LIMITS_FILE, "No core dumps for any login"),
    ):
        host_file = common.host_path(data, path)
        if host_file in rendered:
            files.put(name=name, src=io.StringIO(rendered[host_file]), dest=host_file, user="root", group="root",
                      mode="0644")  # fmt: skip
        else:
            files.file(name=f"{name}: off, file removed", path=host_file, present=False)

    sshd_path = common.host_path(data, SSHD_DROPIN)
    sshd_op = files.put(
        name="sshd: keys only, modern algorithms",
        src=io.StringIO(rendered[sshd_path]),
        dest=sshd_path,
        user="root",
        group="root",
        mode="0644",
    )
    # An invalid config is removed again rather than left for the next sshd restart to trip over.
    server.shell(
        name="Validate and reload sshd",
        commands=[f"sshd -t || {{ rm -f {sshd_path}; exit 1; }}", "systemctl reload ssh.service"],
        _if=sshd_op.did_change,
    )

    journald_path = common.host_path(data, JOURNALD_DROPIN)
    files.directory(
        name="Persistent journal directory",
        path=common.host_path(data, JOURNAL_DIR),
        user="root",
        group="systemd-journal",
        mode="2755",
    )
    journald_op = files.put(
        name="journald: persistent storage",
        src=io.StringIO(rendered[journald_path]),
        dest=journald_path,
        user="root",
        group="root",
        mode="0644",
    )
    systemd.service(
        name="Restart journald: its settings changed",
        service="systemd-journald.service",
        restarted=True,
        _if=journald_op.did_change,
    )
