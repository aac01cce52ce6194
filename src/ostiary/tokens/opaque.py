"""Opaque session tokens: 256 random bits, never stored; records sealed under a key only the token gives.

The record's Redis key is a hash of the token and the record is AES-256-GCM encrypted under a key
derived from the token with HKDF, so a dump of the session store yields neither usable tokens nor
session contents.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..faults import TokenFault
from ..keys import b64url, b64url_decode

TOKEN_BYTES = 32
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")
_NONCE_BYTES = 12
RECORD_PREFIX = "ost:s:"


def new_token() -> str:
    return b64url(secrets.token_bytes(TOKEN_BYTES))


def looks_opaque(token: str) -> bool:
    return bool(_TOKEN_RE.match(token))


def token_bytes(token: str) -> bytes:
    if not looks_opaque(token):
        raise TokenFault("MALFORMED", "not an opaque token")
    raw = b64url_decode(token)
    if len(raw) != TOKEN_BYTES or b64url(raw) != token:
        raise TokenFault("MALFORMED", "not a canonical opaque token")
    return raw


def record_key(raw: bytes) -> str:
    """The Redis key of a token's record: a domain-separated SHA-256 of the token."""
    return RECORD_PREFIX + b64url(hashlib.sha256(b"ostiary/opaque/id\x00" + raw).digest())


def _aead(raw: bytes) -> AESGCM:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"ostiary/opaque/record v1").derive(raw)
    return AESGCM(key)


def seal(raw: bytes, record: dict[str, Any]) -> bytes:
    nonce = os.urandom(_NONCE_BYTES)
    plaintext = json.dumps(record, separators=(",", ":")).encode()
    return nonce + _aead(raw).encrypt(nonce, plaintext, record_key(raw).encode())


def unseal(raw: bytes, blob: bytes) -> dict[str, Any]:
    try:
        plaintext = _aead(raw).decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], record_key(raw).encode())
        record: dict[str, Any] = json.loads(plaintext)
    except (InvalidTag, ValueError) as exc:
        raise TokenFault("SESSION_UNKNOWN", "session record does not open with this token") from exc
    return record
