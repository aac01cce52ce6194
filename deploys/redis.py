"""Redis role: the session store and the revocation store, two hardened instances per redis node.

Each instance has its own systemd unit (``ostiary-redis@<instance>``), config, data directory and
unix socket. Remote clients reach it only through mutual TLS on its ``tls-port`` (plain ``port 0``);
a daemon on the same host uses the unix socket (mode 0770, group of the daemon). The ACL file turns
the default user off and gives the daemon's user exactly the rule from ``ostiary.acl``.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.hardware import Memory
from pyinfra.facts.server import Command
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from deploys import common
from deploys.render import render

UNIT_TEMPLATE: Final = "ostiary-redis@.service"
SYSTEMD_DIR: Final = "/etc/systemd/system"
ACL_FILE: Final = f"{common.REDIS_CONF_DIR}/ostiary-users.acl"
REDIS_FD_RESERVE: Final = 32  # redis keeps this many descriptors for itself beyond maxclients
MiB: Final = 1024 * 1024

DEFAULTS: dict[str, Any] = {
    "redis_sessions_maxmemory_percent": 25,
    "redis_revocations_maxmemory_mb": 256,
    "redis_maxclients": 10000,
    "redis_tls_ports": {name: common.redis_tls_port(name) for name in common.REDIS_INSTANCES},
    "redis_tls_protocols": "TLSv1.3",
    "redis_sessions_save": "3600 1 300 100 60 10000",
    "redis_revocations_save": "",
    "redis_latency_monitor_threshold_ms": 5,
    "redis_slowlog_slower_than_us": 10000,
    "redis_tcp_backlog": 1024,
    "redis_admin_user": "ostiary-admin",
    "redis_socket_group": common.SESSIOND_USER,
    "redis_apparmor_profile": "ostiary-redis",
    "redis_disable_stock_service": True,
    "redis_expected_version": "7.0",
}

SETTINGS_DOC: dict[str, str] = {
    "redis_sessions_maxmemory_percent": "Session store maxmemory as a percentage of the host's RAM "
    "(25 gives 2 GB on an 8 GB host); least-recently-used sessions are evicted beyond it.",
    "redis_revocations_maxmemory_mb": "Revocation store maxmemory in MB; it never evicts "
    "(noeviction), so writes fail loudly instead of forgetting a revocation.",
    "redis_maxclients": "Maximum clients per instance; LimitNOFILE is set to this plus Redis' own reserve.",
    "redis_tls_ports": "TLS port of each instance (sessions, revocations); the firewall and the "
    "daemon's store URLs read the same values.",
    "redis_tls_protocols": "TLS protocol versions Redis accepts (space separated).",
    "redis_sessions_save": "RDB snapshot schedule of the session store (Redis 'save' syntax; '' disables).",
    "redis_revocations_save": "RDB snapshot schedule of the revocation store ('' = AOF only, fsync on every write).",
    "redis_latency_monitor_threshold_ms": "Redis latency monitor threshold in ms (events slower "
    "than this are recorded); matches the daemon's store latency budget.",
    "redis_slowlog_slower_than_us": "Commands slower than this many microseconds go to the slowlog.",
    "redis_tcp_backlog": "Listen backlog of the TLS ports (kept below net.core.somaxconn).",
    "redis_admin_user": "Name of the Redis admin ACL user (all commands; password in the control node's key store).",
    "redis_socket_group": "Group owning the unix sockets (mode 0770): the daemon's group.",
    "redis_apparmor_profile": "AppArmor profile named in the units (AppArmorProfile=); '' omits it.",
    "redis_expected_version": "Redis version assumed before redis-server is installed (Debian 12: "
    "7.0); decides which ACL commands the server knows. Once installed, the real version is read.",
    "redis_disable_stock_service": "Stop and disable Debian's redis-server.service, which "
    "would otherwise hold the session store's port.",
}

_POLICY: Final = {"sessions": "allkeys-lru", "revocations": "noeviction"}
_APPENDFSYNC: Final = {"sessions": "everysec", "revocations": "always"}


def password_sha256(password: str) -> str:
    """The ``#<hex>`` form Redis ACL files store instead of a clear password."""
    return hashlib.sha256(password.encode()).hexdigest()


# Commands of the daemon's ACL that older servers do not know, with the version that added them.
# Redis rejects a whole ACL file naming an unknown command; Debian 12 ships 7.0.
_COMMAND_SINCE: Final = {"client|setinfo": (7, 2)}


