"""Sessiond role: the session daemon, installed from a wheelhouse built on the control node.

The control node runs ``pip wheel`` of this project into ``.ostiary/wheelhouse/<version>-<hash>``;
the hosts get that directory and install from it with ``pip --no-index`` (they need no access to a
package index). The daemon runs as a system user under a sandboxed systemd unit with its AppArmor
profile; its config is rendered from the inventory: store URLs point at the local Redis sockets on
a redis node, or at the redis node over TLS with a client certificate.
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import File
from pyinfra.facts.hardware import Cpus
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from deploys import common
from deploys.render import render

PROJECT_DIR: Final = Path(__file__).resolve().parent.parent
CONFIG_FILE: Final = f"{common.ETC_DIR}/sessiond.toml"
UNIT: Final = "ostiary-sessiond.service"
UNIT_FILE: Final = f"/etc/systemd/system/{UNIT}"
WHEELHOUSE_DIR: Final = "/opt/ostiary/wheelhouse"
FD_RESERVE: Final = 1024  # logs, key files, the interpreter's own descriptors

DEFAULTS: dict[str, Any] = {
    "sessiond_workers": 0,
    "sessiond_connections_per_worker": 4096,
    "sessiond_issuer": "https://sessions.example.internal",
    "sessiond_audience": ["api"],
    "sessiond_token_mode": "jwt",
    "sessiond_algorithm": "ES256",
    "sessiond_token_ttl": 900,
    "sessiond_idle_timeout": 1800,
    "sessiond_absolute_timeout": 43200,
    "sessiond_clock_skew": 60,
    "sessiond_store_timeout": 0.25,
    "sessiond_store_pool_size": 64,
    "sessiond_store_warm_connections": 4,
    "sessiond_latency_budget_ms": 5.0,
    "sessiond_cache_ttl": 2.0,
    "sessiond_cache_max_entries": 100000,
    "sessiond_clock_check": "timedatectl",
    "sessiond_clock_max_offset": 1.0,
    "sessiond_log_level": "info",
    "sessiond_drain_timeout": 10.0,
    "sessiond_socket_mode": "0660",
    "sessiond_port": common.SESSIOND_PORT,
    "sessiond_admin_listen": f"unix:{common.SESSIOND_ADMIN_SOCKET}",
    "sessiond_server_tls": True,
    "sessiond_oidc": {},
    "sessiond_clients": {},
    "sessiond_apparmor_profile": "ostiary-sessiond",
    "sessiond_allowed_networks": [],
    "sessiond_wheelhouse": ".ostiary/wheelhouse",
}

SETTINGS_DOC: dict[str, str] = {
    "sessiond_workers": "Daemon worker processes; 0 means one per CPU of the host.",
    "sessiond_connections_per_worker": "Client connections budgeted per worker; LimitNOFILE is sized "
    "from it, the workers and the store pools.",
    "sessiond_issuer": "Token issuer (iss), checked exactly on validation.",
    "sessiond_audience": "Token audiences (aud) the daemon issues for and accepts.",
    "sessiond_token_mode": "Token kind issued: 'jwt' or 'opaque'.",
    "sessiond_algorithm": "JWT signing algorithm: ES256, RS256, EdDSA or HS256.",
    "sessiond_token_ttl": "Seconds a token lives.",
    "sessiond_idle_timeout": "Opaque sessions: sliding inactivity limit in seconds (NIST AAL2: 1800).",
    "sessiond_absolute_timeout": "No session outlives this many seconds (NIST AAL2: 43200).",
    "sessiond_clock_skew": "Leeway in seconds for exp/nbf/iat (the daemon refuses more than 300).",
    "sessiond_store_timeout": "Seconds per store operation; slower answers fail closed with 503.",
    "sessiond_store_pool_size": "Redis connections per store and worker.",
    "sessiond_store_warm_connections": "Connections per store and worker opened at start-up, so that "
    "requests never wait for a connection to be set up (at most sessiond_store_pool_size).",
    "sessiond_latency_budget_ms": "Store P99 budget checked by 'ostiary doctor'.",
    "sessiond_cache_ttl": "Seconds a validation result is reused locally (0 disables, at most 5).",
    "sessiond_cache_max_entries": "Entries in the local validation cache.",
    "sessiond_clock_check": "How readiness checks clock sync: 'timedatectl' (kernel sync flag, "
    "works with chrony's cmdport 0), 'chrony' or 'none'.",
    "sessiond_clock_max_offset": "Largest clock offset in seconds still counted as synchronised.",
    "sessiond_log_level": "Daemon log level: debug, info, warning or error.",
    "sessiond_drain_timeout": "Seconds SIGTERM waits for in-flight requests.",
    "sessiond_socket_mode": "Mode of the daemon's unix sockets (group: the daemon's group).",
    "sessiond_port": "TCP port of the public API when gateways are on other hosts.",
    "sessiond_admin_listen": "Admin API address (unix:/path or 127.0.0.1:port); never public.",
    "sessiond_server_tls": "Serve the public API over mutual TLS when gateways are on other hosts.",
    "sessiond_oidc": "The daemon's [oidc] section (enabled, issuer, audience, jwks_url or "
    "jwks_file, algorithms); empty keeps OIDC exchange off.",
    "sessiond_clients": "RFC 7662/7009 clients: client id -> 'sha256:<hex of the secret>'.",
    "sessiond_apparmor_profile": "AppArmor profile named in the unit (AppArmorProfile=); '' omits it.",
    "sessiond_allowed_networks": "Extra addresses or CIDRs the daemon may talk to (IPAddressAllow=), "
    "e.g. an OIDC provider's JWKS host or a DNS resolver; gateways, redis nodes and loopback are "
    "always allowed.",
    "sessiond_wheelhouse": "Directory on the control node (relative to the project) where the wheelhouse is built.",
}


def workers(data: Any, cpus: int) -> int:
    configured = int(data.sessiond_workers)
    return configured if configured > 0 else max(1, cpus)


def limit_nofile(data: Any, cpus: int) -> int:
    """Every worker's clients, its two store pools and its revocation subscription, plus a reserve."""
    per_worker = int(data.sessiond_connections_per_worker) + 2 * int(data.sessiond_store_pool_size) + 1
    return workers(data, cpus) * per_worker + FD_RESERVE


