"""Run the daemon: bind both listeners, check the stores, serve, reload on SIGHUP, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from ..clock import clock_status
from ..config import ConfigError, Settings, load_settings
from ..faults import TokenFault
from ..keys import KeyFileError
from .app import AdminApp, PublicApp
from .cache import RevocationListener, ValidationCache
from .obs import AuditLog, Metrics, load_salt
from .oidc import OidcVerifier
from .service import SessionService
from .store import Stores

STARTUP_STORE_TIMEOUT = 10.0  # seconds for the first store call at start-up (connection set-up included)


class StartupError(Exception):
    """The daemon must not start; the message says why and what to do."""


def bind(address: str, mode: str) -> socket.socket:
    if address.startswith("unix:"):
        path = Path(address[5:])
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise StartupError(f"{path} exists and is not a socket; refusing to replace it")
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o777)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, int(mode, 8))
    else:
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
    sock.listen(4096)
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # signals are ours, handled in Daemon
        yield


def _notify(message: str) -> None:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET."""
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return
    address = "\0" + target[1:] if target.startswith("@") else target
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.encode(), address)


class Daemon:
    def __init__(self, config_path: Path | None, settings: Settings) -> None:
        self.config_path = config_path
        self.settings = settings
        salt, shared = load_salt(settings.log.salt_file)
        self.log = AuditLog(settings.log.level, salt)
        if not shared:
            self.log.warning("log_salt_random", detail="log.salt_file missing: id hashes differ between daemons")
        self.metrics = Metrics()
        self.stores = Stores(settings.store, self.metrics)
        self.cache = ValidationCache(settings.cache.ttl, settings.cache.max_entries, self.metrics)
        try:
            self.service = SessionService(settings, self.stores, self.cache, self.metrics, self.log, salt)
        except KeyFileError as exc:
            raise StartupError(str(exc)) from exc
        if settings.tokens.algorithm != self.service.keyring.active.alg:
            raise StartupError(f"tokens.algorithm is {settings.tokens.algorithm} but the active key in "
                               f"{settings.keys.dir} is {self.service.keyring.active.alg}")  # fmt: skip
        self.listener = RevocationListener(self.stores, self.cache, self.log)
        oidc = OidcVerifier(settings.oidc, settings.tokens.clock_skew) if settings.oidc.enabled else None
        self.public = PublicApp(self.service)
        self.public.service_ready = self.ready
        self.admin = AdminApp(self.service, oidc)
        self._clock_cache: tuple[float, Any] = (0.0, None)
        self._servers: list[_Server] = []

    async def check_stores(self) -> None:
        """Refuse to run if the revocation store could evict (a revoked token must never come back)."""
        try:
            # The first call per store also opens its first connection (TCP, TLS, HELLO/AUTH): on a slow
            # (emulated) host that alone can take seconds, so start-up allows STARTUP_STORE_TIMEOUT.
            policy = await self.stores.eviction_policy("revocations", STARTUP_STORE_TIMEOUT)
            session_policy = await self.stores.eviction_policy("sessions", STARTUP_STORE_TIMEOUT)
        except TokenFault as exc:
            raise StartupError(f"cannot read the stores' eviction policy ({exc.code}: {exc.detail}); "
                               "start Redis and check store URLs, ACL user and TLS files") from exc  # fmt: skip
        if policy != "noeviction":
            raise StartupError(f"the revocation store runs maxmemory-policy {policy!r}; it must be 'noeviction' "
                               "so that no revocation is ever evicted")  # fmt: skip
        self.log.info("stores_checked", revocations_policy=policy, sessions_policy=session_policy)

    async def warm_stores(self) -> None:
        """Open the pools' further connections now, not on the request path (best effort)."""
        count = self.settings.store.warm_connections
        started = time.monotonic()
        try:
            await self.stores.warm(count, STARTUP_STORE_TIMEOUT)
        except TokenFault as exc:
            # Not a reason to refuse to run: a request that finds no open connection opens one itself.
            self.log.warning("stores_warm_incomplete", fault=exc.code, detail=exc.detail, wanted=count,
                             remedy="requests open the missing connections; check the stores' latency")  # fmt: skip
            return
        self.log.info("stores_warm", connections=count, seconds=round(time.monotonic() - started, 3))

    async def ready(self) -> dict[str, dict[str, Any]]:
        checks: dict[str, dict[str, Any]] = {}
        for store in ("sessions", "revocations"):
            try:
                await self.stores.ping(store)
                checks[f"store_{store}"] = {"ok": True}
            except TokenFault as exc:
                checks[f"store_{store}"] = {"ok": False, "fault": exc.code}
        checks["keys"] = {"ok": bool(self.service.keyring.by_kid), "loaded": len(self.service.keyring.by_kid)}
        now = time.monotonic()
        if now - self._clock_cache[0] > 5.0:
            status = await asyncio.to_thread(clock_status, self.service.settings.clock)
            self._clock_cache = (now, status)
        status = self._clock_cache[1]
        checks["clock"] = {"ok": status.synchronised, "detail": status.detail}
        checks["revocation_subscription"] = {"ok": self.cache.enabled or self.cache.ttl <= 0}
        return checks

    def _tls_options(self) -> dict[str, Any]:
        """Public API over TLS (a remote gateway), with client certificates required when a CA is set."""
        server = self.settings.server
        if not server.tls_cert_file:
            return {}
        options: dict[str, Any] = {"ssl_certfile": server.tls_cert_file, "ssl_keyfile": server.tls_key_file}
        if server.tls_client_ca_file:
            options |= {"ssl_ca_certs": server.tls_client_ca_file, "ssl_cert_reqs": ssl.CERT_REQUIRED}
        return options

    def reload(self) -> None:
        try:
            settings = load_settings(self.config_path)
            self.service.reload(settings)
        except (ConfigError, KeyFileError, ValueError) as exc:
            self.metrics.reloads.labels("failed").inc()
            self.log.error("reload_failed", error=str(exc), detail="keeping the previous keys and settings")
            return
        self.metrics.reloads.labels("ok").inc()
        self.log.info("reloaded", keys=sorted(self.service.keyring.by_kid), active=self.service.keyring.active.kid)

    def terminate(self) -> None:
        _notify("STOPPING=1")
        self.log.info("draining", timeout=self.settings.server.drain_timeout)
        for server in self._servers:
            server.should_exit = True

    async def run(self, sockets: tuple[socket.socket, socket.socket] | None = None) -> None:
        """Serve until SIGTERM. ``sockets`` are pre-bound by a supervisor that owns them (workers > 1)."""
        await self.check_stores()
        await self.warm_stores()
        owns_sockets = sockets is None
        if sockets is None:
            sockets = (bind(self.settings.server.listen, self.settings.server.socket_mode),
                       bind(self.settings.server.admin_listen, self.settings.server.socket_mode))  # fmt: skip
        public_sock, admin_sock = sockets
        self.listener.start()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGTERM, self.terminate)
        loop.add_signal_handler(signal.SIGINT, self.terminate)
        drain = max(1, int(self.settings.server.drain_timeout))
        for app in (self.public, self.admin):
            config = uvicorn.Config(app, loop="none", http="httptools", lifespan="off", access_log=False,
                                    log_level="warning", timeout_graceful_shutdown=drain, server_header=False,
                                    date_header=False, backlog=4096, timeout_keep_alive=75, proxy_headers=False,
                                    **(self._tls_options() if app is self.public else {}))  # fmt: skip
            config.load()
            if config.ssl is not None:
                config.ssl.minimum_version = ssl.TLSVersion.TLSv1_3
            self._servers.append(_Server(config))
        tasks = [asyncio.create_task(s.serve(sockets=[sock]))
                 for s, sock in zip(self._servers, (public_sock, admin_sock), strict=True)]  # fmt: skip
        while not all(s.started for s in self._servers):
            if any(t.done() for t in tasks):
                break
            await asyncio.sleep(0.01)
        self.log.info("serving", listen=self.settings.server.listen, admin_listen=self.settings.server.admin_listen,
                      mode=self.settings.tokens.mode, algorithm=self.settings.tokens.algorithm,
                      active_kid=self.service.keyring.active.kid)  # fmt: skip
        _notify("READY=1")
        try:
            await asyncio.gather(*tasks)
        finally:
            await self.listener.stop()
            await self.stores.close()
            for sock in (public_sock, admin_sock):
                with contextlib.suppress(OSError):
                    sock.close()
            for address in (self.settings.server.listen, self.settings.server.admin_listen):
                if owns_sockets and address.startswith("unix:"):
                    with contextlib.suppress(OSError):
                        os.unlink(address[5:])
            self.log.info("stopped")


