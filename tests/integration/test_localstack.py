"""The local stack itself: the Redis pair is hardened as documented, and the demo runs end to end."""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ostiary.acl import FORBIDDEN_COMMANDS
from ostiary.localstack import (
    LocalStack,
    RedisServer,
    find_free_port,
    render_toml,
    run_cli,
    start_store_pair,
    write_config,
)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, RedisServer]]:
    sessions, revocations = start_store_pair(tmp_path_factory.mktemp("pair"))
    yield sessions, revocations
    sessions.stop()
    revocations.stop()


DRYRUN_ARGS = {
    "config": ["GET", "maxmemory"],
    "debug": ["SLEEP", "0"],
    "keys": ["*"],
    "scan": ["0"],
    "module": ["LIST"],
    "shutdown": ["NOSAVE"],
    "save": [],
    "bgsave": [],
    "bgrewriteaof": [],
    "flushall": [],
    "flushdb": [],
    "replicaof": ["NO", "ONE"],
    "slaveof": ["NO", "ONE"],
    "acl": ["WHOAMI"],
    "eval": ["return 1", "0"],
    "script": ["FLUSH"],
    "function": ["LIST"],
    "migrate": ["127.0.0.1", "1", "ost:x", "0", "10"],
    "monitor": [],
    "sync": [],
    "psync": ["?", "-1"],
}


def _raw(port: int, command: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(command)
        return sock.recv(256)


def test_role_policies(pair: tuple[RedisServer, RedisServer]) -> None:
    sessions, revocations = pair
    s, r = sessions.admin_client(), revocations.admin_client()
    assert s.config_get("maxmemory-policy")["maxmemory-policy"] == "allkeys-lru"
    assert s.config_get("appendfsync")["appendfsync"] == "everysec"
    assert s.config_get("save")["save"] != ""
    assert r.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    assert r.config_get("appendfsync")["appendfsync"] == "always"
    for client in (s, r):
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        assert client.config_get("protected-mode")["protected-mode"] == "yes"
        assert int(client.config_get("maxmemory")["maxmemory"]) > 0
        client.close()


def test_default_user_can_do_nothing(pair: tuple[RedisServer, RedisServer]) -> None:
    for store in pair:
        assert _raw(store.port, b"PING\r\n").startswith(b"-NOAUTH")
        assert _raw(store.port, b"AUTH default x\r\n").startswith(b"-")


def test_sessiond_user_is_confined(pair: tuple[RedisServer, RedisServer]) -> None:
    sessions, _ = pair
    client = sessions.sessiond_client()
    assert client.set("ost:probe", "1", ex=10)
    assert client.get("ost:probe") == b"1"
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.set("elsewhere", "1")
    client.close()
    admin = sessions.admin_client()
    for command in FORBIDDEN_COMMANDS:
        # ACL DRYRUN asks the server's ACL without running anything (SHUTDOWN stays harmless).
        args = DRYRUN_ARGS.get(command, ["x"])
        verdict = admin.execute_command("ACL", "DRYRUN", "sessiond", command.upper(), *args)
        assert verdict != b"OK", command
    assert admin.execute_command("ACL", "DRYRUN", "sessiond", "GET", "ost:x") == b"OK"
    admin.close()
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=sessions.port, username="sessiond", password="wrong", retry=Retry(NoBackoff(), 0)).ping()


def test_pause_resume_and_kill9_restart(tmp_path: Path) -> None:
    store = RedisServer("probe", tmp_path / "probe", appendfsync="always")
    store.start()
    try:
        client = store.sessiond_client(timeout=0.3)
        client.set("ost:kept", "yes", ex=600)
        store.pause()
        with pytest.raises(redis.exceptions.TimeoutError):
            store.sessiond_client(timeout=0.3).get("ost:kept")
        store.resume()
        pid = store.pid
        store.kill9()
        store.start()
        assert store.pid != pid
        assert store.sessiond_client().get("ost:kept") == b"yes"
        store.restart()
        assert store.sessiond_client().get("ost:kept") == b"yes"
    finally:
        store.stop()
    assert not store.running


def test_config_is_valid_toml(tmp_path: Path, pair: tuple[RedisServer, RedisServer]) -> None:
    sessions, revocations = pair
    path = write_config(
        tmp_path / "ostiary.toml",
        sessions=sessions,
        revocations=revocations,
        keys_dir=tmp_path / "keys",
        listen="127.0.0.1:1",
        admin_listen=f"unix:{tmp_path / 'a.sock'}",
        tokens={"mode": "opaque", "audience": ["a", 'b"c']},
        clients={"gw": "sha256:" + "0" * 64},
    )
    config = tomllib.loads(path.read_text())
    assert config["tokens"]["mode"] == "opaque" and config["tokens"]["audience"] == ["a", 'b"c']
    assert config["tokens"]["issuer"]  # defaults kept beside overrides
    assert config["store"]["revocations_url"] == revocations.url
    assert config["clock"]["check"] == "none"
    assert config["clients"] == {"gw": "sha256:" + "0" * 64}
    assert path.stat().st_mode & 0o077 == 0
    assert tomllib.loads(render_toml({"a": {"x": 1.5, "y": True, "z": "q\\n"}})) == {
        "a": {"x": 1.5, "y": True, "z": "q\\n"}
    }


def test_find_free_port_is_bindable() -> None:
    port = find_free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_close_ends_every_process() -> None:
    stack = LocalStack().start()
    daemon = stack.daemon()
    sessions, revocations = stack.stores()
    pids = [daemon.pid, sessions.pid, revocations.pid]
    workdir = stack.workdir
    stack.close()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not workdir.exists()


def test_demo_runs_end_to_end() -> None:
    result = run_cli("demo", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "X-Session-Fault: REVOKED" in out
    assert "X-Session-Fault: SIG_MISMATCH" in out
    assert "FAIL" not in out
