"""Helpers of the host-role proofs: profiles, host data, throwaway TLS material, subprocesses.

A module of its own (not conftest) so test modules can import it by a name no other suite uses.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the deploys package lives at the repo root, beside src/

from deploys import common  # noqa: E402

# The two shapes the bundle supports: one host in every group, and one host per group.
# Private addresses are loopback aliases so that services really bind them on this machine.
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "single": {
        "node1": {
            "groups": [common.GROUP_GATEWAYS, common.GROUP_SESSION_NODES, common.GROUP_REDIS_NODES],
            "private_address": "127.0.0.1",
        },
    },
    "split": {
        "gw1": {"groups": [common.GROUP_GATEWAYS], "private_address": "127.0.1.1"},
        "session1": {"groups": [common.GROUP_SESSION_NODES], "private_address": "127.0.1.2"},
        "redis1": {"groups": [common.GROUP_REDIS_NODES], "private_address": "127.0.1.3"},
    },
}


def hosts_in(profile: str, group: str) -> list[str]:
    return [name for name, h in PROFILES[profile].items() if group in h["groups"]]


def group_addresses(profile: str) -> dict[str, list[str]]:
    """What the firewall deploy reads from the inventory: group -> private addresses."""
    groups = (common.GROUP_GATEWAYS, common.GROUP_SESSION_NODES, common.GROUP_REDIS_NODES)
    return {g: [PROFILES[profile][h]["private_address"] for h in hosts_in(profile, g)] for g in groups}


def host_data(role: ModuleType, profile: str, host: str, prefix: Path | str, **overrides: Any) -> Any:
    """Like pyinfra's host.data: the role's DEFAULTS, then the host's inventory data, then overrides."""
    values: dict[str, Any] = dict(role.DEFAULTS)
    values.update({k: v for k, v in PROFILES[profile][host].items() if k != "groups"})
    values["ostiary_root_prefix"] = str(prefix)
    values.update(overrides)
    return SimpleNamespace(**values)


def write_files(files: dict[str, str]) -> None:
    for path, content in files.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(content)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(cmd: list[str], timeout: float = 30, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the host-role proofs need root (network namespaces, sshd -t, iptables)")


# ----------------------------------------------------------------------------- TLS material


@dataclass(frozen=True)
class TlsMaterial:
    ca_pem: bytes
    server_cert_pem: bytes
    server_key_pem: bytes
    client_cert_pem: bytes
    client_key_pem: bytes


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def issue_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    cn: str,
    sans: list[str],
    usage: x509.ObjectIdentifier,
) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    names: list[x509.GeneralName] = []
    for san in sans:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(san)))
        except ValueError:
            names.append(x509.DNSName(san))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)
