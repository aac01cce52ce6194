"""The Redis ACL of the daemon's user: one definition for the test stores, the bundle and the checks.

The daemon's user may run exactly these commands, on keys and channels under ``ost:``; anything
that could wipe, reconfigure or enumerate a store (FLUSHALL, FLUSHDB, CONFIG, DEBUG, KEYS, SCAN,
MODULE, SHUTDOWN, ...) stays out of its reach.
"""

from __future__ import annotations

from typing import Final

KEY_PATTERN: Final = "ost:*"
CHANNEL_PATTERN: Final = "ost:*"
SESSIOND_USERNAME: Final = "sessiond"

SESSIOND_COMMANDS: Final = (
    # connection set-up and health
    # (no CLIENT SETINFO: Redis 7.0 in Debian 12 does not know it and would reject the whole ACL
    # file; redis-py ignores a refused SETINFO)
    "auth", "hello", "ping", "select", "client|setname", "info", "time",
    # session records, per-subject indexes, revocation markers
    "get", "set", "mget", "del", "unlink", "exists", "expire", "pexpire", "pttl",
    "sadd", "srem", "smembers",
    # revocation broadcast
    "publish", "subscribe", "unsubscribe",
)  # fmt: skip

FORBIDDEN_COMMANDS: Final = (
    "flushall", "flushdb", "config", "debug", "keys", "scan", "module", "shutdown",
    "save", "bgsave", "bgrewriteaof", "replicaof", "slaveof", "acl", "eval", "script",
    "function", "migrate", "monitor", "sync", "psync",
)  # fmt: skip


def sessiond_acl_rule(password_sha256_hex: str) -> str:
    """The ``user`` line for an ACL file; the password is given as its SHA-256 (``#hex``)."""
    commands = " ".join(f"+{c}" for c in SESSIOND_COMMANDS)
    return (
        f"user {SESSIOND_USERNAME} on #{password_sha256_hex} resetkeys ~{KEY_PATTERN} "
        f"resetchannels &{CHANNEL_PATTERN} -@all {commands}"
    )
