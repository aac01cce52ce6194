"""Issue, validate and revoke sessions: the daemon's logic, independent of HTTP."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import ipaddress
import json
import math
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..config import Settings
from ..faults import TokenFault
from ..keys import KeyRing, b64url, load_keyring
from ..tokens import opaque
from ..tokens.jwt import JwtPolicy, sign_jwt, verify_jwt
from .cache import Validated, ValidationCache
from .obs import AuditLog, Metrics
from .store import Stores, subject_hash

RESERVED_CLAIMS = frozenset({"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "sid", "ost_net", "ost_uah",
                             "ost_ip"})  # fmt: skip
MAX_SUBJECT_LENGTH = 256
LAST_SEEN_GRANULARITY = 30.0  # seconds: opaque last_seen is written back at most this often


def new_session_id() -> str:
    """128 random bits in base64url (22 characters), never starting with ``-``.

    An operator passes session ids on command lines (``ostiary sessions revoke ID``, ``grep``), where
    a leading ``-`` reads as an option; one id in 64 would start with it. Redrawing those leaves the
    first character uniform over the other 63 symbols: 127.98 bits of entropy instead of 128.
    """
    while True:
        sid = b64url(secrets.token_bytes(16))
        if not sid.startswith("-"):
            return sid


class BadRequest(Exception):
    """Client input that cannot be used: answered with 4xx ``{"error", "detail"}``."""

    def __init__(self, error: str, detail: str, status: int = 400) -> None:
        super().__init__(detail)
        self.error = error
        self.detail = detail
        self.status = status


def ua_hash(user_agent: str | None) -> str | None:
    if not user_agent:
        return None
    return b64url(hashlib.sha256(user_agent.encode("utf-8", "replace")).digest())[:22]


@dataclass(frozen=True)
class RequestContext:
    ip: str | None
    user_agent: str | None


@dataclass(frozen=True)
class Issued:
    token: str
    session_id: str
    expires_at: int


def _check_subject(sub: object) -> str:
    if not isinstance(sub, str) or not sub or len(sub) > MAX_SUBJECT_LENGTH or not sub.isprintable():
        raise BadRequest("invalid_subject", f"sub must be a printable string of 1..{MAX_SUBJECT_LENGTH} characters")
    return sub


def _check_cidr(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest("invalid_bind_cidr", "bind_cidr must be a CIDR string such as 203.0.113.0/24")
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError as exc:
        raise BadRequest("invalid_bind_cidr", f"bind_cidr {value[:64]!r} is not a network") from exc


def _derive(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


class SessionService:
    def __init__(self, settings: Settings, stores: Stores, cache: ValidationCache, metrics: Metrics,
                 log: AuditLog, secret: bytes) -> None:  # fmt: skip
        self.settings = settings
        # Keys derived from the daemon secret shared by all session nodes (log.salt_file): listing
        # metadata in the session store is sealed, first-seen addresses are stored as keyed hashes.
        self._meta_aead = AESGCM(_derive(secret, b"ostiary/store/metadata v1"))
        self._tag_key = _derive(secret, b"ostiary/store/address v1")
        # sid -> the session's first-seen "address tag|UA hash" as the store recorded it; it never
        # changes, so each worker asks the store once per session, not on every validation.
        self._first_seen_memo: dict[str, str] = {}
        self.stores = stores
        self.cache = cache
        self.metrics = metrics
        self.log = log
        self.keyring: KeyRing = self._load_keys(settings)
        self._refresh_policy()

    @staticmethod
    def _load_keys(settings: Settings) -> KeyRing:
        passphrase = os.environ.get(settings.keys.passphrase_env)
        return load_keyring(Path(settings.keys.dir), passphrase.encode() if passphrase else None)

    def _refresh_policy(self) -> None:
        t = self.settings.tokens
        self.policy = JwtPolicy(issuer=t.issuer, audience=frozenset(t.audience), clock_skew=t.clock_skew)
        self.metrics.keys_loaded.set(len(self.keyring.by_kid))

    def reload(self, settings: Settings) -> None:
        """SIGHUP: new keys and token settings; stores and listeners stay as they are."""
        keyring = self._load_keys(settings)
        if settings.tokens.algorithm != keyring.active.alg:
            raise ValueError(f"tokens.algorithm is {settings.tokens.algorithm} but the active key is "
                             f"{keyring.active.alg}")  # fmt: skip
        self.settings = settings
        self.keyring = keyring
        self.cache.ttl = settings.cache.ttl
        self._refresh_policy()

    @property
    def max_lifetime(self) -> int:
        t = self.settings.tokens
        return int(max(t.ttl, t.absolute_timeout) + t.clock_skew)

    # --- issue ---------------------------------------------------------------------------------
    async def issue(self, body: dict[str, Any], ctx: RequestContext) -> Issued:
        t = self.settings.tokens
        sub = _check_subject(body.get("sub"))
        claims = body.get("claims", {})
        if not isinstance(claims, dict):
            raise BadRequest("invalid_claims", "claims must be a JSON object")
        reserved = RESERVED_CLAIMS.intersection(claims)
        if reserved:
            raise BadRequest("invalid_claims", f"claims may not set reserved names: {', '.join(sorted(reserved))}")
        if len(json.dumps(claims)) > 4096:
            raise BadRequest("invalid_claims", "claims larger than 4096 bytes")
        mode = body.get("mode", t.mode)
        if mode not in ("jwt", "opaque"):
            raise BadRequest("invalid_mode", "mode must be 'jwt' or 'opaque'")
        ttl = body.get("ttl", t.ttl if mode == "jwt" else t.absolute_timeout)
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= t.absolute_timeout:
            raise BadRequest("invalid_ttl", f"ttl must be an integer from 1 to {t.absolute_timeout}")
        bind_cidr = _check_cidr(body.get("bind_cidr"))
        user_agent = body.get("user_agent", ctx.user_agent)
        if user_agent is not None and (not isinstance(user_agent, str) or len(user_agent) > 1024):
            raise BadRequest("invalid_user_agent", "user_agent must be a string of at most 1024 characters")
        ip = body.get("ip", ctx.ip)
        if ip is not None:
            try:
                ip = str(ipaddress.ip_address(ip))
            except ValueError as exc:
                raise BadRequest("invalid_ip", "ip must be an IP address") from exc
        extra = set(body) - {"sub", "claims", "mode", "ttl", "bind_cidr", "user_agent", "ip"}
        if extra:
            raise BadRequest("unknown_field", f"unknown field(s): {', '.join(sorted(extra)[:5])}")

        now = time.time()
        sid = new_session_id()
        expires_at = int(now) + ttl
        subh = subject_hash(sub)
        uah = ua_hash(user_agent)
        if mode == "jwt":
            payload: dict[str, Any] = {**claims, "iss": t.issuer, "sub": sub, "aud": t.audience if len(t.audience) > 1
                                       else t.audience[0], "exp": expires_at, "nbf": int(now), "iat": int(now),
                                       "jti": b64url(secrets.token_bytes(16)), "sid": sid}  # fmt: skip
            if bind_cidr:
                payload["ost_net"] = bind_cidr
            if uah:
                payload["ost_uah"] = uah
            if ip:
                payload["ost_ip"] = ip
            token = sign_jwt(payload, self.keyring.active)
        else:
            token = opaque.new_token()
            raw = opaque.token_bytes(token)
            record = {"sub": sub, "sid": sid, "claims": claims, "created_at": now, "last_seen": now,
                      "expires_at": expires_at, "bind_cidr": bind_cidr, "uah": uah, "ip": ip}  # fmt: skip
            await self.stores.put_opaque(opaque.record_key(raw), opaque.seal(raw, record),
                                         self._opaque_ttl(record, now))  # fmt: skip
        meta = {"session_id": sid, "mode": mode, "created_at": int(now), "last_seen": int(now),
                "expires_at": expires_at, "ip": ip, "user_agent": user_agent}  # fmt: skip
        await self.stores.put_meta(sid, subh, self._seal_meta(sid, meta), ttl, self.max_lifetime)
        self.metrics.issued.labels(mode).inc()
        self.log.audit("issue", session=self.log.hid(sid), subject=self.log.hid(sub), mode=mode,
                       expires_at=expires_at, ip=ip)  # fmt: skip
        return Issued(token=token, session_id=sid, expires_at=expires_at)

    def ip_tag(self, ip: str | None) -> str | None:
        if not ip:
            return None
        return b64url(hmac.new(self._tag_key, ip.encode(), hashlib.sha256).digest())[:22]

    def _seal_meta(self, sid: str, meta: dict[str, Any]) -> bytes:
        nonce = secrets.token_bytes(12)
        return nonce + self._meta_aead.encrypt(nonce, json.dumps(meta).encode(), f"ost:m:{sid}".encode())

    def _open_meta(self, sid: str, blob: bytes) -> dict[str, Any] | None:
        try:
            meta: dict[str, Any] = json.loads(self._meta_aead.decrypt(blob[:12], blob[12:], f"ost:m:{sid}".encode()))
        except (InvalidTag, ValueError):
            return None  # sealed by a daemon with another secret
        return meta

    def _opaque_ttl(self, record: dict[str, Any], now: float) -> int:
        # Kept until the absolute end, but gone after twice the idle limit without use.
        remaining = float(record["expires_at"]) - now
        idle_left = float(record["last_seen"]) + 2 * self.settings.tokens.idle_timeout - now
        return max(1, math.ceil(min(remaining, idle_left)))

    # --- validate ------------------------------------------------------------------------------
    async def validate(self, token: str, ctx: RequestContext) -> Validated:
        cached = self.cache.get(token)
        if cached is not None:
            self._check_binding(cached, ctx)
            if cached.expires_at + self.settings.tokens.clock_skew < time.time():
                raise TokenFault("JWT_EXPIRED" if cached.mode == "jwt" else "SESSION_UNKNOWN", "expired")
            return cached
        generation = self.cache.generation
        if "." in token:
            value = self._validate_jwt(token)
            if value.ip_tag is None or value.ua_hash is None:
                (revoked, subject_mark), value = await asyncio.gather(
                    self.stores.revocation_state(value.sid, value.subh), self._first_seen(value, ctx))
            else:
                revoked, subject_mark = await self.stores.revocation_state(value.sid, value.subh)
        else:
            value, revoked, subject_mark = await self._validate_opaque(token)
            if value.ip_tag is None or value.ua_hash is None:
                value = await self._first_seen(value, ctx)
        if revoked or (subject_mark is not None and value.issued_at < subject_mark):
            raise TokenFault("REVOKED", "session revoked")
        self._check_binding(value, ctx)
        self.cache.put(token, value, generation)
        return value

    async def _first_seen(self, value: Validated, ctx: RequestContext) -> Validated:
        """Sessions issued without an address or User-Agent are pinned to where they are first seen,
        so that a later change is noticed. A store that cannot be asked fails the validation (closed)."""
        pinned = self._first_seen_memo.get(value.sid)
        if pinned is None:
            mine = f"{self.ip_tag(ctx.ip) or ''}|{ua_hash(ctx.user_agent) or ''}"
            earlier = await self.stores.first_seen(value.sid, mine, int(value.expires_at - time.time()) + 1)
            pinned = earlier or mine
            if len(self._first_seen_memo) >= self.settings.cache.max_entries:
                self._first_seen_memo.pop(next(iter(self._first_seen_memo)))
            self._first_seen_memo[value.sid] = pinned
        tag, _, uah = pinned.partition("|")
        return dataclasses.replace(value, ip_tag=value.ip_tag or tag or None, ua_hash=value.ua_hash or uah or None)

    def _validate_jwt(self, token: str) -> Validated:
        claims = verify_jwt(token, self.keyring, self.policy)
        net = claims.get("ost_net")
        return Validated(sub=claims["sub"], sid=claims["sid"], subh=subject_hash(claims["sub"]),
                         expires_at=int(claims["exp"]), issued_at=float(claims["iat"]),
                         bind_cidr=net if isinstance(net, str) else None,
                         ua_hash=claims.get("ost_uah") if isinstance(claims.get("ost_uah"), str) else None,
                         ip_tag=self.ip_tag(claims["ost_ip"]) if isinstance(claims.get("ost_ip"), str) else None,
                         mode="jwt")  # fmt: skip

    async def _validate_opaque(self, token: str) -> tuple[Validated, bool, float | None]:
        raw = opaque.token_bytes(token)
        key = opaque.record_key(raw)
        blob = await self.stores.get_opaque(key)
        if blob is None:
            raise TokenFault("SESSION_UNKNOWN", "no such session")
        record = opaque.unseal(raw, blob)
        sid, sub = record["sid"], record["sub"]
        subh = subject_hash(sub)
        revoked, subject_mark = await self.stores.revocation_state(sid, subh)
        now = time.time()
        if now >= record["expires_at"]:
            raise TokenFault("SESSION_UNKNOWN", "session past its absolute timeout")
        if now - record["last_seen"] > self.settings.tokens.idle_timeout:
            await self.stores.delete_opaque(key)
            raise TokenFault("SESSION_IDLE_TIMEOUT", "idle too long")
        value = Validated(sub=sub, sid=sid, subh=subh, expires_at=int(record["expires_at"]),
                          issued_at=float(record["created_at"]), bind_cidr=record.get("bind_cidr"),
                          ua_hash=record.get("uah"), ip_tag=self.ip_tag(record.get("ip")), mode="opaque")  # fmt: skip
        if not revoked and now - record["last_seen"] >= min(LAST_SEEN_GRANULARITY,
                                                            self.settings.tokens.idle_timeout / 4):  # fmt: skip
            record["last_seen"] = now
            await self.stores.put_opaque(key, opaque.seal(raw, record), self._opaque_ttl(record, now))
        return value, revoked, subject_mark

    def _check_binding(self, value: Validated, ctx: RequestContext) -> None:
        if value.ua_hash is not None and ctx.user_agent is not None and ua_hash(ctx.user_agent) != value.ua_hash:
            self.metrics.hijack.labels("user_agent").inc()
            self.log.warning("hijack_suspicion", reason="user_agent", session=self.log.hid(value.sid))
        if value.ip_tag is not None and ctx.ip is not None and self.ip_tag(ctx.ip) != value.ip_tag:
            self.metrics.hijack.labels("ip").inc()
            self.log.warning("hijack_suspicion", reason="ip", session=self.log.hid(value.sid), ip=ctx.ip)
        if value.bind_cidr is not None:
            try:
                inside = ctx.ip is not None and ipaddress.ip_address(ctx.ip) in ipaddress.ip_network(value.bind_cidr)
            except ValueError:
                inside = False
            if not inside:
                raise TokenFault("BINDING_MISMATCH", "request from outside bind_cidr")

    # --- revoke and list -----------------------------------------------------------------------
    async def revoke_session(self, sid: str, reason: str = "admin") -> None:
        if not sid or len(sid) > 64 or not all(c.isalnum() or c in "-_" for c in sid):
            raise BadRequest("invalid_session_id", "session ids are base64url strings")
        await self.stores.revoke_session(sid, self.max_lifetime)
        self.cache.drop_session(sid)
        self.metrics.revocations.labels("session").inc()
        self.log.audit("revoke", session=self.log.hid(sid), reason=reason)
        try:
            await self.stores.forget_session(sid, None)
        except TokenFault as exc:  # the revocation stands; listing may show it until it expires
            self.log.warning("forget_session_failed", session=self.log.hid(sid), fault=exc.code)

    async def revoke_subject(self, sub: str) -> None:
        sub = _check_subject(sub)
        subh = subject_hash(sub)
        marker = math.ceil(time.time())  # tokens issued before this second are refused
        await self.stores.revoke_subject(subh, marker, self.max_lifetime)
        self.cache.drop_subject(subh)
        self.metrics.revocations.labels("subject").inc()
        self.log.audit("revoke_subject", subject=self.log.hid(sub))

    async def list_sessions(self, sub: str) -> list[dict[str, Any]]:
        sub = _check_subject(sub)
        subh = subject_hash(sub)
        entries = await self.stores.list_meta(subh)
        if not entries:
            return []
        _, subject_mark = await self.stores.revocation_state("-", subh)
        out = []
        for sid, raw in entries:
            meta = self._open_meta(sid, raw)
            if meta is None:
                meta = {"session_id": sid}
            elif subject_mark is not None and meta["created_at"] < subject_mark:
                continue
            revoked, _ = await self.stores.revocation_state(sid, subh)
            if revoked:
                continue
            out.append({k: meta.get(k) for k in ("session_id", "created_at", "last_seen", "expires_at", "ip",
                                                  "user_agent")})  # fmt: skip
        return out
