"""The daemon's TLS to the stores: the configured CA alone is trusted, and one context serves every connection.

A real ``redis-server`` speaks TLS 1.3 only and requires client certificates, as the bundle sets it
up. Two CAs exist: "ours" (``store.tls_ca_file``) and "other", which the test makes the process's
system CA store through ``SSL_CERT_FILE``: the store must still be refused when it presents a
certificate from the other CA.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from ostiary.config import StoreSettings
from ostiary.keystore import ControlKeyStore
from ostiary.localstack import TlsRedisServer
from ostiary.sessiond.obs import Metrics
from ostiary.sessiond.store import StoreFault, Stores

PASSPHRASE = b"store-tls-test-passphrase"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | bytes]:
    root = tmp_path_factory.mktemp("pki")
    ours, other = ControlKeyStore(root / "ours", PASSPHRASE), ControlKeyStore(root / "other", PASSPHRASE)
    files: dict[str, Path | bytes] = {}
    for name, store in (("ours", ours), ("other", other)):
        ca = root / f"{name}-ca.crt"
        ca.write_bytes(store.ca_certificate())
        files[f"{name}_ca"] = ca
        files[f"{name}_server_cert"], files[f"{name}_server_key"] = store.certificate(
            f"redis-{name}", ["localhost", "127.0.0.1"], "server"
        )
    cert, key = ours.certificate("sessiond", ["sessiond"], "client")
    (root / "client.crt").write_bytes(cert)
    (root / "client.key").write_bytes(key)
    (root / "client.key").chmod(0o600)
    files["client_cert"], files["client_key"] = root / "client.crt", root / "client.key"
    return files


def _server(pki: dict[str, Path | bytes], ca: str, workdir: Path) -> TlsRedisServer:
    cert, key, client_ca = pki[f"{ca}_server_cert"], pki[f"{ca}_server_key"], pki["ours_ca"]
    assert isinstance(cert, bytes) and isinstance(key, bytes) and isinstance(client_ca, Path)
    return TlsRedisServer(workdir, cert=cert, key=key, client_ca=client_ca.read_bytes())


@pytest.fixture(scope="module")
def our_server(pki: dict[str, Path | bytes], tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedisServer]:
    server = _server(pki, "ours", tmp_path_factory.mktemp("redis-ours"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def other_server(pki: dict[str, Path | bytes], tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedisServer]:
    server = _server(pki, "other", tmp_path_factory.mktemp("redis-other"))
    yield server
    server.stop()


def _settings(pki: dict[str, Path | bytes], port: int, **extra: object) -> StoreSettings:
    url = f"rediss://127.0.0.1:{port}/0"
    return StoreSettings.model_validate({"sessions_url": url, "revocations_url": url, "timeout": 2.0,
                                         "tls_ca_file": str(pki["ours_ca"]), "tls_cert_file": str(pki["client_cert"]),
                                         "tls_key_file": str(pki["client_key"]), **extra})  # fmt: skip


async def _ping_both(stores: Stores, warm: int = 0) -> None:
    try:
        for store in ("sessions", "revocations"):
            await stores.ping(store)
        await stores.warm(warm, 10.0)
    finally:
        await stores.close()


def test_connections_share_one_context_and_never_build_a_default_one(
    pki: dict[str, Path | bytes], our_server: TlsRedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    stores = Stores(_settings(pki, our_server.port), Metrics())
    assert stores.ssl_context is not None and stores.ssl_context.minimum_version == ssl.TLSVersion.TLSv1_3

    def refuse() -> ssl.SSLContext:
        raise AssertionError("a connection built its own default TLS context (system CA store, per connection)")

    monkeypatch.setattr(ssl, "create_default_context", refuse)
    asyncio.run(_ping_both(stores, warm=6))  # 6 connections per store, each a full TLS 1.3 handshake


def test_a_certificate_from_another_ca_is_refused_even_if_the_system_trusts_it(
    pki: dict[str, Path | bytes], other_server: TlsRedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The other CA is now the process's system CA store: a context loading default certificates
    # (as ssl.create_default_context does) would accept the server.
    monkeypatch.setenv("SSL_CERT_FILE", str(pki["other_ca"]))
    probe = ssl.create_default_context()
    probe.load_cert_chain(str(pki["client_cert"]), str(pki["client_key"]))
    with (
        socket.create_connection(("127.0.0.1", other_server.port), timeout=5) as raw,
        probe.wrap_socket(raw, server_hostname="127.0.0.1"),
    ):
        pass  # the premise holds: the system store trusts the other CA
    stores = Stores(_settings(pki, other_server.port), Metrics())
    with pytest.raises(StoreFault) as info:
        asyncio.run(_ping_both(stores))
    assert info.value.code == "REDIS_CONN_REFUSED"
    assert "certificate verify failed" in info.value.detail
