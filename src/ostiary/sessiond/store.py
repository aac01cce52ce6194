"""The two Redis stores, behind bounded timeouts that turn every failure into a fail-closed fault.

Session store (may evict): opaque session records ``ost:s:*``, session metadata ``ost:m:<sid>``,
per-subject indexes ``ost:u:<subject hash>``. Revocation store (``noeviction``, AOF always):
revoked sessions ``ost:r:s:<sid>``, subject revoke-all markers ``ost:r:u:<subject hash>`` and the
``ost:revocations`` channel every daemon listens on. Every key is written with a TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..config import StoreSettings
from ..faults import TokenFault
from ..keys import b64url
from .obs import Metrics

T = TypeVar("T")
CHANNEL = "ost:revocations"


def subject_hash(sub: str) -> str:
    return b64url(hashlib.sha256(b"ostiary/subject\x00" + sub.encode()).digest())[:32]


def meta_key(sid: str) -> str:
    return f"ost:m:{sid}"


def subject_index_key(subh: str) -> str:
    return f"ost:u:{subh}"


def revoked_session_key(sid: str) -> str:
    return f"ost:r:s:{sid}"


def revoked_subject_key(subh: str) -> str:
    return f"ost:r:u:{subh}"


class StoreFault(TokenFault):
    pass


def tls_context(settings: StoreSettings) -> ssl.SSLContext:
    """The client TLS context for ``rediss://`` stores, built once and shared by every connection.

    It trusts ``store.tls_ca_file`` alone (the system's CA store only when no file is set), checks the
    server's name, speaks TLS 1.3 only and presents the client certificate. redis-py would build a
    context per connection from ``ssl.create_default_context()``, which also trusts every CA of the
    system store and loads that store again for each connection (about 30 ms on a 2-core host,
    seconds in an emulated VM).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    if settings.tls_ca_file:
        context.load_verify_locations(cafile=settings.tls_ca_file)
    else:
        context.load_default_certs()
    if settings.tls_cert_file:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file or None)
    return context


