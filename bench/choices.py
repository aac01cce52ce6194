"""Measurements behind the dependency choices in docs/decisions.md.

Run: .venv/bin/python bench/choices.py
- HTTP server: uvicorn with httptools vs uvicorn with h11, a minimal ASGI answer, wrk on loopback.
- Redis client: redis-py asyncio with hiredis vs its pure-Python RESP3 parser, sequential GETs.
- Redis TLS connection set-up: redis-py's own per-connection TLS context vs the daemon's shared one
  (TLS 1.3, client certificate), with ``ssl.create_default_context()`` alone as the reference.
Everything runs on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ostiary.localstack import TlsRedisServer, find_free_port

APP = '''
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})
'''


def wrk(url: str, seconds: int = 5) -> float:
    out = subprocess.run(["wrk", "-t2", "-c32", f"-d{seconds}s", url], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return float(match.group(1)) if match else 0.0


def http_servers(tmp: Path) -> list[tuple[str, float]]:
    (tmp / "hello.py").write_text(APP)
    results = []
    for http in ("httptools", "h11"):
        port = find_free_port()
        proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--app-dir", str(tmp), "hello:app", "--port",
                                 str(port), "--http", http, "--loop", "uvloop", "--no-access-log", "--log-level",
                                 "warning"])  # fmt: skip
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if subprocess.run(["curl", "-sf", f"http://127.0.0.1:{port}/"], capture_output=True).returncode == 0:
                    break
                time.sleep(0.1)
            results.append((f"uvicorn + {http}, minimal ASGI answer (wrk -t2 -c32, 5 s)", wrk(f"http://127.0.0.1:{port}/")))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
    return results


async def redis_gets(port: int, parser: str, n: int = 5000) -> float:
    import redis.asyncio as aioredis
    from redis._parsers import _AsyncHiredisParser, _AsyncRESP3Parser

    cls = _AsyncHiredisParser if parser == "hiredis" else _AsyncRESP3Parser
    pool = aioredis.ConnectionPool(port=port, protocol=3, parser_class=cls)
    client = aioredis.Redis(connection_pool=pool)
    await client.set("ost:bench", b"x" * 200)
    for _ in range(200):
        await client.get("ost:bench")
    start = time.perf_counter()
    for _ in range(n):
        await client.get("ost:bench")
    elapsed = time.perf_counter() - start
    await client.aclose()
    return elapsed / n * 1e6


def redis_clients(tmp: Path) -> list[tuple[str, float]]:
    port = find_free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp)], stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(0.5)
        return [(f"redis-py asyncio GET round trip, {parser} parser (µs)", asyncio.run(redis_gets(port, parser)))
                for parser in ("hiredis", "python")]  # fmt: skip
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


async def tls_connects(port: int, files: dict[str, str], shared: bool, n: int = 40) -> float:
    """Mean ms for a new client to open one TLS connection and PING."""
    import redis.asyncio as aioredis

    from ostiary.config import StoreSettings
    from ostiary.sessiond.store import make_client, tls_context

    url = f"rediss://127.0.0.1:{port}/0"
    settings = StoreSettings.model_validate({"sessions_url": url, "revocations_url": url, "timeout": 5.0,
                                             "tls_ca_file": files["ca"], "tls_cert_file": files["cert"],
                                             "tls_key_file": files["key"]})  # fmt: skip
    context = tls_context(settings)
    started = time.perf_counter()
    for _ in range(n):
        if shared:
            client = make_client(url, settings, pool_size=1, ssl_context=context)
        else:
            client = aioredis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=files["ca"],
                                    ssl_certfile=files["cert"], ssl_keyfile=files["key"], protocol=3)  # fmt: skip
        await client.ping()
        await client.aclose()  # both clients own their pool: this closes the connection
    return (time.perf_counter() - started) / n * 1000


def tls_connections(tmp: Path) -> list[tuple[str, float]]:
    import ssl
    import timeit

    from ostiary.keystore import ControlKeyStore

    store = ControlKeyStore(tmp / "keystore", b"bench-only-passphrase")
    server_cert, server_key = store.certificate("redis", ["127.0.0.1"], "server")
    client_cert, client_key = store.certificate("sessiond", ["sessiond"], "client")
    files = {"ca": str(tmp / "ca.crt"), "cert": str(tmp / "client.crt"), "key": str(tmp / "client.key")}
    for name, data in (("ca", store.ca_certificate()), ("cert", client_cert), ("key", client_key)):
        Path(files[name]).write_bytes(data)
        Path(files[name]).chmod(0o600)
    server = TlsRedisServer(tmp / "redis-tls", cert=server_cert, key=server_key, client_ca=store.ca_certificate())
    try:
        default_ms = timeit.timeit(ssl.create_default_context, number=20) / 20 * 1000
        return [
            ("ssl.create_default_context() alone: loads the system CA store (ms)", default_ms),
            ("new TLS 1.3 connection + PING, redis-py's per-connection context (ms)",
             asyncio.run(tls_connects(server.port, files, shared=False))),
            ("new TLS 1.3 connection + PING, the daemon's shared context (ms)",
             asyncio.run(tls_connects(server.port, files, shared=True))),
        ]  # fmt: skip
    finally:
        server.stop()


def main() -> None:
    if not shutil.which("wrk"):
        sys.exit("wrk is missing: run scripts/setup.sh")
    tmp = Path(tempfile.mkdtemp(prefix="ostiary-choices-"))
    print(f"| measurement (nproc {os.cpu_count()}) | value |")
    print("|---|---:|")
    for name, value in http_servers(tmp) + redis_clients(tmp) + tls_connections(tmp):
        print(f"| {name} | {value:,.1f} |")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
