"""Observability: Prometheus metrics and JSON logs in which ids and tokens appear only as salted hashes."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

disable_created_metrics()  # type: ignore[no-untyped-call]  # the _created series double the output and nobody graphs them

_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01,
                    0.025, 0.05, 0.1, 0.25, 0.5, 1.0)  # fmt: skip


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.validations = Counter("ostiary_validations", "Validations by result and fault code",
                                   ["result", "fault"], registry=r)  # fmt: skip
        self.validation_seconds = Histogram("ostiary_validation_seconds", "Time to answer GET /v1/validate",
                                            ["mode"], buckets=_LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.store_seconds = Histogram("ostiary_store_seconds", "Store round trips by store and operation",
                                       ["store", "op"], buckets=_LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.store_errors = Counter("ostiary_store_errors", "Store operations that failed", ["store", "fault"],
                                    registry=r)  # fmt: skip
        self.cache = Counter("ostiary_cache_lookups", "Validation cache lookups by outcome", ["outcome"],
                             registry=r)  # fmt: skip
        self.cache_enabled = Gauge("ostiary_cache_enabled", "1 while the revocation subscription is up",
                                   registry=r, multiprocess_mode="livemin")  # fmt: skip
        self.cache_entries = Gauge("ostiary_cache_entries", "Entries in the validation cache", registry=r,
                                   multiprocess_mode="livesum")  # fmt: skip
        self.hijack = Counter("ostiary_hijack_suspicions", "Requests whose User-Agent or address changed",
                              ["reason"], registry=r)  # fmt: skip
        self.issued = Counter("ostiary_sessions_issued", "Sessions issued", ["mode"], registry=r)
        self.revocations = Counter("ostiary_revocations", "Revocations by kind", ["kind"], registry=r)
        self.keys_loaded = Gauge("ostiary_keys_loaded", "Keys loaded for verification", registry=r,
                                 multiprocess_mode="livemin")  # fmt: skip
        self.reloads = Counter("ostiary_reloads", "SIGHUP reloads by result", ["result"], registry=r)

    def exposition(self) -> bytes:
        """The text exposition: this process's registry, or every worker's when there are several."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)


def load_salt(path: str) -> tuple[bytes, bool]:
    """The HMAC salt for ids in logs; a random one (not shared between daemons) if the file is absent."""
    if path:
        try:
            data = Path(path).read_bytes().strip()
            if len(data) >= 16:
                return data, True
        except OSError:
            pass
    return secrets.token_bytes(32), False


class AuditLog:
    """One JSON object per line on stderr; ``hid`` turns a session id or token into a salted hash."""

    def __init__(self, level: str, salt: bytes) -> None:
        self._salt = salt
        self._level = getattr(logging, level.upper())
        self._pid = os.getpid()

    def hid(self, value: str) -> str:
        return hmac.new(self._salt, value.encode(), hashlib.sha256).hexdigest()[:16]

    def emit(self, level: int, event: str, **fields: Any) -> None:
        if level < self._level:
            return
        record = {"ts": round(time.time(), 3), "level": logging.getLevelName(level).lower(), "event": event,
                  "pid": self._pid, **fields}  # fmt: skip
        sys.stderr.write(json.dumps(record, separators=(",", ":"), default=str) + "\n")

    def info(self, event: str, **fields: Any) -> None:
        self.emit(logging.INFO, event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.emit(logging.WARNING, event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self.emit(logging.ERROR, event, **fields)

    def audit(self, action: str, **fields: Any) -> None:
        self.emit(logging.INFO, "audit", action=action, **fields)