def acl_commands_unknown_to(version: tuple[int, int]) -> list[str]:
    """Commands of the daemon's ACL the given redis-server version does not have."""
    return [c for c, since in _COMMAND_SINCE.items() if version < since]


def sessiond_acl_line(password_hash: str, version: tuple[int, int]) -> str:
    """``ostiary.acl``'s rule for the daemon's user, minus commands this server does not know.

    Clients that send such a command (redis-py's CLIENT SETINFO) ignore the error it gets.
    """
    from ostiary import acl  # the daemon's ACL: one definition shared with the daemon's tests

    rule = acl.sessiond_acl_rule(password_hash)
    for command in acl_commands_unknown_to(version):
        rule = rule.replace(f" +{command}", "")
    return rule


def parse_redis_version(output: str) -> tuple[int, int] | None:
    """``redis-server --version`` output -> (major, minor)."""
    match = re.search(r"\bv=(\d+)\.(\d+)", output)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _bind_addresses(data: Any) -> list[str]:
    """Loopback (IPv6 optional, the ``-`` prefix) plus the private address, without duplicates."""
    addresses = ["127.0.0.1", "-::1"]
    private = str(getattr(data, common.PRIVATE_ADDRESS_KEY, "") or "")
    if private and private not in ("127.0.0.1", "::1"):
        addresses.append(private)
    return addresses


def maxmemory_bytes(data: Any, instance: str, memory_mb: int) -> int:
    """Sizing from facts: the session store takes a share of RAM, the revocation store a fixed size."""
    if instance == "sessions":
        percent = int(data.redis_sessions_maxmemory_percent)
        if not 1 <= percent <= 60:
            raise ValueError(f"redis_sessions_maxmemory_percent={percent}: must be between 1 and 60")
        return memory_mb * MiB * percent // 100
    return int(data.redis_revocations_maxmemory_mb) * MiB


def context(data: Any, facts: Mapping[str, Any], password_hashes: Mapping[str, str]) -> dict[str, Any]:
    """Template context from host data, facts and the ACL users' password hashes.

    ``facts``: ``memory_mb`` (RAM) and ``redis_version`` ((major, minor) of redis-server).

    ``password_hashes`` maps the daemon's user and the admin user to SHA-256 hex digests; the
    clear passwords never reach a template.
    """
    from ostiary import acl

    memory_mb = int(facts["memory_mb"])
    maxclients = int(data.redis_maxclients)
    instances = []
    for name in common.REDIS_INSTANCES:
        instances.append(
            {
                "name": name,
                "unit": f"ostiary-redis@{name}.service",
                "tls_port": int(data.redis_tls_ports[name]),
                "maxmemory": maxmemory_bytes(data, name, memory_mb),
                "maxmemory_policy": _POLICY[name],
                "appendfsync": _APPENDFSYNC[name],
                "save": str(getattr(data, f"redis_{name}_save")),
                "socket": common.host_path(data, common.redis_socket(name)),
                "data_dir": common.host_path(data, f"{common.REDIS_DATA_ROOT}/ostiary-{name}"),
            }
        )
    total = sum(i["maxmemory"] for i in instances)
    if total > memory_mb * MiB * 3 // 4:
        raise ValueError(
            f"the two Redis instances would take {total // MiB} MB of {memory_mb} MB RAM; "
            "lower redis_sessions_maxmemory_percent or redis_revocations_maxmemory_mb"
        )
    admin = str(data.redis_admin_user)
    missing = {acl.SESSIOND_USERNAME, admin} - set(password_hashes)
    if missing:
        raise ValueError(f"no password hash for Redis users {sorted(missing)}")
    return {
        "instances": instances,
        "bind": " ".join(_bind_addresses(data)),
        "maxclients": maxclients,
        "limit_nofile": maxclients + REDIS_FD_RESERVE,
        "tcp_backlog": int(data.redis_tcp_backlog),
        "tls_protocols": str(data.redis_tls_protocols),
        "tls_cert": common.host_path(data, common.REDIS_SERVER_CERT),
        "tls_key": common.host_path(data, common.REDIS_SERVER_KEY),
        "tls_ca": common.host_path(data, common.TLS_CA_CERT),
        "acl_file": common.host_path(data, ACL_FILE),
        "conf_dir": common.host_path(data, common.REDIS_CONF_DIR),
        "latency_threshold_ms": int(data.redis_latency_monitor_threshold_ms),
        "slowlog_us": int(data.redis_slowlog_slower_than_us),
        "socket_group": str(data.redis_socket_group),
        "redis_user": common.REDIS_USER,
        "apparmor_profile": str(data.redis_apparmor_profile or ""),
        "sessiond_acl": sessiond_acl_line(password_hashes[acl.SESSIOND_USERNAME], facts["redis_version"]),
        "admin_user": admin,
        "admin_hash": password_hashes[admin],
    }


