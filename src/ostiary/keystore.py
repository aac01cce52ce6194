"""Control-node key store: the internal CA, TLS certificates, Redis passwords and JWT signing keys.

Everything lives under one directory on the control node, outside the repository's tracked files
(``.ostiary/keystore`` by default). Private keys are stored as PKCS#8 PEM encrypted with the
operator's passphrase; passwords sit in one AES-GCM file whose key is derived from the same
passphrase with scrypt. The deploys ask this store for what a host needs and upload it in clear
text to that host only (mode 0600): the encryption protects the control node's copy at rest.

Layout::

    ca/ca.crt, ca/ca.key             ECDSA P-256 CA (key encrypted)
    certs/<name>.crt, <name>.key     issued leaf certificates (keys encrypted)
    secrets/passwords.enc            salt | nonce | AES-256-GCM({"redis": {user: password}})
    jwt/                             JWT signing keys in the daemon's key-directory format
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import json
import os
import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PASSPHRASE_ENV: Final = "OSTIARY_KEYSTORE_PASSPHRASE"  # noqa: S105 - a variable name, not a secret
DEFAULT_ROOT: Final = Path(".ostiary/keystore")
RENEW_BEFORE_DAYS: Final = 30  # a certificate with fewer days left is re-issued
MAX_LEAF_DAYS: Final = 397  # the CA/Browser Forum ceiling; the gateway uses 90
CA_DAYS: Final = 3650
_BACKDATE: Final = dt.timedelta(minutes=5)  # tolerate small clock differences between hosts
_NAME_RE: Final = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_SCRYPT_N: Final = 2**15  # ~32 MiB and ~0.1 s per derivation: slow for guessing, fine for deploys
_SALT_LEN: Final = 16
_NONCE_LEN: Final = 12
_PASSWORDS_AAD: Final = b"ostiary-keystore-passwords-v1"

Usage = Literal["server", "client"]


class KeyStoreError(RuntimeError):
    """The key store cannot do what was asked (no passphrase, wrong passphrase, bad input)."""


def default_root(project_dir: Path | None = None) -> Path:
    """``.ostiary/keystore`` under the project (git-ignored), or under the current directory."""
    return (project_dir or Path.cwd()) / DEFAULT_ROOT


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _atomic_write(path: Path, content: bytes, mode: int) -> None:
    """Write via a temp file and rename, so a crash never leaves half a key behind."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _general_name(san: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(san))
    except ValueError:
        return x509.DNSName(san)


