"""JWT signing keys on disk: generation, ``next -> active -> retired`` rotation, JWKS, loading.

A key directory holds, per key, ``<kid>.json`` (metadata), ``<kid>.key`` (private key PEM, or the
base64url secret for HS256; mode 0600) and ``<kid>.pub`` (public PEM; none for HS256).
``kid`` is the RFC 7638 thumbprint of the public JWK. Each key has exactly one algorithm.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import get_default_algorithms

State = Literal["next", "active", "retired"]
ALGORITHMS = ("ES256", "RS256", "EdDSA", "HS256")
RSA_BITS = (2048, 3072, 4096)
HS256_SECRET_BYTES = 32
DEFAULT_MAX_TOKEN_LIFETIME = 43200 + 300  # absolute timeout + the largest skew a daemon allows

_JWT_ALGS = get_default_algorithms()


class KeyFileError(Exception):
    """A key directory or key file cannot be used; the message says which and why."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x"),
                       "oct": ("k", "kty")}  # fmt: skip


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url) over the required members in lexicographic order."""
    members = _THUMBPRINT_MEMBERS[jwk["kty"]]
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def public_jwk(alg: str, public_key: Any) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(_JWT_ALGS[alg].to_jwk(public_key))
    return {k: v for k, v in jwk.items() if k in _THUMBPRINT_MEMBERS[jwk["kty"]]}


@dataclass(frozen=True)
class KeyMeta:
    kid: str
    alg: str
    state: State
    created_at: int
    activated_at: int | None = None
    retired_at: int | None = None
    verify_until: int | None = None  # retired keys: verify tokens until then, then drop

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=True) + "\n"


@dataclass
class LoadedKey:
    meta: KeyMeta
    signing_key: Any  # private key object, or bytes for HS256
    verify_key: Any  # public key object, or bytes for HS256
    jwk: dict[str, Any] | None  # public JWK (with kid/alg/use), None for HS256

    @property
    def kid(self) -> str:
        return self.meta.kid

    @property
    def alg(self) -> str:
        return self.meta.alg


@dataclass
class KeyRing:
    """The keys a daemon signs and verifies with, keyed by kid."""

    active: LoadedKey
    by_kid: dict[str, LoadedKey] = field(default_factory=dict)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.jwk for k in self.by_kid.values() if k.jwk is not None]}


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _read_metas(directory: Path) -> list[KeyMeta]:
    metas = []
    for path in sorted(directory.glob("*.json")):
        if path.name == "jwks.json":
            continue
        try:
            metas.append(KeyMeta(**json.loads(path.read_text())))
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"key metadata {path.name} is unreadable: {exc}") from exc
    return metas


def _write_meta(directory: Path, meta: KeyMeta) -> None:
    tmp = directory / f".{meta.kid}.json.tmp"
    tmp.write_text(meta.to_json())
    tmp.chmod(0o644)
    tmp.replace(directory / f"{meta.kid}.json")


def generate(directory: Path, alg: str, bits: int = 2048, passphrase: bytes | None = None) -> KeyMeta:
    """Create a key; it is ``active`` when the directory has none active yet, else ``next``."""
    if alg not in ALGORITHMS:
        raise KeyFileError(f"unsupported algorithm {alg!r}; choose one of {', '.join(ALGORITHMS)}")
    directory.mkdir(parents=True, exist_ok=True, mode=0o750)
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    private: Any
    if alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    elif alg == "RS256":
        if bits not in RSA_BITS:
            raise KeyFileError(f"RSA keys must have {', '.join(map(str, RSA_BITS))} bits, not {bits}")
        private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    elif alg == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        private = None
    if private is None:
        secret = secrets.token_bytes(HS256_SECRET_BYTES)
        kid = thumbprint({"kty": "oct", "k": b64url(secret)})
        private_bytes = (b64url(secret) + "\n").encode()
        public_bytes = None
    else:
        kid = thumbprint(public_jwk(alg, private.public_key()))
        private_bytes = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )
        public_bytes = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    has_active = any(m.state == "active" for m in _read_metas(directory))
    now = int(time.time())
    meta = KeyMeta(kid=kid, alg=alg, state="next" if has_active else "active", created_at=now,
                   activated_at=None if has_active else now)  # fmt: skip
    _write_private(directory / f"{kid}.key", private_bytes)
    if public_bytes is not None:
        (directory / f"{kid}.pub").write_bytes(public_bytes)
    _write_meta(directory, meta)
    return meta


def rotate(directory: Path, max_token_lifetime: int = DEFAULT_MAX_TOKEN_LIFETIME) -> tuple[KeyMeta, KeyMeta | None]:
    """Make the newest ``next`` key active; the old active key retires and verifies until
    ``max_token_lifetime`` seconds from now (the longest-lived token it can have signed)."""
    metas = _read_metas(directory)
    nexts = sorted((m for m in metas if m.state == "next"), key=lambda m: m.created_at)
    if not nexts:
        raise KeyFileError(f"no 'next' key in {directory}: run `ostiary keys generate` first")
    now = int(time.time())
    new_active = KeyMeta(**{**nexts[-1].__dict__, "state": "active", "activated_at": now})
    old = next((m for m in metas if m.state == "active"), None)
    retired = None
    if old is not None:
        retired = KeyMeta(**{**old.__dict__, "state": "retired", "retired_at": now,
                             "verify_until": now + max_token_lifetime})  # fmt: skip
        _write_meta(directory, retired)
    _write_meta(directory, new_active)
    return new_active, retired


def check_private_permissions(path: Path) -> None:
    mode = path.stat().st_mode
    if mode & 0o077:
        raise KeyFileError(
            f"private key {path.name} has mode {stat.S_IMODE(mode):04o}: readable by others than its "
            f"owner; run `chmod 0600` on it (refusing to use it)"
        )


def _load_one(directory: Path, meta: KeyMeta, passphrase: bytes | None) -> LoadedKey:
    key_path = directory / f"{meta.kid}.key"
    if not key_path.exists():
        raise KeyFileError(f"key {meta.kid}: private key file {key_path.name} is missing")
    check_private_permissions(key_path)
    raw = key_path.read_bytes()
    if meta.alg == "HS256":
        secret = b64url_decode(raw.decode().strip())
        if len(secret) < HS256_SECRET_BYTES:
            raise KeyFileError(f"key {meta.kid}: HS256 secret shorter than {HS256_SECRET_BYTES} bytes")
        if thumbprint({"kty": "oct", "k": b64url(secret)}) != meta.kid:
            raise KeyFileError(f"key {meta.kid}: the secret does not match its kid")
        return LoadedKey(meta=meta, signing_key=secret, verify_key=secret, jwk=None)
    try:
        private = serialization.load_pem_private_key(raw, password=passphrase)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"key {meta.kid}: cannot read the private key ({exc}); "
                        f"is the passphrase variable set?") from exc  # fmt: skip
    public = private.public_key()
    jwk = public_jwk(meta.alg, public)
    if thumbprint(jwk) != meta.kid:
        raise KeyFileError(f"key {meta.kid}: the private key does not match its kid (SIG_MISMATCH)")
    pub_path = directory / f"{meta.kid}.pub"
    if pub_path.exists():
        published = serialization.load_pem_public_key(pub_path.read_bytes())
        if public_jwk(meta.alg, published) != jwk:
            raise KeyFileError(f"key {meta.kid}: {pub_path.name} does not match the private key (SIG_MISMATCH)")
    full = {**jwk, "kid": meta.kid, "alg": meta.alg, "use": "sig"}
    return LoadedKey(meta=meta, signing_key=private, verify_key=public, jwk=full)


def load_keyring(directory: Path, passphrase: bytes | None = None, now: float | None = None) -> KeyRing:
    """Load active, next and still-verifying retired keys; refuse unsafe or inconsistent files."""
    if not directory.is_dir():
        raise KeyFileError(f"key directory {directory} does not exist; create keys with `ostiary keys generate`")
    now = time.time() if now is None else now
    metas = _read_metas(directory)
    actives = [m for m in metas if m.state == "active"]
    if len(actives) != 1:
        raise KeyFileError(f"key directory {directory} must hold exactly one active key, found {len(actives)}")
    by_kid: dict[str, LoadedKey] = {}
    for meta in metas:
        if meta.state == "retired" and (meta.verify_until or 0) < now:
            continue  # its tokens have all expired
        by_kid[meta.kid] = _load_one(directory, meta, passphrase)
    return KeyRing(active=by_kid[actives[0].kid], by_kid=by_kid)


def public_jwks(directory: Path, now: float | None = None) -> dict[str, Any]:
    """The public JWKS from the ``.pub`` files alone (no private key or passphrase needed)."""
    now = time.time() if now is None else now
    keys = []
    for meta in _read_metas(directory):
        if meta.alg == "HS256" or (meta.state == "retired" and (meta.verify_until or 0) < now):
            continue
        public = serialization.load_pem_public_key((directory / f"{meta.kid}.pub").read_bytes())
        keys.append({**public_jwk(meta.alg, public), "kid": meta.kid, "alg": meta.alg, "use": "sig"})
    return {"keys": keys}