class _FixedContext:
    """Stands in for redis-py's per-connection ``RedisSSLContext``: always the shared context."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context

    def get(self) -> ssl.SSLContext:
        return self.context


class SharedContextSSLConnection(aioredis.SSLConnection):
    """redis-py's TLS connection, handshaking with one pre-built context instead of its own."""

    def __init__(self, *, shared_ssl_context: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ssl_context = _FixedContext(shared_ssl_context)  # type: ignore[assignment]


def make_client(url: str, settings: StoreSettings, *, pool_size: int | None = None,
                connect_timeout: float | None = None, client_name: str | None = None,
                ssl_context: ssl.SSLContext | None = None) -> aioredis.Redis:
    """A RESP3 client with a blocking pool; credentials from the settings, TLS from ``ssl_context``
    (built from the settings when not given)."""
    kwargs: dict[str, Any] = {
        # No per-read timer: every call already runs inside asyncio.timeout(store.timeout) (Stores.call),
        # and a second timer per read and write costs CPU on the hot path.
        "socket_timeout": None,
        "socket_connect_timeout": connect_timeout or settings.timeout,
        "max_connections": pool_size or settings.pool_size,
        "timeout": settings.timeout,  # wait for a free pooled connection at most this long
        "protocol": 3,
        "decode_responses": False,
        # A pooled connection opened before a store restart fails on first use: reconnect and try
        # once more, still inside the same asyncio.timeout, instead of answering 503 for it.
        "retry": Retry(NoBackoff(), 1),
        "retry_on_error": [rexc.ConnectionError],
    }
    if client_name:
        kwargs["client_name"] = client_name  # shown by CLIENT LIST: which daemon process, which pool
    if settings.username and not urlsplit(url).username:
        kwargs["username"] = settings.username
    if settings.password_file:
        kwargs["password"] = Path(settings.password_file).read_text().strip()
    kwargs.update(parse_url(url))  # as redis-py's from_url: what the URL says wins
    if url.startswith("rediss://"):
        kwargs["connection_class"] = SharedContextSSLConnection
        kwargs["shared_ssl_context"] = ssl_context or tls_context(settings)
    # The client owns its pool: closing the client closes the pool's connections.
    return aioredis.Redis.from_pool(aioredis.BlockingConnectionPool(**kwargs))


async def close_client(client: aioredis.Redis, bound: float) -> None:
    """Close ``client`` and its connections within ``bound`` seconds, whatever state they are in."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.aclose(), bound)


class Stores:
    """The request pools of both stores; the revocation channel's subscriber gets a client of its own.

    A subscription holds its connection for as long as it lives. Taken from the request pool, it
    would leave the first request to open a fresh one (TCP, TLS, HELLO/AUTH) inside ``store.timeout``.
    """

    def __init__(self, settings: StoreSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.client_name = f"ostiary-sessiond-{os.getpid()}"
        tls = any(u.startswith("rediss://") for u in (settings.sessions_url, settings.revocations_url))
        self.ssl_context = tls_context(settings) if tls else None
        self.sessions = make_client(settings.sessions_url, settings, client_name=self.client_name,
                                    ssl_context=self.ssl_context)  # fmt: skip
        self.revocations = make_client(settings.revocations_url, settings, client_name=self.client_name,
                                       ssl_context=self.ssl_context)  # fmt: skip

    def new_subscriber(self, connect_timeout: float) -> aioredis.Redis:
        """A one-connection client for one subscription attempt; its owner closes its pool."""
        return make_client(self.settings.revocations_url, self.settings, pool_size=1, connect_timeout=connect_timeout,
                           client_name=f"{self.client_name}-sub", ssl_context=self.ssl_context)  # fmt: skip

    async def close(self) -> None:
        """Close both pools' connections (bounded: a hung store must not hold up a shutdown)."""
        for client in (self.sessions, self.revocations):
            await close_client(client, 2.0)

    async def warm(self, count: int, budget: float) -> None:
        """Open ``count`` connections per store now, so that requests find them set up.

        Concurrent PINGs each take their own connection from the pool; every one goes back to the
        pool afterwards and stays open (the stores run ``timeout 0``).
        """
        if count <= 0:
            return
        for store, client in (("sessions", self.sessions), ("revocations", self.revocations)):

            async def pings(client: aioredis.Redis = client) -> None:
                await asyncio.gather(*(client.ping() for _ in range(count)))

            await self.call(store, "warm", pings, budget)

    async def call(self, store: str, op: str, fn: Callable[[], Awaitable[T]], budget: float | None = None) -> T:
        """Run one store operation within ``store.timeout`` (or ``budget``); every failure is a 503 fault."""
        started = time.perf_counter()
        limit = self.settings.timeout if budget is None else budget
        try:
            async with asyncio.timeout(limit):
                result = await fn()
        except (TimeoutError, rexc.TimeoutError) as exc:
            self.metrics.store_errors.labels(store, "SESSION_STORE_LATENCY").inc()
            raise StoreFault("SESSION_STORE_LATENCY", f"{store} store: no answer within {limit}s") from exc
        except (rexc.ConnectionError, OSError, rexc.ResponseError, rexc.RedisError) as exc:
            self.metrics.store_errors.labels(store, "REDIS_CONN_REFUSED").inc()
            raise StoreFault("REDIS_CONN_REFUSED", f"{store} store: {type(exc).__name__}: {exc}") from exc
        self.metrics.store_seconds.labels(store, op).observe(time.perf_counter() - started)
        return result

    # --- session store -------------------------------------------------------------------------
    async def put_opaque(self, key: str, blob: bytes, ttl: int) -> None:
        await self.call("sessions", "set", lambda: self.sessions.set(key, blob, ex=max(ttl, 1)))

    async def get_opaque(self, key: str) -> bytes | None:
        value = await self.call("sessions", "get", lambda: self.sessions.get(key))
        return value if isinstance(value, bytes) else None

    async def delete_opaque(self, key: str) -> None:
        await self.call("sessions", "del", lambda: self.sessions.delete(key))

    async def put_meta(self, sid: str, subh: str, meta: bytes, ttl: int, index_ttl: int) -> None:
        async def run() -> None:
            pipe = self.sessions.pipeline(transaction=False)
            pipe.set(meta_key(sid), meta, ex=max(ttl, 1))
            pipe.sadd(subject_index_key(subh), sid)
            pipe.expire(subject_index_key(subh), index_ttl)
            await pipe.execute()

        await self.call("sessions", "put_meta", run)

    async def list_meta(self, subh: str) -> list[tuple[str, bytes]]:
        async def run() -> list[tuple[str, bytes]]:
            members = await self.sessions.smembers(subject_index_key(subh))
            sids = sorted(s.decode() if isinstance(s, bytes) else str(s) for s in members)
            if not sids:
                return []
            values = await self.sessions.mget([meta_key(s) for s in sids])
            gone = [s for s, v in zip(sids, values, strict=True) if v is None]
            if gone:
                await self.sessions.srem(subject_index_key(subh), *gone)
            return [(s, v) for s, v in zip(sids, values, strict=True) if isinstance(v, bytes)]

        return await self.call("sessions", "list", run)

    async def forget_session(self, sid: str, subh: str | None) -> None:
        async def run() -> None:
            pipe = self.sessions.pipeline(transaction=False)
            pipe.delete(meta_key(sid))
            if subh:
                pipe.srem(subject_index_key(subh), sid)
            await pipe.execute()

        await self.call("sessions", "forget", run)

    async def first_seen(self, sid: str, fingerprint: str, ttl: int) -> str | None:
        """Record where a session was first seen (``SET NX GET``); return the earlier record, if any."""
        value = await self.call("sessions", "seen", lambda: self.sessions.set(f"ost:seen:{sid}", fingerprint,
                                                                               ex=max(ttl, 1), nx=True, get=True))
        return value.decode() if isinstance(value, bytes) else None

    async def get_meta(self, sid: str) -> bytes | None:
        value = await self.call("sessions", "get", lambda: self.sessions.get(meta_key(sid)))
        return value if isinstance(value, bytes) else None

    # --- revocation store ----------------------------------------------------------------------
    async def revocation_state(self, sid: str, subh: str) -> tuple[bool, float | None]:
        """(session revoked?, subject revoke-all time or None) in one round trip."""
        keys = [revoked_session_key(sid), revoked_subject_key(subh)]
        values = await self.call("revocations", "mget", lambda: self.revocations.mget(keys))
        sid_mark, sub_mark = values
        return sid_mark is not None, float(sub_mark) if sub_mark is not None else None

    async def revoke_session(self, sid: str, ttl: int) -> None:
        async def run() -> None:
            await self.revocations.set(revoked_session_key(sid), b"1", ex=max(ttl, 1))
            await self.revocations.publish(CHANNEL, f"s {sid}")

        await self.call("revocations", "revoke", run)

    async def revoke_subject(self, subh: str, marker: int, ttl: int) -> None:
        async def run() -> None:
            await self.revocations.set(revoked_subject_key(subh), str(marker), ex=max(ttl, 1))
            await self.revocations.publish(CHANNEL, f"u {subh} {marker}")

        await self.call("revocations", "revoke_subject", run)

    async def eviction_policy(self, store: str, budget: float | None = None) -> str:
        client = self.sessions if store == "sessions" else self.revocations
        info: dict[str, Any] = await self.call(store, "info", lambda: client.info("memory"), budget)
        policy = info.get("maxmemory_policy", "")
        return policy.decode() if isinstance(policy, bytes) else str(policy)

    async def server_time(self, store: str) -> float:
        client = self.sessions if store == "sessions" else self.revocations
        secs, micros = await self.call(store, "time", lambda: client.time())
        return float(secs) + float(micros) / 1e6

    async def ping(self, store: str, budget: float | None = None) -> None:
        client = self.sessions if store == "sessions" else self.revocations
        await self.call(store, "ping", lambda: client.ping(), budget)
