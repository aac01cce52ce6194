"""Redis role on redis nodes: both stores checked through redis-cli as the daemon connects to them.

The client is a session node (where the daemon's password, CA and client certificate live): over
mutual TLS to the redis node's private address, or over the unix socket when the daemon runs on
the redis node itself. Commands that would harm a store if the ACL let them through are sent in
a form that does nothing even when allowed (``FLUSHALL FOO`` is a syntax error after the ACL check).
"""

from __future__ import annotations

import re
import shlex
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from deploys import common
from ostiary import acl

from .support import Node, other_node, service_state

pytestmark = pytest.mark.role(common.GROUP_REDIS_NODES)

# The seed's two stores: a full session store may forget (LRU); a revocation store never does.
POLICY = {"sessions": "allkeys-lru", "revocations": "noeviction"}
APPENDFSYNC = {"sessions": "everysec", "revocations": "always"}

# A harmless form of each forbidden command: refused by the ACL, and a no-op if it were not.
# MONITOR, SYNC, PSYNC and SAVE have no harmless form (they stream data or block): the ACL file
# check below covers them.
FORBIDDEN_PROBES = [
    ["FLUSHALL", "FOO"], ["FLUSHDB", "FOO"], ["CONFIG", "GET", "maxmemory"], ["DEBUG", "HELP"],
    ["KEYS", "ost:none:*"], ["SCAN", "0"], ["MODULE", "LIST"], ["SHUTDOWN", "FOO"], ["BGSAVE", "FOO"],
    ["REPLICAOF", "NO", "FOO"], ["SLAVEOF", "NO", "FOO"], ["ACL", "LIST"], ["EVAL", "return 1", "0"],
    ["SCRIPT", "EXISTS", "0"], ["FUNCTION", "LIST"], ["MIGRATE", "127.0.0.1", "1", "ost:none", "0", "1"],
]  # fmt: skip
# The ACL's refusal, or Redis' own for commands disabled outright (enable-debug-command no), which
# it checks before the ACL: either way the command never runs.
REFUSED = re.compile(r"NOPERM |ERR (DEBUG|MODULE) command not allowed")
OUTSIDE_PATTERN = [["SET", "compliance:outside", "1"], ["GET", "compliance:outside"], ["PUBLISH", "outside", "1"]]


@dataclass(frozen=True)
class Client:
    """Where redis-cli runs and how it reaches one instance."""

    node: Node
    connection: str  # redis-cli arguments selecting the server (socket, or TLS + address)
    description: str


def _port(target: Node, instance: str) -> int:
    return int(dict(target.data.get("redis_tls_ports") or {}).get(instance, common.redis_tls_port(instance)))


def _tls_args(target: Node, instance: str, with_cert: bool = True) -> str:
    args = f"--tls --cacert {common.TLS_CA_CERT}"
    if with_cert:
        args += f" --cert {common.SESSIOND_REDIS_CLIENT_CERT} --key {common.SESSIOND_REDIS_CLIENT_KEY}"
    return f"{args} -h {target.address} -p {_port(target, instance)}"


def daemon_client(nodes: list[Node], target: Node, instance: str) -> Client:
    """redis-cli placed where the daemon is, connecting the way the daemon does."""
    if target.in_group(common.GROUP_SESSION_NODES):
        socket = common.redis_socket(instance)
        return Client(target, f"-s {socket}", f"unix socket {socket} on {target.name}")
    sessions = [n for n in nodes if n.in_group(common.GROUP_SESSION_NODES)]
    if not sessions:
        pytest.fail(f"no session node in the inventory to reach {target.name}'s Redis as the daemon does")
    source = sessions[0]
    return Client(
        source,
        _tls_args(target, instance),
        f"mutual TLS from {source.name} to {target.address}:{_port(target, instance)}",
    )


def redis_batch(client: Client, commands: list[list[str]], auth: bool = True) -> list[str]:
    """Run each command in its own redis-cli call on the client host; one output per command."""
    lines = ["set +e"]
    user = ""
    if auth:
        lines.append(f'REDISCLI_AUTH="$(cat {common.SESSIOND_REDIS_PASSWORD_FILE})"; export REDISCLI_AUTH')
        user = f"--user {acl.SESSIOND_USERNAME}"
    for index, argv in enumerate(commands):
        quoted = " ".join(shlex.quote(a) for a in argv)
        lines.append(
            f"echo '### {index}'; timeout 10 redis-cli --no-auth-warning {client.connection} {user} {quoted} 2>&1"
        )
    result = client.node.run("\n".join(lines), timeout=30 + 10 * len(commands))
    chunks = re.split(r"^### (\d+)$", str(result.stdout), flags=re.MULTILINE)
    outputs = {int(chunks[i]): chunks[i + 1].strip() for i in range(1, len(chunks) - 1, 2)}
    assert len(outputs) == len(commands), (
        f"redis-cli on {client.node.name} did not run: {result.stdout!r} {result.stderr!r}"
    )
    return [outputs[i] for i in range(len(commands))]