def _redis_port(data: Any, instance: str) -> int:
    # The redis role's data, when the inventory sets it; else the shared default.
    ports = getattr(data, "redis_tls_ports", None) or {}
    return int(ports.get(instance, common.redis_tls_port(instance)))


def _store(data: Any, facts: Mapping[str, Any]) -> dict[str, Any]:
    """Store URLs: the local sockets on a redis node, else TLS to the first redis node."""
    store: dict[str, Any] = {}
    if common.GROUP_REDIS_NODES in facts["groups"]:
        for instance, key in (("sessions", "sessions_url"), ("revocations", "revocations_url")):
            store[key] = f"unix://{common.host_path(data, common.redis_socket(instance))}?db=0"
        tls = False
    else:
        nodes = list(facts["peers"].get(common.GROUP_REDIS_NODES, []))
        if not nodes:
            raise ValueError("a session node needs a host in the redis_nodes group")
        address = f"[{nodes[0]}]" if ":" in nodes[0] else nodes[0]
        for instance, key in (("sessions", "sessions_url"), ("revocations", "revocations_url")):
            store[key] = f"rediss://{address}:{_redis_port(data, instance)}/0"
        tls = True
    store.update(
        {
            "username": "sessiond",
            "password_file": common.host_path(data, common.SESSIOND_REDIS_PASSWORD_FILE),
            "timeout": float(data.sessiond_store_timeout),
            "pool_size": int(data.sessiond_store_pool_size),
            "warm_connections": int(data.sessiond_store_warm_connections),
            "latency_budget_ms": float(data.sessiond_latency_budget_ms),
        }
    )
    if tls:
        store["tls_ca_file"] = common.host_path(data, common.TLS_CA_CERT)
        store["tls_cert_file"] = common.host_path(data, common.SESSIOND_REDIS_CLIENT_CERT)
        store["tls_key_file"] = common.host_path(data, common.SESSIOND_REDIS_CLIENT_KEY)
    return store


