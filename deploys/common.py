"""Facts shared by every role, the firewall and the compliance checks: defined once, read everywhere.

A port, a path or a service user that more than one place needs lives here; the templates get
them through the render context, the firewall derives its rules from them, and the compliance
suite checks the same numbers.
"""

from __future__ import annotations

from typing import Any, Final

# Ports (TCP unless stated otherwise).
SSH_PORT: Final = 22
GATEWAY_HTTPS_PORT: Final = 443
SESSIOND_PORT: Final = 8700  # public API: validate, jwks, introspect, health, metrics
SESSIOND_ADMIN_PORT: Final = 8701  # admin API; on loopback only, or a unix socket by default
SESSION_STORE_TLS_PORT: Final = 6379  # Redis session store, TLS only for remote clients
REVOCATION_STORE_TLS_PORT: Final = 6380  # Redis revocation store, TLS only for remote clients
NTP_PORT: Final = 123  # UDP
NTS_KE_PORT: Final = 4460  # TCP, NTS key establishment

# Service users and groups.
SESSIOND_USER: Final = "ostiary"
REDIS_USER: Final = "redis"
NGINX_USER: Final = "www-data"

# Paths on a managed host (before the optional prefix, see ``host_path``).
ETC_DIR: Final = "/etc/ostiary"
KEYS_DIR: Final = "/etc/ostiary/keys"  # JWT signing keys: <kid>.json, <kid>.key, <kid>.pub
TLS_DIR: Final = "/etc/ostiary/tls"  # CA, server and client certificates
VENV_DIR: Final = "/opt/ostiary/venv"
RUN_DIR: Final = "/run/ostiary"
SESSIOND_SOCKET: Final = "/run/ostiary/sessiond.sock"  # public API for a gateway on the same host
SESSIOND_ADMIN_SOCKET: Final = "/run/ostiary/admin.sock"
REDIS_INSTANCES: Final = ("sessions", "revocations")
REDIS_CONF_DIR: Final = "/etc/redis"
REDIS_DATA_ROOT: Final = "/var/lib/redis"
REDIS_RUN_DIR: Final = "/run/redis"


def redis_socket(instance: str) -> str:
    """Unix socket of one Redis instance, for a daemon on the same host."""
    return f"{REDIS_RUN_DIR}/ostiary-{instance}.sock"


def redis_tls_port(instance: str) -> int:
    return {"sessions": SESSION_STORE_TLS_PORT, "revocations": REVOCATION_STORE_TLS_PORT}[instance]


def host_path(data: Any, path: str) -> str:
    """A managed path under the optional ``ostiary_root_prefix`` (tests render into a temp dir)."""
    prefix = str(getattr(data, "ostiary_root_prefix", "") or "")
    return prefix.rstrip("/") + path if prefix else path


# TLS material on a managed host (issued by the control node's CA, see ostiary.keystore).
TLS_CA_CERT: Final = f"{TLS_DIR}/ca.crt"
GATEWAY_CERT: Final = f"{TLS_DIR}/gateway.crt"
GATEWAY_KEY: Final = f"{TLS_DIR}/gateway.key"
GATEWAY_CLIENT_CERT: Final = f"{TLS_DIR}/gateway-client.crt"  # nginx -> daemon mutual TLS
GATEWAY_CLIENT_KEY: Final = f"{TLS_DIR}/gateway-client.key"
SESSIOND_SERVER_CERT: Final = f"{TLS_DIR}/sessiond.crt"  # daemon public API over TLS (split profile)
SESSIOND_SERVER_KEY: Final = f"{TLS_DIR}/sessiond.key"
SESSIOND_REDIS_CLIENT_CERT: Final = f"{TLS_DIR}/sessiond-redis-client.crt"
SESSIOND_REDIS_CLIENT_KEY: Final = f"{TLS_DIR}/sessiond-redis-client.key"
REDIS_SERVER_CERT: Final = f"{TLS_DIR}/redis.crt"
REDIS_SERVER_KEY: Final = f"{TLS_DIR}/redis.key"
SESSIOND_REDIS_PASSWORD_FILE: Final = f"{ETC_DIR}/redis-sessiond.password"
# The daemon secret shared by every session node (config log.salt_file): log id hashes, sealed
# listing metadata and first-seen address hashes are keyed from it.
SESSIOND_SECRET_FILE: Final = f"{ETC_DIR}/log-salt"

# Inventory groups and the per-host data key naming a host's address on the private network.
GROUP_GATEWAYS: Final = "gateways"
GROUP_SESSION_NODES: Final = "session_nodes"
GROUP_REDIS_NODES: Final = "redis_nodes"
PRIVATE_ADDRESS_KEY: Final = "private_address"