def _info(client: Client, section: str) -> dict[str, str]:
    (out,) = redis_batch(client, [["INFO", section]])
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line and not line.startswith("#"))
    assert fields, f"INFO {section} as the daemon's user gave nothing: {out[:300]}"
    return {k: v.strip() for k, v in fields.items()}


def _config(target: Node, instance: str) -> dict[str, str]:
    text = target.check(f"cat {common.REDIS_CONF_DIR}/ostiary-{instance}.conf")
    values = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.strip().partition(" ")
            values[key] = value.strip()
    return values


instances = pytest.mark.parametrize("instance", common.REDIS_INSTANCES)


@pytest.mark.control("OST-REDIS-01")
@instances
def test_instance_running(node: Node, instance: str, evidence: Callable[[str], None]) -> None:
    unit = f"ostiary-redis@{instance}.service"
    active, enabled = service_state(node, unit)
    assert (active, enabled) == ("active", "enabled"), f"{unit} is {active}/{enabled}"
    evidence(f"{unit} active/enabled")


@pytest.mark.control("OST-REDIS-02")
@instances
def test_daemon_user_works(node: Node, nodes: list[Node], instance: str, evidence: Callable[[str], None]) -> None:
    client = daemon_client(nodes, node, instance)
    key = f"ost:compliance:{uuid.uuid4().hex}"
    out = redis_batch(
        client,
        [
            ["PING"],
            ["SET", key, "probe", "EX", "60"],
            ["GET", key],
            ["PUBLISH", "ost:compliance", "probe"],
            ["DEL", key],
        ],
    )
    assert out[0] == "PONG", f"PING: {out[0]}"
    assert out[1] == "OK", f"SET {key}: {out[1]}"
    assert out[2] == "probe", f"GET {key}: {out[2]}"
    assert out[3].isdigit(), f"PUBLISH: {out[3]}"
    assert out[4] == "1", f"DEL: {out[4]}"
    evidence(f"PING/SET/GET/PUBLISH/DEL as {acl.SESSIOND_USERNAME} over {client.description}")


@pytest.mark.control("OST-REDIS-03")
@instances
def test_daemon_user_cannot_do_harm(
    node: Node, nodes: list[Node], instance: str, evidence: Callable[[str], None]
) -> None:
    client = daemon_client(nodes, node, instance)
    probes = FORBIDDEN_PROBES + OUTSIDE_PATTERN
    out = redis_batch(client, probes)
    allowed = [f"{' '.join(p)} -> {o[:80]!r}" for p, o in zip(probes, out, strict=True) if not REFUSED.match(o)]
    assert not allowed, "the daemon's user was not refused: " + "; ".join(allowed)
    # The ACL file as loaded: default user off; the daemon's user -@all plus its allowlist only.
    acl_text = node.check(f"cat {common.REDIS_CONF_DIR}/ostiary-users.acl")
    users = {line.split()[1]: line.split() for line in acl_text.splitlines() if line.startswith("user ")}
    rule = users.get(acl.SESSIOND_USERNAME)
    assert rule is not None, f"no ACL user {acl.SESSIOND_USERNAME}"
    granted = {w[1:] for w in rule if w.startswith("+")}
    assert "-@all" in rule, f"{acl.SESSIOND_USERNAME} rule does not start from -@all: {' '.join(rule[3:])}"
    assert not granted & set(acl.FORBIDDEN_COMMANDS), (
        f"forbidden commands granted: {granted & set(acl.FORBIDDEN_COMMANDS)}"
    )
    assert not any(w.startswith("+@") for w in rule), "a whole command category is granted"
    assert [w for w in rule if w.startswith("~")] == [f"~{acl.KEY_PATTERN}"], "key pattern is not exactly ost:*"
    evidence(f"{len(probes)} forbidden commands/keys/channels refused with NOPERM over {client.description}")


@pytest.mark.control("OST-REDIS-04")
@instances
def test_default_user_off(node: Node, nodes: list[Node], instance: str, evidence: Callable[[str], None]) -> None:
    client = daemon_client(nodes, node, instance)
    (out,) = redis_batch(client, [["PING"]], auth=False)
    assert "NOAUTH" in out or "WRONGPASS" in out, f"unauthenticated PING answered: {out!r}"
    acl_text = node.check(f"cat {common.REDIS_CONF_DIR}/ostiary-users.acl")
    default = next((line.split() for line in acl_text.splitlines() if line.startswith("user default ")), [])
    assert "off" in default, f"default user not off: {' '.join(default)}"
    evidence(f"unauthenticated PING -> {out.splitlines()[0] if out else ''!r}; default user off")