def _server(data: Any, facts: Mapping[str, Any], cpus: int) -> dict[str, Any]:
    server_section: dict[str, Any] = {}
    if common.GROUP_GATEWAYS in facts["groups"]:
        server_section["listen"] = f"unix:{common.host_path(data, common.SESSIOND_SOCKET)}"
    else:
        address = str(getattr(data, common.PRIVATE_ADDRESS_KEY, "") or "")
        if not address:
            raise ValueError(f"a session node without a gateway needs '{common.PRIVATE_ADDRESS_KEY}'")
        host_part = f"[{address}]" if ":" in address else address
        server_section["listen"] = f"{host_part}:{int(data.sessiond_port)}"
        if data.sessiond_server_tls:
            # Gateways on other hosts must present a client certificate of the internal CA.
            server_section["tls_cert_file"] = common.host_path(data, common.SESSIOND_SERVER_CERT)
            server_section["tls_key_file"] = common.host_path(data, common.SESSIOND_SERVER_KEY)
            server_section["tls_client_ca_file"] = common.host_path(data, common.TLS_CA_CERT)
    admin = str(data.sessiond_admin_listen)
    if admin.startswith("unix:"):
        admin = "unix:" + common.host_path(data, admin[len("unix:") :])
    server_section.update(
        {
            "admin_listen": admin,
            "workers": workers(data, cpus),
            "socket_mode": str(data.sessiond_socket_mode),
            "drain_timeout": float(data.sessiond_drain_timeout),
        }
    )
    return server_section


