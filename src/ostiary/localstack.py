"""Real local processes for tests, the demo and the benchmark: a hardened Redis pair and daemons.

Everything runs on free loopback ports inside one temporary work directory, and every process
is started and ended by its own PID, so a test run never touches a service it did not start.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

import httpx
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ostiary.acl import SESSIOND_USERNAME, sessiond_acl_rule

ADMIN_USERNAME: Final = "admin"
DEFAULT_ISSUER: Final = "https://sessions.test.internal"
DEFAULT_AUDIENCE: Final = ("api",)

StoreRole = Literal["sessions", "revocations"]


class StackError(RuntimeError):
    """A local process did not come up (or go down) as expected; the message carries its log tail."""


class DaemonStartError(StackError):
    """The daemon exited or never answered /healthz; ``returncode`` is None if it is still running."""

    def __init__(self, message: str, returncode: int | None, log: str) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.log = log


def find_free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _log_tail(path: Path, limit: int = 4000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode("utf-8", "replace")


def _wait_process(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait for ``proc``; SIGKILL it if it outlives ``timeout`` (a stuck stop must not hang a test run)."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=10)


def ostiary_command() -> list[str]:
    """How to run the ``ostiary`` CLI of this interpreter: the console script beside it, else ``-m``."""
    script = Path(sys.executable).parent / "ostiary"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "ostiary"]


def run_cli(*args: str, timeout: float = 60, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``ostiary ARGS`` and capture its output (never raises on a non-zero exit)."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run(
        [*ostiary_command(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        check=False,
    )


def generate_key(keys_dir: Path, alg: str = "ES256", bits: int | None = None) -> str:
    """``ostiary keys generate`` into ``keys_dir``; returns the printed kid."""
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    args = ["keys", "generate", "--dir", str(keys_dir), "--alg", alg]
    if bits is not None:
        args += ["--bits", str(bits)]
    result = run_cli(*args)
    if result.returncode != 0:
        raise StackError(f"ostiary keys generate failed ({result.returncode}): {result.stderr.strip()}")
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    if not lines:
        raise StackError("ostiary keys generate printed no kid")
    return lines[-1]


def _redis_server_binary() -> str:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        raise StackError("redis-server is not installed (apt package redis-server)")
    return binary


def _redis_version() -> tuple[int, int]:
    """Version of the installed redis-server, e.g. (7, 0) on Debian 12."""
    out = subprocess.run(
        [_redis_server_binary(), "--version"], capture_output=True, text=True, check=True, timeout=10
    ).stdout
    match = re.search(r"v=(\d+)\.(\d+)", out)
    if match is None:
        raise StackError(f"cannot read the redis-server version from {out!r}")
    return int(match.group(1)), int(match.group(2))


def _acl_rule_for_server(rule: str, version: tuple[int, int]) -> str:
    """Drop ACL permissions for commands the server does not know: Redis rejects the whole ACL
    file otherwise. CLIENT SETINFO arrived in Redis 7.2 (Debian 12 ships 7.0); clients that
    send it ignore the error, so leaving it out costs nothing."""
    if version < (7, 2):
        rule = rule.replace(" +client|setinfo", "")
    return rule


class RedisServer:
    """One ``redis-server`` we configure and own: loopback only, ACL users, per-role memory policy."""

    def __init__(
        self,
        name: str,
        dir: Path,
        *,
        maxmemory: str = "64mb",
        maxmemory_policy: str = "noeviction",
        appendfsync: str = "always",
        rdb: bool = False,
        port: int | None = None,
    ) -> None:
        self.name = name
        self.dir = dir
        self.port = port if port is not None else find_free_port()
        self.maxmemory = maxmemory
        self.maxmemory_policy = maxmemory_policy
        self.appendfsync = appendfsync
        self.rdb = rdb
        # Hex passwords: no URL escaping needed in redis:// URLs.
        self.password = secrets.token_hex(24)
        self.admin_password = secrets.token_hex(24)
        self.config_path = dir / "redis.conf"
        self.acl_path = dir / "users.acl"
        self.log_path = dir / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._write_config()

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise StackError(f"redis {self.name} is not running")
        return self._proc.pid

    @property
    def url(self) -> str:
        return f"redis://{SESSIOND_USERNAME}:{self.password}@127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        sessiond_hash = hashlib.sha256(self.password.encode()).hexdigest()
        admin_hash = hashlib.sha256(self.admin_password.encode()).hexdigest()
        acl_lines = [
            # The default user can do nothing: every client must authenticate as a named user.
            "user default off resetkeys resetchannels -@all",
            _acl_rule_for_server(sessiond_acl_rule(sessiond_hash), _redis_version()),
            f"user {ADMIN_USERNAME} on #{admin_hash} ~* &* +@all",
        ]
        self.acl_path.write_text("\n".join(acl_lines) + "\n")
        self.acl_path.chmod(0o600)
        conf = [
            "bind 127.0.0.1",
            "protected-mode yes",
            f"port {self.port}",
            "daemonize no",
            f'dir "{self.dir}"',
            f'logfile "{self.log_path}"',
            f'aclfile "{self.acl_path}"',
            f"maxmemory {self.maxmemory}",
            f"maxmemory-policy {self.maxmemory_policy}",
            "appendonly yes",
            f"appendfsync {self.appendfsync}",
            'save "900 1 300 10 60 10000"' if self.rdb else 'save ""',
            "dbfilename dump.rdb",
        ]
        self.config_path.write_text("\n".join(conf) + "\n")
        self.config_path.chmod(0o600)

    def _client(self, username: str, password: str, timeout: float) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            username=username,
            password=password,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # No silent retries: a test that stops or freezes a store must see the failure at once.
            retry=Retry(NoBackoff(), 0),
        )

    def admin_client(self, *, timeout: float = 5.0) -> redis.Redis:
        """A client logged in as the all-powerful admin user (for tests: fill, inspect, INFO)."""
        return self._client(ADMIN_USERNAME, self.admin_password, timeout)

    def sessiond_client(self, *, timeout: float = 5.0) -> redis.Redis:
        """A client logged in as the daemon's restricted ``sessiond`` user."""
        return self._client(SESSIOND_USERNAME, self.password, timeout)

    def start(self, timeout: float = 10) -> None:
        if self.running:
            return
        binary = _redis_server_binary()
        self._proc = subprocess.Popen(
            [binary, str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
        )
        self._paused = False
        deadline = time.monotonic() + timeout
        client = self.admin_client(timeout=1.0)
        try:
            while True:
                if self._proc.poll() is not None:
                    raise StackError(
                        f"redis {self.name} exited with {self._proc.returncode}: {_log_tail(self.log_path)}"
                    )
                try:
                    # PING answers during AOF loading with an error; wait until data is loaded.
                    if client.ping() and client.info("persistence").get("loading") == 0:
                        return
                except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
                    pass
                if time.monotonic() > deadline:
                    self.kill9()
                    raise StackError(f"redis {self.name} not ready in {timeout}s: {_log_tail(self.log_path)}")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM and wait (Redis fsyncs the AOF and exits)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self.resume()
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            _wait_process(proc, timeout)
        self._proc = None

    def kill9(self) -> None:
        """SIGKILL: no shutdown work at all, as after a crash or an OOM kill."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=10)
        self._proc = None
        self._paused = False

    def pause(self) -> None:
        """SIGSTOP: the port stays open but nothing answers (a hung store)."""
        os.kill(self.pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        if self._paused and self.running:
            os.kill(self.pid, signal.SIGCONT)
        self._paused = False

    def restart(self, timeout: float = 10) -> None:
        """Start again with the same dir, port and config: the data comes back from the AOF."""
        self.stop()
        self.start(timeout=timeout)


class TlsRedisServer:
    """A TLS-only ``redis-server`` on 127.0.0.1, as the bundle runs it: TLS 1.3, client certificates
    from ``client_ca`` required, no plaintext port, no persistence. PEM data is written into ``dir``."""

    def __init__(self, dir: Path, *, cert: bytes, key: bytes, client_ca: bytes, timeout: float = 10) -> None:
        dir.mkdir(parents=True, exist_ok=True)
        for name, data in (("server.crt", cert), ("server.key", key), ("client-ca.crt", client_ca)):
            (dir / name).write_bytes(data)
        (dir / "server.key").chmod(0o600)
        self.port = find_free_port()
        self.log_path = dir / "redis.log"
        self._proc = subprocess.Popen(
            [_redis_server_binary(), "--port", "0", "--bind", "127.0.0.1", "--tls-port", str(self.port),
             "--tls-cert-file", str(dir / "server.crt"), "--tls-key-file", str(dir / "server.key"),
             "--tls-ca-cert-file", str(dir / "client-ca.crt"), "--tls-auth-clients", "yes",
             "--tls-protocols", "TLSv1.3", "--save", "", "--appendonly", "no", "--dir", str(dir),
             "--logfile", str(self.log_path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError as exc:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise StackError(f"redis-server (TLS) did not start: {_log_tail(self.log_path)}") from exc
                time.sleep(0.05)

    def stop(self, timeout: float = 10) -> None:
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.terminate()
            _wait_process(self._proc, timeout)


def start_store_pair(
    workdir: Path, *, session_maxmemory: str = "64mb", revocation_maxmemory: str = "64mb"
) -> tuple[RedisServer, RedisServer]:
    """The session store (may evict, AOF everysec + RDB) and the revocation store (never evicts,
    AOF fsync always); both started. Returns ``(sessions, revocations)``."""
    sessions = RedisServer(
        "sessions",
        workdir / "redis-sessions",
        maxmemory=session_maxmemory,
        maxmemory_policy="allkeys-lru",
        appendfsync="everysec",
        rdb=True,
    )
    revocations = RedisServer(
        "revocations",
        workdir / "redis-revocations",
        maxmemory=revocation_maxmemory,
        maxmemory_policy="noeviction",
        appendfsync="always",
        rdb=False,
    )
    sessions.start()
    try:
        revocations.start()
    except BaseException:
        sessions.stop()
        raise
    return sessions, revocations


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        # JSON string escapes are a subset of TOML basic-string escapes.
        return json.dumps(str(value))
    if isinstance(value, Sequence):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def render_toml(sections: Mapping[str, Mapping[str, Any]]) -> str:
    """A TOML document of flat sections (all the daemon's config needs)."""
    out: list[str] = []
    for section, values in sections.items():
        out.append(f"[{section}]")
        for key, value in values.items():
            if value is None:
                continue
            bare = key.replace("-", "").replace("_", "").isalnum()
            out.append(f"{key if bare else json.dumps(key)} = {_toml_value(value)}")
        out.append("")
    return "\n".join(out)


def write_config(
    path: Path,
    *,
    sessions: RedisServer,
    revocations: RedisServer,
    keys_dir: Path,
    listen: str,
    admin_listen: str,
    **overrides: dict[str, Any],
) -> Path:
    """Write a daemon config (TOML, per the contract) for the given stores; ``overrides`` maps a
    section name to keys merged over the defaults, e.g. ``cache={"ttl": 0}``."""
    sections: dict[str, dict[str, Any]] = {
        "server": {"listen": listen, "admin_listen": admin_listen, "workers": 1, "drain_timeout": 5.0},
        "tokens": {
            "issuer": DEFAULT_ISSUER,
            "audience": list(DEFAULT_AUDIENCE),
            "mode": "jwt",
            "algorithm": "ES256",
            "ttl": 900,
            "idle_timeout": 1800,
            "absolute_timeout": 43200,
            "clock_skew": 60,
        },
        "keys": {"dir": str(keys_dir)},
        "store": {
            "sessions_url": sessions.url,
            "revocations_url": revocations.url,
            "timeout": 0.25,
            "pool_size": 16,
        },
        "cache": {"ttl": 2.0},
        # Tests and the demo do not depend on the host's time service.
        "clock": {"check": "none"},
        "log": {"level": "info", "salt_file": str(path.parent / "log-salt")},
    }
    for section, values in overrides.items():
        sections.setdefault(section, {}).update(values)
    salt = Path(sections["log"]["salt_file"])
    if not salt.exists():
        salt.parent.mkdir(parents=True, exist_ok=True)
        salt.write_text(secrets.token_hex(32) + "\n")
        salt.chmod(0o600)
    path.write_text(render_toml(sections))
    path.chmod(0o600)
    return path


def _listen_url(listen: str) -> str:
    if listen.startswith("unix:"):
        return "http://ostiary"
    return f"http://{listen}"


def _client_for(listen: str, timeout: float) -> httpx.Client:
    if listen.startswith("unix:"):
        transport = httpx.HTTPTransport(uds=listen.removeprefix("unix:"))
        return httpx.Client(transport=transport, base_url="http://ostiary", timeout=timeout)
    return httpx.Client(base_url=_listen_url(listen), timeout=timeout)


class Daemon:
    """One ``ostiary serve`` process with its config, log file and HTTP clients."""

    def __init__(
        self,
        config_path: Path,
        *,
        listen: str,
        admin_listen: str,
        log_path: Path | None = None,
        env: Mapping[str, str] | None = None,
        http_timeout: float = 5.0,
    ) -> None:
        self.config_path = config_path
        self.listen = listen
        self.admin_listen = admin_listen
        self.log_path = log_path or config_path.with_suffix(".log")
        self.env = dict(env or {})
        self.http_timeout = http_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._client: httpx.Client | None = None
        self._admin_client: httpx.Client | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise StackError("daemon is not running")
        return self._proc.pid

    @property
    def base_url(self) -> str:
        return _listen_url(self.listen)

    @property
    def admin_socket(self) -> Path:
        if not self.admin_listen.startswith("unix:"):
            raise StackError(f"admin API listens on {self.admin_listen}, not a unix socket")
        return Path(self.admin_listen.removeprefix("unix:"))

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log(self) -> str:
        return _log_tail(self.log_path, limit=1_000_000)

    def start(self, timeout: float = 15) -> None:
        """Start the process and wait until GET /healthz answers 200."""
        if self.running:
            return
        env = dict(os.environ)
        env.update(self.env)
        log = self.log_path.open("ab")
        try:
            self._proc = subprocess.Popen(
                [*ostiary_command(), "serve", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.config_path.parent,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        with _client_for(self.listen, timeout=1.0) as probe:
            while True:
                code = self._proc.poll()
                if code is not None:
                    raise DaemonStartError(
                        f"ostiary serve exited with {code}: {_log_tail(self.log_path)}", code, self.log()
                    )
                with contextlib.suppress(httpx.TransportError):
                    if probe.get("/healthz").status_code == 200:
                        return
                if time.monotonic() > deadline:
                    self.kill()
                    raise DaemonStartError(
                        f"ostiary serve did not answer /healthz in {timeout}s: {_log_tail(self.log_path)}",
                        None,
                        self.log(),
                    )
                time.sleep(0.05)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit on its own; returns its exit code."""
        if self._proc is None:
            raise StackError("daemon was never started")
        return self._proc.wait(timeout=timeout)

    def _close_clients(self) -> None:
        for client in (self._client, self._admin_client):
            if client is not None:
                client.close()
        self._client = None
        self._admin_client = None

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM (the daemon drains) and wait; returns the exit code."""
        self._close_clients()
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            _wait_process(proc, timeout)
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL, no draining."""
        self._close_clients()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=10)

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def sighup(self) -> None:
        """Ask the daemon to reload keys and config."""
        self.signal(signal.SIGHUP)

    def client(self) -> httpx.Client:
        """A keep-alive client for the public API (one per Daemon, reused)."""
        if self._client is None:
            self._client = _client_for(self.listen, self.http_timeout)
        return self._client

    def admin_client(self) -> httpx.Client:
        """A keep-alive client for the admin API."""
        if self._admin_client is None:
            self._admin_client = _client_for(self.admin_listen, self.http_timeout)
        return self._admin_client

    def get(self, path: str, headers: Mapping[str, str] | None = None) -> httpx.Response:
        return self.client().get(path, headers=dict(headers or {}))

    def validate(
        self,
        token: str | None,
        *,
        ip: str | None = None,
        user_agent: str | None = None,
    ) -> httpx.Response:
        """GET /v1/validate as nginx would send it (bearer token, X-Real-IP, User-Agent)."""
        headers: dict[str, str] = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if ip is not None:
            headers["X-Real-IP"] = ip
        if user_agent is not None:
            headers["User-Agent"] = user_agent
        return self.get("/v1/validate", headers=headers)

    def admin(self, method: str, path: str, json: Any = None) -> httpx.Response:
        return self.admin_client().request(method, path, json=json)

    def issue(self, sub: str, **fields: Any) -> dict[str, Any]:
        """POST /v1/sessions on the admin API; raises unless it answers 201."""
        response = self.admin("POST", "/v1/sessions", json={"sub": sub, "claims": {}, **fields})
        if response.status_code != 201:
            raise StackError(f"issue failed: {response.status_code} {response.text}")
        body: dict[str, Any] = response.json()
        return body


class LocalStack:
    """A temporary work dir with generated keys, a started store pair and the daemons we start.

    Use as a context manager; ``close()`` ends every process it started, even after a failure.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        algorithm: str = "ES256",
        session_maxmemory: str = "64mb",
        keep_workdir: bool = False,
    ) -> None:
        self._own_workdir = workdir is None
        # Short /tmp path: unix socket paths are limited to about 100 bytes.
        self.workdir = workdir if workdir is not None else Path(tempfile.mkdtemp(prefix="ost-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o700)
        self.algorithm = algorithm
        self.session_maxmemory = session_maxmemory
        self.keep_workdir = keep_workdir
        self.keys_dir = self.workdir / "keys"
        self.kid = ""
        self.sessions: RedisServer | None = None
        self.revocations: RedisServer | None = None
        self.daemons: list[Daemon] = []
        self._count = 0
        self._started = False

    def start(self) -> LocalStack:
        if self._started:
            return self
        self._started = True
        try:
            self.kid = generate_key(self.keys_dir, self.algorithm)
            self.sessions, self.revocations = start_store_pair(self.workdir, session_maxmemory=self.session_maxmemory)
        except BaseException:
            self.close()
            raise
        return self

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def stores(self) -> tuple[RedisServer, RedisServer]:
        if self.sessions is None or self.revocations is None:
            raise StackError("LocalStack is not started")
        return self.sessions, self.revocations

    def new_keys_dir(self, alg: str, *, bits: int | None = None) -> tuple[Path, str]:
        """A further key directory holding one active key of ``alg``; returns (dir, kid)."""
        self._count += 1
        directory = self.workdir / f"keys-{alg.lower()}-{self._count}"
        return directory, generate_key(directory, alg, bits)

    def prepare_daemon(self, *, env: Mapping[str, str] | None = None, **overrides: dict[str, Any]) -> Daemon:
        """Write a config for a new daemon on a free port (admin API on a unix socket); not started."""
        sessions, revocations = self.stores()
        self._count += 1
        home = self.workdir / f"d{self._count}"
        home.mkdir(mode=0o700)
        listen = f"127.0.0.1:{find_free_port()}"
        admin_listen = f"unix:{home / 'admin.sock'}"
        config = dict(overrides)
        # One daemon secret per stack, as the bundle distributes one to every session node.
        config["log"] = {"salt_file": str(self.workdir / "log-salt"), **config.get("log", {})}
        config.setdefault("tokens", {})
        config["tokens"] = {"algorithm": self.algorithm, **config["tokens"]}
        path = write_config(
            home / "ostiary.toml",
            sessions=sessions,
            revocations=revocations,
            keys_dir=self.keys_dir,
            listen=listen,
            admin_listen=admin_listen,
            **config,
        )
        daemon = Daemon(path, listen=listen, admin_listen=admin_listen, log_path=home / "daemon.log", env=env)
        self.daemons.append(daemon)
        return daemon

    def daemon(
        self, *, env: Mapping[str, str] | None = None, timeout: float = 30, **overrides: dict[str, Any]
    ) -> Daemon:
        """Start a daemon sharing this stack's stores and keys; ``overrides`` as for write_config."""
        daemon = self.prepare_daemon(env=env, **overrides)
        daemon.start(timeout=timeout)
        return daemon

    def close(self) -> None:
        """Stop every daemon, then both stores (by PID), then remove the work dir."""
        errors: list[BaseException] = []
        for daemon in self.daemons:
            try:
                daemon.stop(timeout=10)
            except BaseException as exc:  # keep going: the other processes must still end
                errors.append(exc)
        self.daemons.clear()
        for store in (self.sessions, self.revocations):
            if store is None:
                continue
            try:
                store.stop()
            except BaseException as exc:
                errors.append(exc)
        if self._own_workdir and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if errors:
            raise errors[0]
