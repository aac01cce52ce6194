"""Keys role: hand each host exactly the key material its roles need, from the control node's store.

The control node's :class:`ostiary.keystore.ControlKeyStore` (encrypted at rest, outside the
tracked files) creates and renews everything; this role decides who gets what:

- every host: the internal CA certificate;
- gateways: their server certificate and key; a client certificate when the daemon is remote;
- session nodes: the JWT key directory, the JWKS, the daemon's Redis password; a Redis client
  certificate when Redis is remote; a server certificate when gateways are remote;
- redis nodes: the Redis server certificate and key.

Private keys are mode 0600 and owned by the user of the service that reads them (nginx's master
reads its key as root before it drops privileges, so the gateway key stays root's). A renewed
certificate or a rotated JWT key reloads the service that uses it, without a restart.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pyinfra import host, inventory
from pyinfra.api import HiddenValue, deploy
from pyinfra.api.command import StringCommand
from pyinfra.operations import files, server
from pyinfra.operations.util import any_changed

from deploys import common

GROUPS: Final = (common.GROUP_GATEWAYS, common.GROUP_SESSION_NODES, common.GROUP_REDIS_NODES)
JWKS_FILE: Final = f"{common.ETC_DIR}/jwks.json"

DEFAULTS: dict[str, Any] = {
    "ostiary_keystore_dir": "",
    "keys_jwt_algorithm": "ES256",
    "keys_cert_days": 90,
    "keys_extra_sans": [],
    "redis_admin_user": "ostiary-admin",
}

SETTINGS_DOC: dict[str, str] = {
    "ostiary_keystore_dir": "Key store directory on the control node; '' means .ostiary/keystore in "
    "the project (git-ignored). Its passphrase comes from OSTIARY_KEYSTORE_PASSPHRASE.",
    "keys_jwt_algorithm": "Algorithm of the first JWT signing key (ES256, RS256, EdDSA, HS256); "
    "keep it equal to sessiond_algorithm.",
    "keys_cert_days": "Lifetime of internal TLS certificates (Redis, daemon, gateway client); "
    "renewed when fewer than 30 days remain.",
    "keys_extra_sans": "Extra subject alternative names for this host's server certificates.",
    "redis_admin_user": "Redis admin ACL user the role uses to make Redis re-read a renewed "
    "certificate (CONFIG SET over the local socket).",
}


@dataclass(frozen=True)
class KeyFile:
    """One file a host receives: where, what, who owns it, which service re-reads it."""

    path: str
    content: bytes
    owner: str
    mode: str
    reload: str  # "nginx", "sessiond", "redis" or "" (nothing to reload)


def host_topology() -> dict[str, Any]:
    """This host's groups and the private addresses of every group, from the pyinfra inventory."""

    def address(member: Any) -> str:
        return str(member.data.get(common.PRIVATE_ADDRESS_KEY) or member.name)

    return {
        "groups": [g for g in GROUPS if g in host.groups],
        "peers": {g: [address(m) for m in inventory.get_group(g, default=[])] for g in GROUPS},
    }


def cert_name(kind: str, host_name: str) -> str:
    """A key-store name per host and purpose (the store accepts [a-z0-9._-], 64 characters)."""
    safe = re.sub(r"[^a-z0-9.-]+", "-", host_name.lower()).strip("-.") or "host"
    return f"{kind}-{safe}"[:64]


def _store(data: Any) -> Any:
    from ostiary.keystore import ControlKeyStore, default_root

    root = str(getattr(data, "ostiary_keystore_dir", "") or "")
    return ControlKeyStore(Path(root) if root else default_root(Path(__file__).resolve().parent.parent), None)


def _sans(data: Any, host_name: str, *names: str) -> list[str]:
    address = str(getattr(data, common.PRIVATE_ADDRESS_KEY, "") or "")
    extra = list(getattr(data, "keys_extra_sans", []) or [])
    return list(dict.fromkeys([*names, host_name, *([address] if address else []), *extra]))


def gateway_certificate(data: Any, store: Any = None, host_name: str | None = None) -> tuple[bytes, bytes]:
    """The gateway's server certificate (SANs: its server names), at most 90 days."""
    store = store or _store(data)
    name = host_name or host.name
    days = min(int(getattr(data, "gateway_cert_days", 90)), 90)
    sans = list(getattr(data, "gateway_server_names", None) or [name])
    return store.certificate(cert_name("gateway", name), sans, "server", days)  # type: ignore[no-any-return]