def daemon_config(data: Any, facts: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The daemon's configuration as sections of keys (daemon-contract schema)."""
    cpus = int(facts["cpus"])
    config: dict[str, dict[str, Any]] = {
        "server": _server(data, facts, cpus),
        "tokens": {
            "issuer": str(data.sessiond_issuer),
            "audience": list(data.sessiond_audience),
            "mode": str(data.sessiond_token_mode),
            "algorithm": str(data.sessiond_algorithm),
            "ttl": int(data.sessiond_token_ttl),
            "idle_timeout": int(data.sessiond_idle_timeout),
            "absolute_timeout": int(data.sessiond_absolute_timeout),
            "clock_skew": int(data.sessiond_clock_skew),
        },
        "keys": {"dir": common.host_path(data, common.KEYS_DIR)},
        "store": _store(data, facts),
        "cache": {
            "ttl": float(data.sessiond_cache_ttl),
            "max_entries": int(data.sessiond_cache_max_entries),
        },
        "clock": {
            "check": str(data.sessiond_clock_check),
            "max_offset": float(data.sessiond_clock_max_offset),
        },
        "log": {
            "level": str(data.sessiond_log_level),
            "salt_file": common.host_path(data, common.SESSIOND_SECRET_FILE),
        },
    }
    if data.sessiond_oidc:
        config["oidc"] = dict(data.sessiond_oidc)
    if data.sessiond_clients:
        config["clients"] = dict(data.sessiond_clients)
    if int(data.sessiond_clock_skew) > 300:
        raise ValueError("sessiond_clock_skew must be at most 300 seconds (the daemon refuses more)")
    return config


def context(data: Any, facts: Mapping[str, Any]) -> dict[str, Any]:
    """Template context from host data and facts (``cpus``, ``groups``, ``peers``)."""
    cpus = int(facts["cpus"])
    peers = facts["peers"]
    remote_gateways = common.GROUP_GATEWAYS not in facts["groups"]
    remote_redis = common.GROUP_REDIS_NODES not in facts["groups"]
    allowed: list[str] = [str(a) for a in data.sessiond_allowed_networks]
    if remote_gateways:
        allowed += list(peers.get(common.GROUP_GATEWAYS, []))
    if remote_redis:
        allowed += list(peers.get(common.GROUP_REDIS_NODES, []))
    for address in allowed:
        try:
            ipaddress.ip_network(address, strict=False)
        except ValueError as exc:
            raise ValueError(
                f"IPAddressAllow= needs addresses: set '{common.PRIVATE_ADDRESS_KEY}' on every host "
                f"(got {address!r})"
            ) from exc
    store_units = [] if remote_redis else [f"ostiary-redis@{name}.service" for name in common.REDIS_INSTANCES]
    return {
        "config": daemon_config(data, facts),
        "user": common.SESSIOND_USER,
        "venv": common.host_path(data, common.VENV_DIR),
        "config_file": common.host_path(data, CONFIG_FILE),
        "etc_dir": common.host_path(data, common.ETC_DIR),
        "stop_timeout": int(float(data.sessiond_drain_timeout)) + 5,
        "limit_nofile": limit_nofile(data, cpus),
        "apparmor_profile": str(data.sessiond_apparmor_profile or ""),
        "allowed_addresses": sorted(set(allowed)),
        "store_units": store_units,
    }


def render_files(data: Any, facts: Mapping[str, Any]) -> dict[str, str]:
    """Every managed file of the role: path on the host (prefixed) -> rendered content."""
    ctx = context(data, facts)
    return {
        common.host_path(data, CONFIG_FILE): render("sessiond/sessiond.toml.j2", **ctx),
        common.host_path(data, UNIT_FILE): render("sessiond/ostiary-sessiond.service.j2", **ctx),
    }


def _source_digest() -> str:
    """A digest of everything that goes into the wheel: a changed source means a new wheelhouse."""
    digest = hashlib.sha256()
    for path in sorted([PROJECT_DIR / "pyproject.toml", *(PROJECT_DIR / "src").rglob("*.py")]):
        digest.update(str(path.relative_to(PROJECT_DIR)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def build_wheelhouse(data: Any) -> Path:
    """``pip wheel`` of the project and its dependencies, once per source digest (control node)."""
    from ostiary import __version__

    base = Path(str(data.sessiond_wheelhouse))
    if not base.is_absolute():
        base = PROJECT_DIR / base
    target = base / f"{__version__}-{_source_digest()}"
    stamp = target / ".complete"
    if not stamp.exists():
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            # async-timeout: redis-py needs it on Pythons before 3.11.3 (Debian 12 has 3.11.2), and pip
            # resolves markers for the control node's Python only.
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(target), str(PROJECT_DIR),
             "async-timeout>=4.0.3"],
            check=True,
            timeout=900,
        )
        stamp.write_text(__version__)
    return target


@deploy("Ostiary sessiond", data_defaults=DEFAULTS)
def sessiond() -> None:
    """The session daemon: wheelhouse, venv, user, config and sandboxed unit."""
    from deploys.keys import host_topology
    from ostiary import __version__

    data = host.data
    facts = {"cpus": host.get_fact(Cpus) or 1, **host_topology()}
    rendered = render_files(data, facts)
    wheelhouse = build_wheelhouse(data)

    apt.packages(name="Python for the daemon's venv", packages=["python3", "python3-venv"])
    server.group(name="Daemon group", group=common.SESSIOND_USER, system=True)
    server.user(  # noqa: S604 - the login shell of a system user, not shell=True
        name="Daemon system user",
        user=common.SESSIOND_USER,
        group=common.SESSIOND_USER,
        home="/nonexistent",
        shell="/usr/sbin/nologin",
        system=True,
        ensure_home=False,
    )
    files.directory(
        name="Ostiary config directory (traversable: Redis and nginx read their TLS files below it)",
        path=common.host_path(data, common.ETC_DIR),
        user="root",
        group="root",
        mode="0755",
    )
    synced = files.sync(
        name="Copy the wheelhouse",
        src=str(wheelhouse),
        dest=WHEELHOUSE_DIR,
        delete=True,
        exclude=[".complete"],
    )
    venv_python = f"{common.VENV_DIR}/bin/python"
    # bin/python is a symlink (the File fact is false for links): pyvenv.cfg marks a venv.
    if not host.get_fact(File, path=f"{common.VENV_DIR}/pyvenv.cfg"):
        server.shell(name="Create the daemon's venv", commands=[f"python3 -m venv {common.VENV_DIR}"])
        installed = True
    else:
        installed = False
    install = server.shell(
        name="Install the daemon from the wheelhouse (no index)",
        commands=[
            f"{venv_python} -m pip install --quiet --no-index --find-links {WHEELHOUSE_DIR} "
            f"--upgrade --force-reinstall ostiary=={__version__}"
        ],
        _if=(lambda: True) if installed else synced.did_change,
    )
    config_op = files.put(
        name="Daemon config",
        src=io.StringIO(rendered[common.host_path(data, CONFIG_FILE)]),
        dest=common.host_path(data, CONFIG_FILE),
        user="root",
        group=common.SESSIOND_USER,
        mode="0640",
    )
    unit_op = files.put(
        name="Daemon unit",
        src=io.StringIO(rendered[common.host_path(data, UNIT_FILE)]),
        dest=common.host_path(data, UNIT_FILE),
        user="root",
        group="root",
        mode="0644",
    )
    systemd.daemon_reload(name="Reload systemd: the daemon's unit changed", _if=unit_op.did_change)
    systemd.service(
        name="Restart the daemon: unit, code or config changed",
        service=UNIT,
        restarted=True,
        _if=any_changed(unit_op, install, config_op),
    )
    systemd.service(name="Daemon enabled and running", service=UNIT, running=True, enabled=True)
