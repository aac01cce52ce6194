"""The local validation cache and the revocation subscription that keeps it honest.

An entry lives ``cache.ttl`` seconds at most (never past the token's expiry). Revocations arrive on
the ``ost:revocations`` channel and drop entries at once. While the subscription is not known to
be up (not yet subscribed, an error, or no pong within the health window) the cache is neither
read nor filled: a revocation we might have missed must not be answered from memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

from .obs import AuditLog, Metrics
from .store import CHANNEL, Stores, close_client

PING_INTERVAL = 0.5
# Subscribing includes opening the connection (TCP, TLS, HELLO/AUTH), which takes seconds on a slow
# (emulated) host; the cache stays off meanwhile, so a long bound costs nothing but cache hits.
SUBSCRIBE_TIMEOUT = 10.0
HEALTH_WINDOW = 1.5  # no message or pong for this long: the subscription counts as down


@dataclass(frozen=True)
class Validated:
    """What a successful validation established; cached and turned into response headers."""

    sub: str
    sid: str
    subh: str
    expires_at: int
    issued_at: float  # iat (JWT) or created_at (opaque): compared with subject revoke-all markers
    bind_cidr: str | None
    ua_hash: str | None
    ip_tag: str | None  # keyed hash of the address the session is pinned to (never the address)
    mode: str


@dataclass
class _Entry:
    value: Validated
    until: float


class ValidationCache:
    def __init__(self, ttl: float, max_entries: int, metrics: Metrics) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.metrics = metrics
        self.enabled = False
        self.generation = 0
        self._entries: dict[str, _Entry] = {}
        self._by_sid: dict[str, set[str]] = {}
        self._by_subject: dict[str, set[str]] = {}

    def get(self, token: str) -> Validated | None:
        if not self.enabled or self.ttl <= 0:
            self.metrics.cache.labels("bypass").inc()
            return None
        entry = self._entries.get(token)
        if entry is None or entry.until < time.monotonic():
            if entry is not None:
                self._drop(token)
            self.metrics.cache.labels("miss").inc()
            return None
        self.metrics.cache.labels("hit").inc()
        return entry.value

    def put(self, token: str, value: Validated, generation: int) -> None:
        # generation: the subscription generation seen when the stores were asked; if the
        # subscription dropped or a revocation arrived meanwhile, the answer may be stale.
        if not self.enabled or self.ttl <= 0 or generation != self.generation:
            return
        if len(self._entries) >= self.max_entries:
            self._drop(next(iter(self._entries)))
        until = min(time.monotonic() + self.ttl, time.monotonic() + max(0.0, value.expires_at - time.time()))
        self._entries[token] = _Entry(value, until)
        self._by_sid.setdefault(value.sid, set()).add(token)
        self._by_subject.setdefault(value.subh, set()).add(token)
        self.metrics.cache_entries.set(len(self._entries))

    def _drop(self, token: str) -> None:
        entry = self._entries.pop(token, None)
        if entry is None:
            return
        for index, key in ((self._by_sid, entry.value.sid), (self._by_subject, entry.value.subh)):
            tokens = index.get(key)
            if tokens is not None:
                tokens.discard(token)
                if not tokens:
                    del index[key]

    def drop_session(self, sid: str) -> None:
        self.generation += 1
        for token in list(self._by_sid.get(sid, ())):
            self._drop(token)
        self.metrics.cache_entries.set(len(self._entries))

    def drop_subject(self, subh: str) -> None:
        self.generation += 1
        for token in list(self._by_subject.get(subh, ())):
            self._drop(token)
        self.metrics.cache_entries.set(len(self._entries))

    def set_enabled(self, enabled: bool) -> None:
        if enabled != self.enabled:
            self.generation += 1
            self._entries.clear()
            self._by_sid.clear()
            self._by_subject.clear()
            self.metrics.cache_entries.set(0)
        self.enabled = enabled
        self.metrics.cache_enabled.set(1 if enabled else 0)


class RevocationListener:
    """Keeps a subscription to the revocation channel and the cache's enabled flag in step with it."""

    def __init__(self, stores: Stores, cache: ValidationCache, log: AuditLog) -> None:
        self.stores = stores
        self.cache = cache
        self.log = log
        self._task: asyncio.Task[None] | None = None
        self._last_alive = 0.0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="revocation-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _handle(self, message: dict[str, Any]) -> None:
        self._last_alive = time.monotonic()
        kind = message.get("type")
        if isinstance(kind, bytes):
            kind = kind.decode()
        if kind != "message":
            return
        data = message.get("data", b"")
        text = data.decode() if isinstance(data, bytes) else str(data)
        parts = text.split(" ")
        if parts[0] == "s" and len(parts) == 2:
            self.cache.drop_session(parts[1])
        elif parts[0] == "u" and len(parts) >= 2:
            self.cache.drop_subject(parts[1])

    async def _run(self) -> None:
        backoff = 0.2
        while True:
            client = self.stores.new_subscriber(SUBSCRIBE_TIMEOUT)
            pubsub = client.pubsub()
            try:
                async with asyncio.timeout(SUBSCRIBE_TIMEOUT):
                    await pubsub.subscribe(CHANNEL)
                self._last_alive = time.monotonic()
                self.cache.set_enabled(True)
                self.log.info("revocation_subscription_up", channel=CHANNEL)
                backoff = 0.2
                next_ping = time.monotonic()
                while True:
                    now = time.monotonic()
                    if now >= next_ping:
                        await pubsub.ping()
                        next_ping = now + PING_INTERVAL
                    message = await pubsub.get_message(timeout=0.1)
                    while message is not None:
                        self._handle(message)
                        message = await pubsub.get_message(timeout=0.0)
                    if time.monotonic() - self._last_alive > HEALTH_WINDOW:
                        raise TimeoutError("no pong from the revocation store")
            except asyncio.CancelledError:
                self.cache.set_enabled(False)
                await _discard(pubsub, client)
                raise
            except Exception as exc:  # any failure: the cache must not be trusted
                if self.cache.enabled:
                    self.log.warning("revocation_subscription_down", error=f"{type(exc).__name__}: {exc}")
                self.cache.set_enabled(False)
                await _discard(pubsub, client)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)


async def _discard(pubsub: Any, client: Any) -> None:
    """Close one attempt's subscription and its client, whatever state they are in (bounded)."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(pubsub.aclose(), 0.5)
    await close_client(client, 0.5)
