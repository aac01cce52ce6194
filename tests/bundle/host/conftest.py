"""Fixtures for the host-role proofs: temp roots, network namespaces, TLS material, passwords.

Everything is generated at run time and cleaned up by finalizers, also when a test fails.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

sys.path.insert(0, str(Path(__file__).resolve().parent))
from host_support import PROFILES, TlsMaterial, issue_cert, require_root, run

SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH


@pytest.fixture
def prefix() -> Iterator[Path]:
    """A short root prefix (unix socket paths must stay under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="ost-h1-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


_ns_counter = itertools.count()


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace (only loopback inside), deleted afterwards."""
    require_root()
    name = f"ost-h1-{os.getpid()}-{next(_ns_counter)}"
    created = run(["ip", "netns", "add", name])
    assert created.returncode == 0, created.stderr
    try:
        up = run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"])
        assert up.returncode == 0, up.stderr
        yield name
    finally:
        run(["ip", "netns", "delete", name])


@pytest.fixture(scope="session")
def tls() -> TlsMaterial:
    """A throwaway ECDSA P-256 CA with a Redis server certificate and a daemon client certificate."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ostiary test CA")])
    now = dt.datetime.now(dt.UTC)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    addresses = sorted({h["private_address"] for p in PROFILES.values() for h in p.values()})
    server = issue_cert(ca_key, ca_name, "redis", ["localhost", "127.0.0.1", "::1", *addresses], SERVER_AUTH)
    client = issue_cert(ca_key, ca_name, "sessiond", ["sessiond"], ExtendedKeyUsageOID.CLIENT_AUTH)
    return TlsMaterial(
        ca_pem=ca_cert.public_bytes(serialization.Encoding.PEM),
        server_cert_pem=server[0],
        server_key_pem=server[1],
        client_cert_pem=client[0],
        client_key_pem=client[1],
    )


@pytest.fixture
def redis_passwords() -> dict[str, str]:
    """Fresh ACL passwords for the daemon's user and the admin user."""
    from deploys import redis as redis_role
    from ostiary import acl

    return {
        acl.SESSIOND_USERNAME: secrets.token_urlsafe(24),
        str(redis_role.DEFAULTS["redis_admin_user"]): secrets.token_urlsafe(24),
    }