def key_files(data: Any, facts: Mapping[str, Any], store: Any, host_name: str) -> list[KeyFile]:
    """Everything this host receives, decided by its groups (pure apart from the key store)."""
    from ostiary.acl import SESSIOND_USERNAME

    groups = set(facts["groups"])
    days = int(data.keys_cert_days)
    path = common.host_path
    out = [KeyFile(path(data, common.TLS_CA_CERT), store.ca_certificate(), "root", "0644", "")]

    if common.GROUP_GATEWAYS in groups:
        cert, key = gateway_certificate(data, store, host_name)
        out += [
            KeyFile(path(data, common.GATEWAY_CERT), cert, "root", "0644", "nginx"),
            KeyFile(path(data, common.GATEWAY_KEY), key, "root", "0600", "nginx"),
        ]
        if common.GROUP_SESSION_NODES not in groups and getattr(data, "sessiond_server_tls", True):
            cert, key = store.certificate(cert_name("gateway-client", host_name), [host_name], "client", days)
            out += [
                KeyFile(path(data, common.GATEWAY_CLIENT_CERT), cert, "root", "0644", "nginx"),
                KeyFile(path(data, common.GATEWAY_CLIENT_KEY), key, "root", "0600", "nginx"),
            ]

    if common.GROUP_SESSION_NODES in groups:
        user = common.SESSIOND_USER
        store.ensure_jwt_key(str(data.keys_jwt_algorithm))
        for name, content in store.jwt_host_files().items():
            private = name.endswith(".key")
            out.append(
                KeyFile(
                    path(data, f"{common.KEYS_DIR}/{name}"), content, user, "0600" if private else "0644", "sessiond"
                )
            )
        out.append(KeyFile(path(data, JWKS_FILE), store.jwks(), "root", "0644", "sessiond"))
        secret = store.shared_secret("sessiond-daemon").encode() + b"\n"
        out.append(KeyFile(path(data, common.SESSIOND_SECRET_FILE), secret, user, "0600", "sessiond"))
        password = store.redis_password(SESSIOND_USERNAME).encode() + b"\n"
        out.append(KeyFile(path(data, common.SESSIOND_REDIS_PASSWORD_FILE), password, user, "0600", "sessiond"))
        if common.GROUP_REDIS_NODES not in groups:
            cert, key = store.certificate(cert_name("sessiond-redis", host_name), [host_name], "client", days)
            out += [
                KeyFile(path(data, common.SESSIOND_REDIS_CLIENT_CERT), cert, user, "0644", "sessiond"),
                KeyFile(path(data, common.SESSIOND_REDIS_CLIENT_KEY), key, user, "0600", "sessiond"),
            ]
        if common.GROUP_GATEWAYS not in groups and getattr(data, "sessiond_server_tls", True):
            # The gateways verify this name (deploys.gateway.SESSIOND_TLS_NAME).
            sans = _sans(data, host_name, "sessiond")
            cert, key = store.certificate(cert_name("sessiond", host_name), sans, "server", days)
            out += [
                KeyFile(path(data, common.SESSIOND_SERVER_CERT), cert, user, "0644", "sessiond"),
                KeyFile(path(data, common.SESSIOND_SERVER_KEY), key, user, "0600", "sessiond"),
            ]

    if common.GROUP_REDIS_NODES in groups:
        sans = _sans(data, host_name, "localhost", "127.0.0.1")
        cert, key = store.certificate(cert_name("redis", host_name), sans, "server", days)
        out += [
            KeyFile(path(data, common.REDIS_SERVER_CERT), cert, common.REDIS_USER, "0644", "redis"),
            KeyFile(path(data, common.REDIS_SERVER_KEY), key, common.REDIS_USER, "0600", "redis"),
        ]
    return out


def _redis_reload_commands(data: Any) -> list[StringCommand]:
    """Make both Redis instances re-read their certificate in place (no restart, no downtime)."""
    admin = str(data.redis_admin_user)
    commands = []
    for instance in common.REDIS_INSTANCES:
        socket = common.host_path(data, common.redis_socket(instance))
        # A store that is not running yet (first run) reads the new files when it starts.
        commands.append(
            StringCommand(
                "test",
                "!",
                "-S",
                socket,
                "||",
                "redis-cli",
                "--no-auth-warning",
                "--user",
                admin,
                "-s",
                socket,
                "CONFIG",
                "SET",
                "tls-cert-file",
                common.host_path(data, common.REDIS_SERVER_CERT),
                "tls-key-file",
                common.host_path(data, common.REDIS_SERVER_KEY),
                "tls-ca-cert-file",
                common.host_path(data, common.TLS_CA_CERT),
            )
        )
    return commands