@pytest.mark.control("OST-REDIS-05")
@instances
def test_client_certificate_required(
    node: Node, nodes: list[Node], instance: str, evidence: Callable[[str], None]
) -> None:
    source = other_node([n for n in nodes if n.in_group(common.GROUP_SESSION_NODES)] or nodes, node)
    client = Client(source, _tls_args(node, instance, with_cert=False), f"TLS without a certificate from {source.name}")
    (out,) = redis_batch(client, [["PING"]])
    assert "PONG" not in out and "NOAUTH" not in out, f"a client without certificate got an answer: {out!r}"
    config = _config(node, instance)
    assert config.get("tls-auth-clients") == "yes", f"tls-auth-clients {config.get('tls-auth-clients')}"
    evidence(f"{client.description}: {out.splitlines()[0][:100] if out else 'connection closed'}")


@pytest.mark.control("OST-REDIS-06")
@instances
def test_eviction_policy(node: Node, nodes: list[Node], instance: str, evidence: Callable[[str], None]) -> None:
    info = _info(daemon_client(nodes, node, instance), "memory")
    assert info.get("maxmemory_policy") == POLICY[instance], f"maxmemory_policy {info.get('maxmemory_policy')}"
    assert int(info.get("maxmemory", "0")) > 0, "maxmemory 0: the store may grow until the host swaps"
    evidence(f"maxmemory_policy {info['maxmemory_policy']}, maxmemory {info['maxmemory_human']}")


@pytest.mark.control("OST-REDIS-07")
@instances
def test_persistence(node: Node, nodes: list[Node], instance: str, evidence: Callable[[str], None]) -> None:
    info = _info(daemon_client(nodes, node, instance), "persistence")
    assert info.get("aof_enabled") == "1", f"aof_enabled {info.get('aof_enabled')}"
    assert info.get("aof_last_write_status") == "ok", f"aof_last_write_status {info.get('aof_last_write_status')}"
    config = _config(node, instance)
    assert config.get("appendfsync") == APPENDFSYNC[instance], f"appendfsync {config.get('appendfsync')}"
    if instance == "sessions":
        save = config.get("save", '""').strip('"')
        assert save, "the session store takes no RDB snapshots"
    evidence(f"aof_enabled 1, appendfsync {config['appendfsync']}, save {config.get('save', '')!r}")


@pytest.mark.control("OST-REDIS-08")
@instances
def test_no_plaintext_port(node: Node, nodes: list[Node], instance: str, evidence: Callable[[str], None]) -> None:
    config = _config(node, instance)
    assert config.get("port") == "0", f"plaintext port {config.get('port')}"
    port = _port(node, instance)
    listeners = node.check("ss -Hltnp | grep redis-server || true")
    ports = {int(m) for m in re.findall(r":(\d+)\s", listeners)}
    tls_ports = {_port(node, i) for i in common.REDIS_INSTANCES}
    assert ports <= tls_ports, f"redis-server listens on {sorted(ports - tls_ports)} besides its TLS ports"
    seen = []
    for source in [n for n in nodes if n.name != node.name]:
        out = source.run(
            f'timeout 4 bash -c \'exec 3<>/dev/tcp/{node.address}/{port} && printf "PING\\r\\n" >&3 '
            "&& timeout 2 cat <&3' 2>&1",
            timeout=10,
        ).stdout
        assert not re.search(r"PONG|NOAUTH|-ERR|-NOPERM", str(out)), f"plaintext answer to {source.name}: {out!r}"
        seen.append(source.name)
    evidence(f"port 0; listeners {sorted(ports)}; plaintext PING to {node.address}:{port} unanswered from "
             f"{', '.join(seen) or 'no other host'}")  # fmt: skip


@pytest.mark.control("OST-REDIS-09")
@instances
def test_unix_socket(node: Node, instance: str, evidence: Callable[[str], None]) -> None:
    socket = common.redis_socket(instance)
    mode_group = node.check(f"stat -c '%a %G' {socket}").strip()
    group = str(node.data.get("redis_socket_group") or common.SESSIOND_USER)
    assert mode_group == f"770 {group}", f"{socket}: mode/group {mode_group}, want 770 {group}"
    config = _config(node, instance)
    assert config.get("protected-mode") == "yes", f"protected-mode {config.get('protected-mode')}"
    evidence(f"{socket} {mode_group}; protected-mode yes; bind {config.get('bind')}")