def _run_worker(config_path: Path | None, settings: Settings,
                sockets: tuple[socket.socket, socket.socket] | None) -> int:  # fmt: skip
    import uvloop

    try:
        daemon = Daemon(config_path, settings)
        uvloop.run(daemon.run(sockets))
    except (ConfigError, StartupError) as exc:
        print(f"ostiary serve: refusing to start: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"ostiary serve: cannot listen: {exc}", file=sys.stderr)
        return 2
    return 0


def _supervise(config_path: Path | None, settings: Settings) -> int:
    """workers > 1: bind once, fork the workers, forward SIGHUP/SIGTERM, replace workers that crash."""
    try:
        sockets = (bind(settings.server.listen, settings.server.socket_mode),
                   bind(settings.server.admin_listen, settings.server.socket_mode))  # fmt: skip
    except (OSError, StartupError) as exc:
        print(f"ostiary serve: cannot listen: {exc}", file=sys.stderr)
        return 2
    children: set[int] = set()
    stopping = False

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:
            for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, signal.SIG_DFL)
            os._exit(_run_worker(config_path, settings, sockets))
        children.add(pid)

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
            signum = signal.SIGTERM
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    for _ in range(settings.server.workers):
        spawn()
    exit_code = 0
    recent: list[float] = []
    from prometheus_client import multiprocess

    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        children.discard(pid)
        with contextlib.suppress(Exception):
            multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
        code = os.waitstatus_to_exitcode(status)
        if stopping:
            continue
        recent = [t for t in recent if time.monotonic() - t < 30] + [time.monotonic()]
        if code == 2 or len(recent) > 3 * settings.server.workers:
            print(f"ostiary serve: worker {pid} exited with {code}; stopping", file=sys.stderr)
            exit_code = 2
            forward(signal.SIGTERM, None)
            continue
        print(f"ostiary serve: worker {pid} exited with {code}; starting a new one", file=sys.stderr)
        spawn()
    for address in (settings.server.listen, settings.server.admin_listen):
        if address.startswith("unix:"):
            with contextlib.suppress(OSError):
                os.unlink(address[5:])
    return exit_code


def serve(config_path: Path | None) -> int:
    """Entry point of ``ostiary serve``: exit 0 after a clean drain, 2 on a refused start."""
    try:
        settings = load_settings(config_path)
    except ConfigError as exc:
        print(f"ostiary serve: refusing to start: {exc}", file=sys.stderr)
        return 2
    if settings.server.workers > 1:
        return _supervise(config_path, settings)
    return _run_worker(config_path, settings, None)