@deploy("Ostiary keys", data_defaults=DEFAULTS)
def keys() -> None:
    """Upload this host's key material; reload the services whose files changed."""
    data = host.data
    store = _store(data)
    facts = host_topology()
    groups = set(facts["groups"])
    wanted = key_files(data, facts, store, host.name)

    # The owners must exist before their files: the service roles run after this one.
    if groups & {common.GROUP_SESSION_NODES, common.GROUP_REDIS_NODES}:
        server.group(name="Daemon group", group=common.SESSIOND_USER, system=True)
    if common.GROUP_SESSION_NODES in groups:
        server.user(  # noqa: S604 - the login shell of a system user, not shell=True
            name="Daemon system user",
            user=common.SESSIOND_USER,
            group=common.SESSIOND_USER,
            home="/nonexistent",
            shell="/usr/sbin/nologin",
            system=True,
            ensure_home=False,
        )
    if common.GROUP_REDIS_NODES in groups:
        server.user(  # noqa: S604 - the login shell of a system user, not shell=True
            name="Redis system user",
            user=common.REDIS_USER,
            home=common.REDIS_DATA_ROOT,
            shell="/usr/sbin/nologin",
            system=True,
            ensure_home=False,
        )
    files.directory(
        name="Ostiary config directory",
        path=common.host_path(data, common.ETC_DIR),
        user="root",
        group="root",
        mode="0755",
    )
    files.directory(
        name="TLS directory", path=common.host_path(data, common.TLS_DIR), user="root", group="root", mode="0755"
    )
    if common.GROUP_SESSION_NODES in groups:
        files.directory(
            name="JWT key directory",
            path=common.host_path(data, common.KEYS_DIR),
            user=common.SESSIOND_USER,
            group=common.SESSIOND_USER,
            mode="0700",
        )

    changed: dict[str, list[Any]] = {"nginx": [], "sessiond": [], "redis": []}
    for item in wanted:
        op = files.put(
            name=f"Key material: {item.path}",
            src=io.BytesIO(item.content),
            dest=item.path,
            user=item.owner,
            group=item.owner,
            mode=item.mode,
        )
        if item.reload:
            changed[item.reload].append(op)
    # Retired JWT keys that dropped out of the store leave the host too.
    if changed["sessiond"]:
        key_dir = common.host_path(data, common.KEYS_DIR)
        keep = sorted(Path(i.path).name for i in wanted if i.path.startswith(key_dir + "/"))
        server.shell(
            name="Remove JWT key files the store no longer holds",
            commands=[StringCommand("find", key_dir, "-maxdepth", "1", "-type", "f",
                                    *[bit for name in keep for bit in ("!", "-name", name)], "-delete")],
            _if=any_changed(*changed["sessiond"]),
        )  # fmt: skip

    # try-reload-or-restart: nothing happens to a service that is not running yet (first run).
    if changed["nginx"]:
        server.shell(
            name="nginx re-reads its certificate",
            # On the first run the unit may not exist yet: nothing to reload then.
            commands=["! systemctl cat nginx.service >/dev/null 2>&1 || systemctl try-reload-or-restart nginx.service"],
            _if=any_changed(*changed["nginx"]),
        )
    if changed["sessiond"]:
        server.shell(
            name="Daemon re-reads its keys (SIGHUP)",
            commands=["! systemctl cat ostiary-sessiond.service >/dev/null 2>&1 "
                      "|| systemctl try-reload-or-restart ostiary-sessiond.service"],
            _if=any_changed(*changed["sessiond"]),
        )
    if changed["redis"]:
        server.shell(
            name="Redis re-reads its certificate",
            commands=_redis_reload_commands(data),
            # The admin password travels in the environment, hidden from pyinfra's output.
            _env={"REDISCLI_AUTH": HiddenValue(store.redis_password(str(data.redis_admin_user)))},
            _if=any_changed(*changed["redis"]),
        )
