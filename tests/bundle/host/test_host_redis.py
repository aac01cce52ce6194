"""The redis role's rendered config, run by the real redis-server and probed with redis-py.

For each profile, the redis node's two instances start from exactly the files the deploy would
upload (under a temp root prefix, TLS ports moved to free loopback ports) with a throwaway CA.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_py
from host_support import (
    PROFILES,
    TlsMaterial,
    free_port,
    host_data,
    hosts_in,
    write_files,
)

from deploys import common
from deploys import redis as redis_role
from ostiary import acl

pytestmark = pytest.mark.bundle

MiB = 1024 * 1024
HOST_MEMORY_MB = 8192  # the reference host: 8 GB


def _installed_redis_version() -> tuple[int, int]:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=True).stdout
    version = redis_role.parse_redis_version(out)
    assert version, out
    return version


REDIS_VERSION = _installed_redis_version()
UNKNOWN_TO_SERVER = set(redis_role.acl_commands_unknown_to(REDIS_VERSION))

# Example arguments for every command the daemon's user may run; a command added to
# ostiary.acl without an entry here fails the test, so the list cannot drift silently.
ALLOWED_EXAMPLES: dict[str, list[str]] = {
    "auth": ["sessiond", "x"],
    "hello": ["3"],
    "ping": [],
    "select": ["0"],
    "client|setname": ["ostiary"],
    "info": [],
    "time": [],
    "get": ["ost:s:1"],
    "set": ["ost:s:1", "v"],
    "mget": ["ost:s:1", "ost:s:2"],
    "del": ["ost:s:1"],
    "unlink": ["ost:s:1"],
    "exists": ["ost:s:1"],
    "expire": ["ost:s:1", "10"],
    "pexpire": ["ost:s:1", "10"],
    "pttl": ["ost:s:1"],
    "sadd": ["ost:sub:a", "1"],
    "srem": ["ost:sub:a", "1"],
    "smembers": ["ost:sub:a"],
    "publish": ["ost:revoked", "1"],
    "subscribe": ["ost:revoked"],
    "unsubscribe": ["ost:revoked"],
}
FORBIDDEN_EXAMPLES: dict[str, list[str]] = {
    "flushall": [],
    "flushdb": [],
    "config": ["GET", "maxmemory"],
    "debug": ["SLEEP", "0"],
    "keys": ["*"],
    "scan": ["0"],
    "module": ["LIST"],
    "shutdown": ["NOSAVE"],
    "save": [],
    "bgsave": [],
    "bgrewriteaof": [],
    "replicaof": ["NO", "ONE"],
    "slaveof": ["NO", "ONE"],
    "acl": ["WHOAMI"],
    "eval": ["return 1", "0"],
    "script": ["FLUSH"],
    "function": ["LIST"],
    "migrate": ["127.0.0.1", "1", "ost:s:1", "0", "10"],
    "monitor": [],
    "sync": [],
    "psync": ["?", "-1"],
}


def _argv(command: str, args: list[str]) -> list[str]:
    return [*command.split("|"), *args]


class RunningRedis:
    """One rendered instance started by redis-server, and how to reach it."""

    def __init__(self, instance: str, port: int, socket: str, conf: str, log: Path) -> None:
        self.instance, self.port, self.socket, self.conf, self.log = instance, port, socket, conf, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(["redis-server", self.conf], stdout=out, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


class Node:
    """A redis node of one profile, with its rendered files on disk and both instances running."""

    def __init__(self, profile: str, host: str, prefix: Path, tls: TlsMaterial, passwords: dict[str, str]):
        self.profile, self.host, self.prefix, self.passwords = profile, host, prefix, passwords
        self.address = PROFILES[profile][host]["private_address"]
        self.ports = {name: free_port() for name in common.REDIS_INSTANCES}
        self.data = host_data(redis_role, profile, host, prefix, redis_tls_ports=self.ports)
        hashes = {u: redis_role.password_sha256(p) for u, p in passwords.items()}
        self.files = redis_role.render_files(
            self.data, {"memory_mb": HOST_MEMORY_MB, "redis_version": REDIS_VERSION}, hashes
        )
        write_files(self.files)
        tls_files = {
            common.TLS_CA_CERT: tls.ca_pem,
            common.REDIS_SERVER_CERT: tls.server_cert_pem,
            common.REDIS_SERVER_KEY: tls.server_key_pem,
        }
        for path, pem in tls_files.items():
            target = Path(common.host_path(self.data, path))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(pem)
        client_dir = prefix / "client"
        client_dir.mkdir()
        self.client_cert, self.client_key = client_dir / "client.crt", client_dir / "client.key"
        self.client_cert.write_bytes(tls.client_cert_pem)
        self.client_key.write_bytes(tls.client_key_pem)
        self.ca = common.host_path(self.data, common.TLS_CA_CERT)
        Path(common.host_path(self.data, common.REDIS_RUN_DIR)).mkdir(parents=True, exist_ok=True)
        self.instances: dict[str, RunningRedis] = {}
        for name in common.REDIS_INSTANCES:
            Path(common.host_path(self.data, f"{common.REDIS_DATA_ROOT}/ostiary-{name}")).mkdir(
                parents=True, exist_ok=True
            )
            self.instances[name] = RunningRedis(
                name,
                self.ports[name],
                common.host_path(self.data, common.redis_socket(name)),
                redis_role.conf_path(self.data, name),
                prefix / f"redis-{name}.log",
            )

    def start(self) -> None:
        for instance in self.instances.values():
            instance.start()
        for instance in self.instances.values():
            self._wait_ready(instance)

    def _wait_ready(self, instance: RunningRedis) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert instance.proc is not None
            if instance.proc.poll() is not None:
                pytest.fail(f"redis-server exited: {instance.log.read_text()}")
            try:
                self.admin(instance.instance).ping()
                return
            except (redis_py.ConnectionError, redis_py.AuthenticationError, OSError):
                time.sleep(0.1)
        pytest.fail(f"redis {instance.instance} not ready: {instance.log.read_text()}")

    def stop(self) -> None:
        for instance in self.instances.values():
            instance.stop()

    def tls_client(self, instance: str, user: str, **kwargs: Any) -> redis_py.Redis:
        return redis_py.Redis(
            host=self.address,
            port=self.ports[instance],
            username=user,
            password=self.passwords[user],
            ssl=True,
            ssl_ca_certs=self.ca,
            ssl_certfile=str(self.client_cert),
            ssl_keyfile=str(self.client_key),
            ssl_cert_reqs="required",
            socket_timeout=5,
            decode_responses=True,
            **kwargs,
        )

    def admin(self, instance: str) -> redis_py.Redis:
        return self.tls_client(instance, str(redis_role.DEFAULTS["redis_admin_user"]))


def _nodes() -> list[tuple[str, str]]:
    return [(p, h) for p in PROFILES for h in hosts_in(p, common.GROUP_REDIS_NODES)]


@pytest.fixture(params=_nodes(), ids=lambda ph: f"{ph[0]}-{ph[1]}")
def node(
    request: pytest.FixtureRequest, prefix: Path, tls: TlsMaterial, redis_passwords: dict[str, str]
) -> Iterator[Node]:
    profile, host = request.param
    started = Node(profile, host, prefix, tls, redis_passwords)
    try:
        started.start()
        yield started
    finally:
        started.stop()


def test_instances_run_the_rendered_config(node: Node) -> None:
    for name in common.REDIS_INSTANCES:
        admin = node.admin(name)
        config = {k: v for k, v in admin.config_get("*").items()}
        assert config["port"] == "0", "plain TCP must be off"
        assert config["tls-port"] == str(node.ports[name])
        assert config["tls-auth-clients"] == "yes"
        assert config["protected-mode"] == "yes"
        assert config["unixsocketperm"] == "770"
        assert config["latency-monitor-threshold"] == str(redis_role.DEFAULTS["redis_latency_monitor_threshold_ms"])
        assert config["appendonly"] == "yes"
        assert node.address in config["bind"].split() and "127.0.0.1" in config["bind"].split()
        assert admin.info("server")["redis_version"].startswith("7.")
    sessions = node.admin("sessions").config_get("*")
    revocations = node.admin("revocations").config_get("*")
    assert sessions["maxmemory-policy"] == "allkeys-lru"
    assert sessions["appendfsync"] == "everysec"
    assert int(sessions["maxmemory"]) == 2048 * MiB, "25% of an 8 GB host"
    assert sessions["save"] == redis_role.DEFAULTS["redis_sessions_save"]
    assert revocations["maxmemory-policy"] == "noeviction", "the daemon refuses other policies"
    assert revocations["appendfsync"] == "always"
    assert int(revocations["maxmemory"]) == redis_role.DEFAULTS["redis_revocations_maxmemory_mb"] * MiB
    assert revocations["save"] == ""


def test_daemon_user_works_over_mutual_tls_and_the_socket(node: Node) -> None:
    for name in common.REDIS_INSTANCES:
        client = node.tls_client(name, acl.SESSIOND_USERNAME, protocol=3)
        assert client.set("ost:test:1", "v", ex=30)
        assert client.get("ost:test:1") == "v"
        with pytest.raises(redis_py.exceptions.NoPermissionError):
            client.set("other:1", "v")
        with pytest.raises(redis_py.exceptions.NoPermissionError):
            client.flushall()
        sock = node.instances[name].socket
        assert (Path(sock).stat().st_mode & 0o777) == 0o770
        local = redis_py.Redis(
            unix_socket_path=sock,
            username=acl.SESSIOND_USERNAME,
            password=node.passwords[acl.SESSIOND_USERNAME],
            decode_responses=True,
        )
        assert local.get("ost:test:1") == "v"


def _plain_answer(address: str, port: int) -> bytes:
    """Send PING without TLS; whatever comes back (nothing, if the server just hangs up)."""
    with socket.create_connection((address, port), timeout=5) as conn:
        conn.sendall(b"*1\r\n$4\r\nPING\r\n")
        try:
            return conn.recv(64)
        except (ConnectionResetError, TimeoutError):
            return b""


def _tls_answer(address: str, port: int, ca: str, cert: Path | None = None, key: Path | None = None) -> bytes:
    """PING over TLS, with or without a client certificate, as an unauthenticated client."""
    context = ssl.create_default_context(cafile=ca)
    context.check_hostname = False
    if cert and key:
        context.load_cert_chain(str(cert), str(key))
    with socket.create_connection((address, port), timeout=5) as raw:
        try:
            with context.wrap_socket(raw) as conn:
                # TLS 1.3 reports the missing certificate after the handshake, on first use.
                conn.sendall(b"*1\r\n$4\r\nPING\r\n")
                return conn.recv(64)
        except (ssl.SSLError, ConnectionResetError, TimeoutError):
            return b""


def test_default_user_and_plain_tcp_are_refused(node: Node) -> None:
    for name in common.REDIS_INSTANCES:
        port = node.ports[name]
        assert b"PONG" not in _plain_answer(node.address, port)
        assert b"PONG" not in _tls_answer(node.address, port, node.ca)
        # A valid certificate but no AUTH: the default user is off.
        answer = _tls_answer(node.address, port, node.ca, node.client_cert, node.client_key)
        assert answer.startswith(b"-NOAUTH"), answer


def test_acl_allows_exactly_the_daemon_commands(node: Node) -> None:
    admin = node.admin("sessions")
    assert set(ALLOWED_EXAMPLES) == set(acl.SESSIOND_COMMANDS)
    assert set(FORBIDDEN_EXAMPLES) == set(acl.FORBIDDEN_COMMANDS)
    user = acl.SESSIOND_USERNAME
    rule = next(line for line in node.files.values() if f"user {user} on" in line)
    for command in UNKNOWN_TO_SERVER:  # left out of the rule, or the server rejects the ACL file
        assert f"+{command}" not in rule
    for command, args in ALLOWED_EXAMPLES.items():
        if command in UNKNOWN_TO_SERVER:
            continue
        answer = admin.execute_command("ACL", "DRYRUN", user, *_argv(command, args))
        assert answer == "OK", f"{command}: {answer}"
    for command, args in FORBIDDEN_EXAMPLES.items():
        answer = admin.execute_command("ACL", "DRYRUN", user, *_argv(command, args))
        assert answer != "OK", f"{command} must be denied to {user}"
    denied_key = admin.execute_command("ACL", "DRYRUN", user, "GET", "elsewhere:1")
    assert denied_key != "OK"
    users = admin.acl_list()
    default = next(line for line in users if line.startswith("user default "))
    assert " off " in default + " ", default
    assert any(line.startswith(f"user {user} on ") for line in users)
