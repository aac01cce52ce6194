"""The control-node key store: CA, issuance, renewal, encryption at rest, stable passwords."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from ostiary.keystore import PASSPHRASE_ENV, ControlKeyStore, KeyStoreError

PASSPHRASE = b"correct horse battery staple"


class Clock:
    """A settable clock: renewal is tested by moving time, not by waiting."""

    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> ControlKeyStore:
    return ControlKeyStore(tmp_path / "ks", PASSPHRASE, now=clock)


def test_ca_is_ecdsa_p256_and_stable(store: ControlKeyStore, tmp_path: Path) -> None:
    pem = store.ca_certificate()
    ca = x509.load_pem_x509_certificate(pem)
    key = ca.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    ca.verify_directly_issued_by(ca)
    # A second store on the same directory sees the same CA.
    assert ControlKeyStore(tmp_path / "ks", PASSPHRASE).ca_certificate() == pem


def test_issue_server_and_client(store: ControlKeyStore) -> None:
    ca = x509.load_pem_x509_certificate(store.ca_certificate())
    cert_pem, key_pem = store.certificate("gateway", ["gw.example.internal", "127.0.0.1"], "server")
    cert = x509.load_pem_x509_certificate(cert_pem)
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["gw.example.internal"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime <= dt.timedelta(days=90, minutes=5)
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()

    client_pem, _ = store.certificate("sessiond-redis-client", ["sessiond"], "client")
    client = x509.load_pem_x509_certificate(client_pem)
    assert list(client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]


def test_stored_certificate_returned_until_30_days_remain(store: ControlKeyStore, clock: Clock) -> None:
    first = store.certificate("redis", ["redis.internal"], "server")
    clock.now += dt.timedelta(days=59)  # 31 days left: keep
    assert store.certificate("redis", ["redis.internal"], "server") == first
    clock.now += dt.timedelta(days=2)  # 29 days left: renew, with a fresh key
    renewed = store.certificate("redis", ["redis.internal"], "server")
    assert renewed[0] != first[0] and renewed[1] != first[1]
    cert = x509.load_pem_x509_certificate(renewed[0])
    assert cert.not_valid_after_utc - clock.now > dt.timedelta(days=89)
    # Stable again after the renewal.
    assert store.certificate("redis", ["redis.internal"], "server") == renewed


def test_changed_sans_or_usage_reissue(store: ControlKeyStore) -> None:
    first = store.certificate("gateway", ["a.internal"], "server")
    second = store.certificate("gateway", ["a.internal", "b.internal"], "server")
    assert second[0] != first[0]
    third = store.certificate("gateway", ["a.internal", "b.internal"], "client")
    assert third[0] != second[0]


def test_private_material_encrypted_at_rest(store: ControlKeyStore, tmp_path: Path) -> None:
    store.ca_certificate()
    _, key_pem = store.certificate("gateway", ["gw.internal"], "server")
    password = store.redis_password("sessiond")
    root = tmp_path / "ks"
    key_files = [root / "ca" / "ca.key", root / "certs" / "gateway.key"]
    for path in key_files:
        content = path.read_bytes()
        assert b"BEGIN ENCRYPTED PRIVATE KEY" in content
        assert b"BEGIN PRIVATE KEY" not in content and b"BEGIN EC PRIVATE KEY" not in content
        assert path.stat().st_mode & 0o077 == 0
        with pytest.raises(TypeError):
            serialization.load_pem_private_key(content, password=None)
    assert key_pem not in (root / "certs" / "gateway.key").read_bytes()
    for path in root.rglob("*"):
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path
    # Wrong passphrase: refused clearly, nothing decrypted.
    wrong = ControlKeyStore(root, b"not the passphrase")
    with pytest.raises(KeyStoreError):
        wrong.certificate("gateway", ["gw.internal"], "server")
    with pytest.raises(KeyStoreError):
        wrong.redis_password("sessiond")


def test_passwords_stable_and_distinct(store: ControlKeyStore, tmp_path: Path) -> None:
    a = store.redis_password("sessiond")
    b = store.redis_password("admin")
    assert a != b and len(a) >= 40
    again = ControlKeyStore(tmp_path / "ks", PASSPHRASE)
    assert again.redis_password("sessiond") == a
    assert again.redis_password("admin") == b


def test_passphrase_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    with pytest.raises(KeyStoreError, match=PASSPHRASE_ENV):
        ControlKeyStore(tmp_path / "ks", None)
    monkeypatch.setenv(PASSPHRASE_ENV, PASSPHRASE.decode())
    pw = ControlKeyStore(tmp_path / "ks", None).redis_password("sessiond")
    assert ControlKeyStore(tmp_path / "ks", PASSPHRASE).redis_password("sessiond") == pw


@pytest.mark.parametrize(
    ("name", "sans", "usage", "days"),
    [
        ("../escape", ["x"], "server", 90),
        ("ok", [], "server", 90),
        ("ok", ["x"], "both", 90),
        ("ok", ["x"], "server", 30),
        ("ok", ["x"], "server", 400),
    ],
)
def test_bad_requests_refused(
    store: ControlKeyStore, name: str, sans: list[str], usage: str, days: int
) -> None:
    with pytest.raises(KeyStoreError):
        store.certificate(name, sans, usage, days)  # type: ignore[arg-type]


def test_jwt_keys_encrypted_at_rest_and_usable_on_a_host(store: ControlKeyStore, tmp_path: Path) -> None:
    from ostiary.keys import load_keyring

    store.ensure_jwt_key("ES256")
    store.ensure_jwt_key("ES256")  # idempotent: still one key
    stored = [p for p in store.jwt_dir.glob("*.key")]
    assert len(stored) == 1
    assert b"BEGIN ENCRYPTED PRIVATE KEY" in stored[0].read_bytes()
    host_dir = tmp_path / "host-keys"
    host_dir.mkdir()
    for name, content in store.jwt_host_files().items():
        (host_dir / name).write_bytes(content)
        (host_dir / name).chmod(0o600)
    ring = load_keyring(host_dir)  # no passphrase on the host: the daemon reads it as is
    assert ring.active.kid == stored[0].stem
    kid = store.add_next_jwt_key("ES256")
    jwks = store.jwks().decode()
    assert kid in jwks and ring.active.kid in jwks
    store.rotate_jwt_keys(max_token_lifetime=900)
    assert json_state(store, kid) == "active"


def json_state(store: ControlKeyStore, kid: str) -> str:
    import json

    return str(json.loads((store.jwt_dir / f"{kid}.json").read_text())["state"])