def conf_path(data: Any, instance: str) -> str:
    return common.host_path(data, f"{common.REDIS_CONF_DIR}/ostiary-{instance}.conf")


def render_files(data: Any, facts: Mapping[str, Any], password_hashes: Mapping[str, str]) -> dict[str, str]:
    """Every managed file of the role: path on the host (prefixed) -> rendered content."""
    ctx = context(data, facts, password_hashes)
    unit_dir = common.host_path(data, SYSTEMD_DIR)
    files = {
        common.host_path(data, ACL_FILE): render("redis/users.acl.j2", **ctx),
        f"{unit_dir}/{UNIT_TEMPLATE}": render("redis/ostiary-redis@.service.j2", **ctx),
        f"{unit_dir}/{UNIT_TEMPLATE}.d/hardening.conf": render("redis/hardening.conf.j2", **ctx),
    }
    for instance in ctx["instances"]:
        name = instance["name"]
        files[conf_path(data, name)] = render("redis/redis.conf.j2", instance=instance, **ctx)
        files[f"{unit_dir}/{instance['unit']}.d/limits.conf"] = render("redis/limits.conf.j2", instance=instance, **ctx)
    return files


def _version_knob(data: Any) -> tuple[int, int]:
    major, minor = str(data.redis_expected_version).split(".")[:2]
    return int(major), int(minor)


def _keystore_password_hashes(data: Any, users: list[str]) -> dict[str, str]:
    """Passwords from the control node's key store (created on first use), as SHA-256 hashes."""
    from ostiary.keystore import ControlKeyStore, default_root

    root = str(getattr(data, "ostiary_keystore_dir", "") or "") or str(default_root())
    store = ControlKeyStore(Path(root), None)
    return {user: password_sha256(store.redis_password(user)) for user in users}


@deploy("Ostiary redis", data_defaults=DEFAULTS)
def redis() -> None:
    """Both Redis stores of a redis node: config, ACL, units; restarts only what changed."""
    from ostiary import acl

    data = host.data
    memory_mb = host.get_fact(Memory)
    if not memory_mb:
        raise DeployError(f"{host.name}: could not read the host's memory (vmstat -s)")
    hashes = _keystore_password_hashes(data, [acl.SESSIOND_USERNAME, str(data.redis_admin_user)])
    # Before the first install the binary is absent: assume the release's version (a knob).
    version = parse_redis_version(host.get_fact(Command, "redis-server --version || true") or "")
    facts = {"memory_mb": memory_mb, "redis_version": version or _version_knob(data)}
    rendered = render_files(data, facts, hashes)

    apt.packages(name="Install Redis 7 from Debian", packages=["redis-server"])
    if data.redis_disable_stock_service:
        # Debian's own instance listens on 6379, the session store's port.
        systemd.service(
            name="Stop and disable Debian's stock redis-server",
            service="redis-server.service",
            running=False,
            enabled=False,
        )
    server.group(name="Group of the Redis unix sockets", group=str(data.redis_socket_group), system=True)

    unit_dir = common.host_path(data, SYSTEMD_DIR)
    unit_ops: list[Any] = []
    instance_ops: dict[str, list[Any]] = {name: [] for name in common.REDIS_INSTANCES}
    for path, content in sorted(rendered.items()):
        is_unit = path.startswith(unit_dir)
        op = files.put(
            name=f"Redis: {path}",
            src=io.StringIO(content),
            dest=path,
            user="root",
            group="root" if is_unit else common.REDIS_USER,
            mode="0644" if is_unit else "0640",  # configs hold password hashes: not world-readable
        )
        owners = [n for n in common.REDIS_INSTANCES if f"ostiary-{n}." in path or f"@{n}." in path]
        for name in owners or common.REDIS_INSTANCES:  # shared files (ACL, template unit) touch both
            instance_ops[name].append(op)
        if is_unit:
            unit_ops.append(op)

    systemd.daemon_reload(name="Reload systemd: a Redis unit changed", _if=any_changed(*unit_ops))
    for name in common.REDIS_INSTANCES:
        unit = f"ostiary-redis@{name}.service"
        systemd.service(
            name=f"Restart {unit}: its config, ACL or unit changed",
            service=unit,
            restarted=True,
            _if=any_changed(*instance_ops[name]),
        )
        systemd.service(name=f"{unit} enabled and running", service=unit, running=True, enabled=True)