def _cert_sans(cert: x509.Certificate) -> set[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    names = {str(n) for n in ext.get_values_for_type(x509.DNSName)}
    names |= {str(ip) for ip in ext.get_values_for_type(x509.IPAddress)}
    return names


def _cert_usage(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    try:
        return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return set()


_USAGE_OID: Final[dict[str, x509.ObjectIdentifier]] = {
    "server": ExtendedKeyUsageOID.SERVER_AUTH,
    "client": ExtendedKeyUsageOID.CLIENT_AUTH,
}


class ControlKeyStore:
    """The control node's CA, certificates, passwords and JWT keys under ``root``.

    ``passphrase`` encrypts every private key and password at rest; ``None`` reads it from the
    ``OSTIARY_KEYSTORE_PASSPHRASE`` environment variable (an empty or missing one is an error).
    ``now`` exists so that renewal can be tested without waiting two months.
    """

    def __init__(
        self,
        root: Path,
        passphrase: bytes | None,
        *,
        now: Callable[[], dt.datetime] = _utcnow,
    ) -> None:
        if passphrase is None:
            passphrase = os.environ.get(PASSPHRASE_ENV, "").encode()
        if not passphrase:
            raise KeyStoreError(
                f"the key store needs a passphrase: set {PASSPHRASE_ENV} (private keys are stored encrypted)"
            )
        self.root = Path(root)
        self._passphrase = passphrase
        self._now = now
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)

    # ----------------------------------------------------------------- locking and key files

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise writers (parallel deploys, two operators) on one lock file."""
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _store_key(self, path: Path, key: ec.EllipticCurvePrivateKey) -> None:
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(self._passphrase),
        )
        _atomic_write(path, pem, 0o600)

    def _load_key(self, path: Path) -> ec.EllipticCurvePrivateKey:
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=self._passphrase)
        except (ValueError, TypeError) as exc:
            raise KeyStoreError(f"cannot decrypt {path.name}: wrong passphrase or damaged file") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise KeyStoreError(f"{path.name} is not an EC private key")
        return key

    @staticmethod
    def _plain_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    # ----------------------------------------------------------------- certificate authority

    @property
    def _ca_cert_path(self) -> Path:
        return self.root / "ca" / "ca.crt"

    @property
    def _ca_key_path(self) -> Path:
        return self.root / "ca" / "ca.key"

    def ca_certificate(self) -> bytes:
        """The CA certificate (PEM), created with its key on first use."""
        with self._locked():
            return self._ensure_ca()[0].public_bytes(serialization.Encoding.PEM)

    def _ensure_ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        if self._ca_cert_path.exists() and self._ca_key_path.exists():
            cert = x509.load_pem_x509_certificate(self._ca_cert_path.read_bytes())
            return cert, self._load_key(self._ca_key_path)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Ostiary"),
                x509.NameAttribute(NameOID.COMMON_NAME, "Ostiary internal CA"),
            ]
        )
        now = self._now()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        # Key first: a certificate without its key would look like a usable CA.
        self._store_key(self._ca_key_path, key)
        _atomic_write(self._ca_cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return cert, key

    # ----------------------------------------------------------------- leaf certificates

    def certificate(self, name: str, sans: list[str], usage: Usage, days: int = 90) -> tuple[bytes, bytes]:
        """``(certificate PEM, private key PEM)`` for ``name``.

        Issued on the first call; re-issued with a fresh key when fewer than 30 days remain, when
        the CA changed, or when the requested SANs or usage differ from the stored certificate;
        otherwise the stored pair is returned unchanged (so a deploy re-run uploads nothing new).
        The returned key is unencrypted: it is meant for upload to the one host that needs it.
        """
        if not _NAME_RE.match(name):
            raise KeyStoreError(f"certificate name {name!r} must match {_NAME_RE.pattern}")
        if usage not in _USAGE_OID:
            raise KeyStoreError(f"usage must be 'server' or 'client', not {usage!r}")
        if not RENEW_BEFORE_DAYS < days <= MAX_LEAF_DAYS:
            raise KeyStoreError(f"days must be in ({RENEW_BEFORE_DAYS}, {MAX_LEAF_DAYS}], not {days}")
        if not sans:
            raise KeyStoreError("a certificate needs at least one subject alternative name")
        wanted = {str(_general_name(s).value) for s in sans}
        cert_path = self.root / "certs" / f"{name}.crt"
        key_path = self.root / "certs" / f"{name}.key"
        with self._locked():
            ca_cert, ca_key = self._ensure_ca()
            if cert_path.exists() and key_path.exists():
                cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
                if self._still_good(cert, ca_cert, wanted, usage):
                    return cert_path.read_bytes(), self._plain_pem(self._load_key(key_path))
            cert, key = self._issue(name, sans, usage, days, ca_cert, ca_key)
            self._store_key(key_path, key)
            _atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
            return cert.public_bytes(serialization.Encoding.PEM), self._plain_pem(key)

    def _still_good(self, cert: x509.Certificate, ca_cert: x509.Certificate, wanted: set[str], usage: Usage) -> bool:
        remaining = cert.not_valid_after_utc - self._now()
        return (
            remaining >= dt.timedelta(days=RENEW_BEFORE_DAYS)
            and cert.issuer == ca_cert.subject
            and self._signed_by(cert, ca_cert)
            and _cert_sans(cert) == wanted
            and _cert_usage(cert) == {_USAGE_OID[usage]}
        )

    @staticmethod
    def _signed_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
        try:
            cert.verify_directly_issued_by(ca_cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True

    def _issue(
        self,
        name: str,
        sans: list[str],
        usage: Usage,
        days: int,
        ca_cert: x509.Certificate,
        ca_key: ec.EllipticCurvePrivateKey,
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = self._now()
        # Deduplicate while keeping the caller's order (the first SAN is the primary name).
        general_names = list(dict.fromkeys(_general_name(s) for s in sans))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([_USAGE_OID[usage]]), critical=False)
            .add_extension(x509.SubjectAlternativeName(general_names), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return cert, key

    # ----------------------------------------------------------------- passwords

    @property
    def _passwords_path(self) -> Path:
        return self.root / "secrets" / "passwords.enc"

    def _derive(self, salt: bytes) -> bytes:
        return Scrypt(salt=salt, length=32, n=_SCRYPT_N, r=8, p=1).derive(self._passphrase)

    def _read_passwords(self) -> dict[str, dict[str, str]]:
        if not self._passwords_path.exists():
            return {}
        blob = self._passwords_path.read_bytes()
        salt, nonce, ciphertext = (
            blob[:_SALT_LEN],
            blob[_SALT_LEN : _SALT_LEN + _NONCE_LEN],
            blob[_SALT_LEN + _NONCE_LEN :],
        )
        try:
            plain = AESGCM(self._derive(salt)).decrypt(nonce, ciphertext, _PASSWORDS_AAD)
        except InvalidTag as exc:
            raise KeyStoreError("cannot decrypt the password file: wrong passphrase or damaged file") from exc
        data = json.loads(plain)
        if not isinstance(data, dict):
            raise KeyStoreError("the password file does not hold a JSON object")
        return data

    def _write_passwords(self, data: dict[str, dict[str, str]]) -> None:
        salt, nonce = os.urandom(_SALT_LEN), os.urandom(_NONCE_LEN)
        plain = json.dumps(data, sort_keys=True).encode()
        ciphertext = AESGCM(self._derive(salt)).encrypt(nonce, plain, _PASSWORDS_AAD)
        _atomic_write(self._passwords_path, salt + nonce + ciphertext, 0o600)

    def _stable_secret(self, section: str, name: str, what: str) -> str:
        """A random secret (256 bits) kept under ``section``/``name``: created once, stable afterwards."""
        if not _NAME_RE.match(name):
            raise KeyStoreError(f"{what} {name!r} must match {_NAME_RE.pattern}")
        with self._locked():
            data = self._read_passwords()
            values = data.setdefault(section, {})
            if name not in values:
                values[name] = secrets.token_urlsafe(32)
                self._write_passwords(data)
            return values[name]

    def redis_password(self, user: str) -> str:
        """The Redis ACL password of ``user``."""
        return self._stable_secret("redis", user, "user name")

    def shared_secret(self, name: str) -> str:
        """A secret shared by every host that gets it (e.g. the daemon secret of all session nodes)."""
        return self._stable_secret("shared", name, "secret name")

    # ----------------------------------------------------------------- JWT signing keys

    @property
    def jwt_dir(self) -> Path:
        """JWT signing keys in the daemon's key-directory format (``<kid>.json/.key/.pub``)."""
        return self.root / "jwt"

    def ensure_jwt_key(self, algorithm: str = "ES256", bits: int = 2048) -> None:
        """Make sure a signing key exists; the first one is created ``active``.

        The daemon's own key module writes the directory, so its format has one definition; the
        private keys are encrypted with the key store's passphrase (HS256 secrets excepted: the
        daemon's format stores them as text). Rotation stays an explicit step
        (:meth:`rotate_jwt_keys`, or ``ostiary keys generate`` then ``rotate`` on this directory).
        """
        from ostiary import keys

        with self._locked():
            if any(p.name != "jwks.json" for p in self.jwt_dir.glob("*.json")):
                return
            keys.generate(self.jwt_dir, algorithm, bits=bits, passphrase=self._passphrase)

    def add_next_jwt_key(self, algorithm: str = "ES256", bits: int = 2048) -> str:
        """A new key in state ``next`` (published in the JWKS before it signs); returns its kid."""
        from ostiary import keys

        with self._locked():
            return keys.generate(self.jwt_dir, algorithm, bits=bits, passphrase=self._passphrase).kid

    def rotate_jwt_keys(self, max_token_lifetime: int) -> None:
        """``next`` becomes ``active``; the old active key verifies for ``max_token_lifetime`` more."""
        from ostiary import keys

        with self._locked():
            keys.rotate(self.jwt_dir, max_token_lifetime=max_token_lifetime)

    def jwt_host_files(self) -> dict[str, bytes]:
        """The key directory as a session node gets it: private keys decrypted (mode 0600 there)."""
        out: dict[str, bytes] = {}
        if not self.jwt_dir.is_dir():
            return out
        for path in sorted(self.jwt_dir.iterdir()):
            if not path.is_file() or path.name.startswith("."):
                continue
            content = path.read_bytes()
            if path.suffix == ".key" and b"BEGIN ENCRYPTED PRIVATE KEY" in content:
                try:
                    key = serialization.load_pem_private_key(content, password=self._passphrase)
                except (ValueError, TypeError) as exc:
                    raise KeyStoreError(f"cannot decrypt {path.name}: wrong passphrase") from exc
                content = key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            out[path.name] = content
        return out

    def jwks(self) -> bytes:
        """The public JWKS of the JWT keys (active, next, still-verifying retired)."""
        from ostiary import keys

        return (json.dumps(keys.public_jwks(self.jwt_dir), indent=2, sort_keys=True) + "\n").encode()
